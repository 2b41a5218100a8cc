"""The pipeline table: every stage, in order, with its function, inputs, params and outputs. Defined once.

``dvc.yaml`` is generated from it (``python -m taskprune.pipeline > dvc.yaml``; a test keeps the two
equal). The stage dispatcher, the Prefect flow, timings, evaluation file names, lineage and the
report's stage order all read it. Paths are the names in ``taskprune.paths.ARTIFACTS``.

Lineage: every stage also depends on ``artifacts/code/<stage>.json``, the hash of the code the stage
runs (``taskprune.codeversion``), which the ``code_version`` stage rewrites on every run. A new
TaskPrune version re-runs exactly the stages whose code changed, and what depends on their outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from taskprune.paths import ARTIFACTS, Project, read_json

if TYPE_CHECKING:
    from taskprune.config import Params


@dataclass(frozen=True)
class Out:
    artifact: str                 # a name in ARTIFACTS
    cache: bool = True            # False: model-sized or re-creatable, never in the DVC cache
    metric: bool = False          # a DVC metrics file


@dataclass(frozen=True)
class Stage:
    name: str                                  # the dvc.yaml stage; `taskprune stage NAME`
    function: str                              # "module:function" called as function(params, project, **options)
    about: str                                 # one line (a comment in dvc.yaml)
    deps: tuple[str, ...] = ()                 # artifact names
    params: tuple[str, ...] = ()               # params.yaml keys or sections
    outs: tuple[Out, ...] = ()
    options: dict = field(default_factory=dict)
    method_code: str | None = None             # "module": depends on the method's code; "statistics": on what it asks for
    always_run: bool = False                   # bookkeeping that runs every time (not shown as work done)
    # when this holds, the stage must run through the orchestrator (flows/ owns how); run directly it stops
    orchestrated_when: Callable[[Params], bool] | None = None


def ray_search(params: Params) -> bool:
    """The search runs its fitness on Ray (through Prefect's Ray task runner)."""
    return bool(params.search.ray_address) and params.prune.allocation == "search"


STAGES: tuple[Stage, ...] = (
    Stage("code_version", "taskprune.stages.code_version:run",
          "hash of the code each stage runs: a new TaskPrune version re-runs what it changed",
          outs=(Out("code", cache=False),), always_run=True),
    Stage("fetch_model", "taskprune.stages.fetch_model:run",
          "model.name as a safetensors directory (a GGUF is converted once and cached)",
          params=("model.name", "model.revision"), outs=(Out("dense_model", cache=False),)),
    Stage("prepare_data", "taskprune.stages.prepare_data:run",
          "task split into calibration/test, general text into calibration/held-out; `taskprune run` forces "
          "this stage when the task file's content changed (with plain dvc: dvc repro -f -s prepare_data)",
          params=("task", "calibration.general", "calibration.seed", "evaluate.perplexity_docs"),
          outs=(Out("data"),)),
    Stage("calibrate", "taskprune.stages.calibrate:run",
          "the statistics the method asks for, on general and on task text",
          deps=("dense_model", "data"), params=("calibration.num_samples", "calibration.seq_len", "prune.method",
                                                "target.max_accuracy_drop", "target.methods"),
          outs=(Out("stats"), Out("moments", cache=False)), method_code="statistics"),
    Stage("frontier", "taskprune.stages.frontier:run",
          "target mode: each allowed method's largest compression within the accuracy budget on the validation "
          "split, and the best of them (the later stages run at that choice); otherwise a stage.json saying it "
          "is off",
          deps=("dense_model", "data", "stats", "moments"),
          params=("target", "prune", "search", "recover", "calibration", "evaluate.batch_size",
                  "evaluate.decode_tokens"),
          outs=(Out("frontier"),), method_code="module"),
    Stage("score", "taskprune.stages.score:run",
          "the method's masks, updated weights or factors of every decoder linear",
          deps=("dense_model", "data", "stats", "moments", "frontier"), params=("prune",),
          outs=(Out("masks"), Out("updates", cache=False)), method_code="module"),
    Stage("search", "taskprune.stages.search:run",
          "per-matrix levels by a genetic search (prune.allocation: search, or a method that always allocates); "
          "otherwise a stage.json saying it is off",
          deps=("dense_model", "data", "stats", "masks", "updates", "frontier"),
          params=("prune", "search", "recover.max_len"),
          outs=(Out("search"),), method_code="module", orchestrated_when=ray_search),
    Stage("prune", "taskprune.stages.prune:run", "the pruned model, saved in the method's export format",
          # data, evaluate.batch_size: sieve chooses its moment weighting by accuracy on the calibration rows
          deps=("dense_model", "data", "masks", "updates", "search"), params=("evaluate.batch_size",),
          outs=(Out("pruned_model", cache=False),), method_code="module"),
    Stage("evaluate_dense", "taskprune.stages.evaluate:run", "task accuracy, perplexity, size, speed: dense",
          deps=("dense_model", "data"), params=("evaluate",), outs=(Out("eval_dense"),), options={"which": "dense"}),
    Stage("evaluate", "taskprune.stages.evaluate:run", "task accuracy, perplexity, size, speed: pruned",
          deps=("pruned_model", "data", "masks", "search"), params=("evaluate",), outs=(Out("eval_pruned"),),
          options={"which": "pruned"}),
    Stage("recover", "taskprune.stages.recover:run",
          "recovery (LoRA or full, optionally distilled) on the calibration split (recover.enabled false: a stage.json saying so)",
          deps=("pruned_model", "dense_model", "data", "masks", "search", "frontier"),
          params=("recover", "calibration"),
          outs=(Out("recovered_model", cache=False),)),
    Stage("evaluate_recovered", "taskprune.stages.evaluate:run",
          "the recovered model's evaluation; metrics.json (dense, pruned, recovered), summary.json (the numbers "
          "`dvc metrics show` and `dvc exp show` compare) and the per-layer plot data",
          deps=("recovered_model", "data", "masks", "search", "eval_dense", "eval_pruned"), params=("evaluate",),
          outs=(Out("eval_recovered"), Out("metrics", cache=False), Out("summary", cache=False, metric=True),
                Out("layer_plot", cache=False)), options={"which": "recovered"}),
    Stage("register", "taskprune.stages.register:run", "MLflow run and model version (alias challenger)",
          deps=("metrics", "pruned_model", "recovered_model"), params=("tracking",),
          outs=(Out("registration", cache=False),)),
)

NAMES = tuple(stage.name for stage in STAGES)
WORK = tuple(stage.name for stage in STAGES if not stage.always_run)  # the stages that do the work


def after_frontier(name: str) -> bool:
    """Stages that run at target mode's chosen point (taskprune.target.resolved)."""
    return order(name) > order("frontier") and name in WORK


def stage(name: str) -> Stage:
    for entry in STAGES:
        if entry.name == name:
            return entry
    raise ValueError(f"unknown stage {name!r}; stages: {', '.join(NAMES)}")


def producer(artifact: str) -> Stage:
    """The stage that writes ``artifact``."""
    return next(s for s in STAGES if any(out.artifact == artifact for out in s.outs))


def stage_records(project: Project) -> dict[str, dict]:
    """Timing records (``.taskprune/timings``) of the stages that produced the current result, in order."""
    return {name: read_json(project.timings / f"{name}.json")
            for name in WORK if (project.timings / f"{name}.json").exists()}


def order(name: str) -> int:
    """Position of a stage in the pipeline (unknown names last)."""
    return NAMES.index(name) if name in NAMES else len(NAMES)


def dvc_stage(entry: Stage) -> dict:
    spec: dict = {"cmd": f"taskprune stage {entry.name}"}
    if entry.always_run:
        spec["always_changed"] = True
        spec["outs"] = [{f"{ARTIFACTS['code']}/{s.name}.json": {"cache": False}} for s in STAGES if not s.always_run]
        return spec
    spec["deps"] = [f"{ARTIFACTS['code']}/{entry.name}.json", *(ARTIFACTS[d] for d in entry.deps)]
    if entry.params:
        spec["params"] = list(entry.params)
    outs = [o for o in entry.outs if not o.metric]
    spec["outs"] = [ARTIFACTS[o.artifact] if o.cache else {ARTIFACTS[o.artifact]: {"cache": False}} for o in outs]
    metrics = [o for o in entry.outs if o.metric]
    if metrics:
        spec["metrics"] = [{ARTIFACTS[o.artifact]: {"cache": o.cache}} for o in metrics]
    return spec


# `dvc plots show`: target mode's frontier (every point tried; artifacts/frontier/points.json) and the pruned
# model per decoder layer (the method's own quantity: sparsity, rank kept, width kept; and its drift from dense)
PLOTS = ({f"{ARTIFACTS['frontier']}/points.json": {
    "x": "reduction", "y": "validation_accuracy", "template": "scatter",
    "title": "Accuracy budget: validation accuracy per point tried",
    "x_label": "share of decoder-linear parameters removed", "y_label": "validation accuracy"}},
    {ARTIFACTS["layer_plot"]: {
        "x": "layer", "y": "value", "template": "linear", "title": "The pruned model per decoder layer",
        "x_label": "decoder layer", "y_label": "mean over the layer's matrices (see quantity)"}},
    {"layer_drift": {
        "x": "layer", "y": {ARTIFACTS["layer_plot"]: ["drift_task", "drift_general"]}, "template": "linear",
        "title": "Drift from the dense model after each decoder layer (task prompts, general text)",
        "x_label": "decoder layer", "y_label": "||h - h_dense|| / ||h_dense||"}})


def dvc_yaml() -> str:
    """The text of dvc.yaml: one entry per stage, each running `taskprune stage NAME`."""
    import textwrap

    import yaml

    lines = ["# Generated from taskprune/pipeline.py (python -m taskprune.pipeline > dvc.yaml): edit the table there.",
             "# `taskprune run` runs these stages through Prefect; `dvc repro` runs them directly. Both skip",
             "# unchanged stages.", "stages:"]
    for entry in STAGES:
        body = yaml.safe_dump({entry.name: dvc_stage(entry)}, sort_keys=False, width=110).rstrip().splitlines()
        about = [f"    # {line}" for line in textwrap.wrap(entry.about, 100)]
        lines += [f"  {body[0]}", *about] + [f"  {line}" for line in body[1:]]
    lines += yaml.safe_dump({"plots": list(PLOTS)}, sort_keys=False, width=110).rstrip().splitlines()
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(dvc_yaml(), end="")
