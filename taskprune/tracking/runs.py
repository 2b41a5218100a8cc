"""MLflow: one parent run per pipeline result, the model registered with its lineage.

The tracking URI comes from ``tracking.uri``, else ``MLFLOW_TRACKING_URI``, else a
SQLite file in the project's state directory (artifacts beside it).
"""

from __future__ import annotations

import functools
import json
import os
import time
from pathlib import Path
from typing import Any

from taskprune.config import Params
from taskprune.secrets import redact
from taskprune.models.formats import format_of
from taskprune.models.loading import load_local
from taskprune.paths import LORA_DIR
from taskprune.pipeline import NAMES as STAGE_NAMES
from taskprune.tracking.plots import run_figures, run_name_of

CHALLENGER = "challenger"
MODEL_VERSIONS_TAG = "mlflow.modelVersions"  # on a logged model: the registry versions made from it


def tracking_uri(params: Params, state_dir: Path) -> str:
    return params.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{state_dir / 'mlflow.db'}"


def is_tracking_failure(exc: BaseException) -> bool:
    """An error of the tracking server, its artifact store or the network to them (not a bug of ours)."""
    from botocore.exceptions import BotoCoreError, ClientError
    from mlflow.exceptions import MlflowException
    from requests.exceptions import RequestException

    return isinstance(exc, (MlflowException, RequestException, BotoCoreError, ClientError, ConnectionError))


def registered_name(params: Params, task_label: str) -> str:
    """The registry name (the template and the task label hold safe characters only: it is quoted in
    MLflow filters; plain replacement, not str.format, so a template cannot reach attributes)."""
    return params.tracking.registered_model.replace("{task}", task_label).replace("{method}", params.prune.method)


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


EXPERIMENT_KIND, MODEL_KIND = "mlflow.experimentKind", "custom_model_development"


def ensure_experiment(mlflow, name: str, uri: str, state_dir: Path) -> str:
    """Experiment id; a new experiment on the default SQLite store keeps artifacts in the state dir. The experiment
    is marked as model development (``mlflow.experimentKind``), so MLflow 3's UI opens it in its "Model training"
    view (runs, metrics, models) instead of the GenAI view of traces, and does not ask."""
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        location = (state_dir / "mlartifacts" / name).resolve().as_uri() if uri.startswith("sqlite:") else None
        experiment_id = mlflow.create_experiment(name, artifact_location=location, tags={EXPERIMENT_KIND: MODEL_KIND})
    else:
        experiment_id = experiment.experiment_id
        if EXPERIMENT_KIND not in experiment.tags:
            mlflow.MlflowClient().set_experiment_tag(experiment_id, EXPERIMENT_KIND, MODEL_KIND)
    return experiment_id


def _keeps_tracking_environment(function):
    """``mlflow.set_tracking_uri`` also sets ``$MLFLOW_TRACKING_URI`` (for child processes). A process that registers
    for one project after another (a Prefect worker serving deployments, the test suite) would then carry one
    project's server into the next project whose ``tracking.uri`` is unset: the variable is put back as it was."""
    @functools.wraps(function)
    def keeping(*args, **kwargs):
        before = os.environ.get("MLFLOW_TRACKING_URI")
        try:
            return function(*args, **kwargs)
        finally:
            if before is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = before
    return keeping


@_keeps_tracking_environment
def register_result(*, params: Params, state_dir: Path, task_label: str, metrics: dict, per_matrix: dict,
                    stage_records: dict[str, dict], model_dir: Path, artifacts: list[Path],
                    lineage_tags: dict[str, str], exclusive: dict[str, dict[str, float]] | None = None,
                    recovered_dir: Path | None = None, history: list[dict] | None = None,
                    search: dict | None = None, report_html: str | None = None, result_key: str | None = None,
                    figures: dict | None = None, frontier: dict | None = None,
                    datasets: dict[str, Path] | None = None, provenance: tuple[str, str] = ("", "")) -> dict:
    """Log the run (params, metrics, plots, files, child run per stage) and register the model as a new
    version with alias ``challenger``. Returns ids for ``register.json``.

    Idempotent for one result: when versions tagged ``taskprune.result_key`` = ``result_key`` exist already
    (an earlier attempt registered them and then failed, or was killed, before writing register.json),
    they are returned instead of registering the same result twice.

    ``provenance`` (base model, licence) goes into each logged model's card and licence file.

    Target mode (``frontier``): every point tried is a child run too; when none was within the budget, the run is
    logged and nothing is registered (``version`` None), so no such model becomes a candidate for promotion."""
    import mlflow
    from mlflow import MlflowClient

    uri = tracking_uri(params, state_dir)
    mlflow.set_tracking_uri(uri)
    experiment_id = ensure_experiment(mlflow, params.tracking.experiment, uri, state_dir)
    name = registered_name(params, task_label)
    run_name = run_name_of(params, task_label)
    tags = {**lineage_tags, "task": task_label, "method": params.prune.label,
            **({RESULT_KEY: result_key} if result_key else {})}
    wants_recovered = recovered_dir is not None and "recovered" in metrics
    if result_key:
        earlier = _earlier_attempt(MlflowClient(), experiment_id, name, result_key, wants_recovered)
        if earlier is not None and earlier.get("missing") == "recovered":  # killed between the two versions
            with mlflow.start_run(run_id=earlier["run_id"]):
                earlier.update(_register_recovered(MlflowClient(), name, earlier["run_id"], earlier["version"], tags,
                                                   recovered_dir, metrics, history, task_label, provenance))
            MlflowClient().set_registered_model_alias(name, CHALLENGER, earlier["recovered_version"])
            earlier.pop("missing")
        if earlier is not None:
            return {**earlier, "experiment_id": experiment_id, "tracking_uri": redact(uri), "registered_model": name,
                    "reused": True}
    summary = result_summary(task_label, metrics)
    stages = {stage: record for stage, record in stage_records.items() if record.get("enabled") is not False}
    starts = [_millis(r["ended"] - r.get("seconds", 0)) for r in stages.values() if r.get("ended")]
    from mlflow.tracking.context.registry import resolve_tags  # user, source: what start_run would add

    client = MlflowClient()
    parent = client.create_run(experiment_id, start_time=min(starts) if starts else None, run_name=run_name,
                               tags=resolve_tags({**tags, "mlflow.note.content": summary,
                                                  **({"mlflow.source.git.commit": lineage_tags["git_commit"]}
                                                     if lineage_tags.get("git_commit") else {})}))
    with mlflow.start_run(run_id=parent.info.run_id) as run:  # ends now: the parent spans the whole pipeline
        mlflow.log_params({k: redact(str(v)) for k, v in used_params(params).items()})
        _log_datasets(task_label, datasets or {})
        for side in ("dense", "pruned", "recovered"):
            if side not in metrics:
                continue
            mlflow.log_metrics({f"{side}.{k}": float(v) for k, v in metrics[side].items()
                                if isinstance(v, (int, float))})
        mlflow.log_metric("run_seconds", float(metrics["run_seconds"]))
        if figures is None:
            figures = run_figures(run_name, per_matrix, search, exclusive, history, frontier)
        for path, figure in figures.items():
            mlflow.log_figure(figure, path)
        mlflow.log_dict(per_matrix["values"], f"{per_matrix['name']}.json")
        if metrics.get("removed"):  # a method that removes units: what it removed, in words
            mlflow.set_tags({f"removed.{what}": how for what, how in metrics["removed"].items()})
            mlflow.log_dict(metrics["removed"], "removed.json")
        if search and search.get("history"):
            _log_search(MlflowClient(), run.info.run_id, search)
        if report_html:
            mlflow.log_text(report_html, "report.html")
        for path in artifacts:
            if path.exists():
                mlflow.log_artifact(str(path))
        _log_stage_runs(client, experiment_id, run.info.run_id, stages, metrics)
        if frontier:
            _log_frontier_runs(client, experiment_id, run.info.run_id, frontier, stages.get("frontier", {}))
            if not frontier["choice"]["within_budget"]:
                why = f"no compression within the accuracy budget ({frontier['budget']['max_accuracy_drop']:.0%} drop)"
                mlflow.set_tags({"taskprune.candidate": "false", "taskprune.not_registered": why})
                return {"run_id": run.info.run_id, "experiment_id": experiment_id, "tracking_uri": redact(uri),
                        "registered_model": name, "version": None, "not_registered": why}
        if not _registered(client, name):
            client.create_registered_model(name, tags={"task": task_label},
                                           description=f"Pruned models for task {task_label} (TaskPrune)")
        version, model_uri = _new_version(client, name, run.info.run_id, model_dir, "model", tags, metrics["pruned"],
                                          metrics["dense"], summary, provenance)
        result = {"version": version, "model_uri": model_uri}
        if wants_recovered:
            result.update(_register_recovered(client, name, run.info.run_id, version, tags, recovered_dir, metrics,
                                              history, task_label, provenance))
        newest = result.get("recovered_version", version)
        client.set_registered_model_alias(name, CHALLENGER, newest)
    return {"run_id": run.info.run_id, "experiment_id": experiment_id, "tracking_uri": redact(uri),
            "registered_model": name, **result}


def _register_recovered(client, name: str, run_id: str, version: str, tags: dict, recovered_dir: Path, metrics: dict,
                        history: list[dict] | None, task_label: str, provenance: tuple[str, str]) -> dict:
    """The recovered model as the version after the pruned one (``version``), logged to the active run."""
    if history:
        _log_loss_curve(client, run_id, history)
    recovered_tags = {**tags, "recovered": "true", "parent_version": version,
                      "recover.merge": str(metrics["recovery"]["merge"])}
    recovered_version, recovered_uri = _new_version(
        client, name, run_id, recovered_dir, "model_recovered", recovered_tags, metrics["recovered"], metrics["dense"],
        result_summary(task_label, metrics, "recovered"), provenance)
    return {"recovered_version": recovered_version, "recovered_model_uri": recovered_uri}


def _new_version(client, name: str, run_id: str, model_dir: Path, artifact: str, tags: dict, block: dict,
                 dense: dict, description: str, provenance: tuple[str, str] = ("", "")) -> tuple[str, str]:
    """Log the model of ``model_dir`` to the active run and register it; returns (version, model uri)."""
    import mlflow

    if (model_dir / LORA_DIR).is_dir() or format_of(model_dir).mlflow_flavour == "files":
        # a separate LoRA adapter, or a format only taskprune.load rebuilds (factorized): logged as files
        mlflow.log_artifacts(str(model_dir), artifact)
        model_uri, model_id = f"runs:/{run_id}/{artifact}", None
    else:  # components, not the checkpoint path: MLflow 3.17's path route breaks on transformers 5
        model, tokenizer, _arch = load_local(model_dir)
        card = _model_card(provenance, name, description)
        if provenance[0]:  # MLflow names the base model's repository in the licence file it writes
            for named in (model, model.config, tokenizer):
                setattr(named, "_name_or_path" if named is model.config else "name_or_path", provenance[0])
        info = mlflow.transformers.log_model(
            transformers_model={"model": model, "tokenizer": tokenizer}, name=artifact, task="text-generation",
            pip_requirements=["transformers", "torch", "safetensors"], model_card=card)
        # a REST server refuses a models:/ source without the logged model's id (a SQLite store does not ask)
        model_uri, model_id = info.model_uri, info.model_id
    # one tag per fact, rounded for reading (full precision is in the run's metrics): this version's own results
    # (``eval.*``, read by the promotion rule; the ``recovered`` tag says which model it is) and dense's
    results = {**{f"eval.{k}": _shown(k, block[k]) for k in TAGGED}, **{f"dense.{k}": _shown(k, dense[k]) for k in TAGGED}}
    version = client.create_model_version(name=name, source=model_uri, run_id=run_id, tags={**tags, **results},
                                          model_id=model_id, description=description)
    _link_logged_model(client, name, str(version.version), model_id)
    return str(version.version), model_uri


def _model_card(provenance: tuple[str, str], name: str, description: str):
    """The logged model's card (README.md): the base model and its licence in the front matter the hub reads,
    from which MLflow also writes LICENSE.txt; None when the base model is not known."""
    base, licence = provenance
    if not base:
        return None
    from huggingface_hub import ModelCard

    front = [f"base_model: {base}", *([f"license: {licence}"] if licence else []), "tags: [taskprune, pruned]"]
    return ModelCard("---\n" + "\n".join(front) + f"\n---\n\n# {name}\n\n{description}\n\n"
                     f"Made from [{base}](https://huggingface.co/{base}) by TaskPrune"
                     + (f"; the base model's licence ({licence}) applies." if licence else ".") + "\n")


def _model_id_of(version) -> str | None:
    """The logged model a version was made from (a search may leave ``model_id`` empty: its ``models:/<id>`` source)."""
    if getattr(version, "model_id", None):
        return version.model_id
    source = version.source or ""
    return source.split("/", 1)[1] if source.startswith("models:/m-") else None


def _link_logged_model(client, name: str, version: str, model_id: str | None) -> None:
    """The logged model's page links the version (what mlflow.register_model records); a no-op when it does."""
    if not model_id:
        return
    links = json.loads(client.get_logged_model(model_id).tags.get(MODEL_VERSIONS_TAG, "[]"))
    link = {"name": name, "version": version}
    if link not in [{"name": k["name"], "version": str(k["version"])} for k in links]:
        client.set_logged_model_tags(model_id, {MODEL_VERSIONS_TAG: json.dumps([*links, link])})


TAGGED = ("task_accuracy", "perplexity", "bytes_on_disk", "nonzero_params")


def _shown(key: str, value) -> str:
    """A metric as a model-version tag: accuracy to 4 places, perplexity to 2, counts whole."""
    if key == "task_accuracy":
        return f"{value:.4f}"
    if key == "perplexity":
        return f"{value:.2f}"
    return str(int(value))


def _millis(seconds: float) -> int:
    return int(seconds * 1000)


def _log_stage_runs(client, experiment_id: str, parent_id: str, stages: dict[str, dict], metrics: dict) -> None:
    """One child run per stage that did something, with its real start and end time, its wall time, its
    settings and, for the evaluation stages, the results of the model it evaluated."""
    from mlflow.entities import Metric, Param

    from taskprune.pipeline import stage as pipeline_stage

    for name, record in stages.items():
        ended = record.get("ended")
        child = client.create_run(experiment_id, run_name=name, tags={"mlflow.parentRunId": parent_id},
                                  start_time=_millis(ended - record.get("seconds", 0)) if ended else None)
        now = _millis(ended) if ended else _millis(time.time())
        side = pipeline_stage(name).options.get("which") if name in STAGE_NAMES else None  # evaluate stages
        values = {"seconds": float(record.get("seconds", 0.0))}
        if side and side in metrics:
            values.update({k: float(v) for k, v in metrics[side].items() if isinstance(v, (int, float))})
        client.log_batch(child.info.run_id, metrics=[Metric(k, v, now, 0) for k, v in values.items()],
                         params=[Param(k, redact(str(v))) for k, v in record.items()
                                 if k not in ("seconds", "stage", "ended", "finished")])
        client.set_terminated(child.info.run_id, end_time=now)


def _log_datasets(task_label: str, datasets: dict[str, Path]) -> None:
    """The task's splits and the general text as the run's dataset inputs (MLflow's Datasets column), each with
    its use as the context (calibration, validation, test, general)."""
    import warnings

    import mlflow
    import pandas as pd

    for context, path in datasets.items():
        if path.is_file():
            frame = pd.read_json(path, lines=True)
            name = f"{task_label}-{context}" if context != "general" else "general-text"
            with warnings.catch_warnings():  # schema hints about integer columns, meant for model signatures
                warnings.simplefilter("ignore", UserWarning)
                dataset = mlflow.data.from_pandas(frame, source=path.resolve().as_uri(), name=name)
                mlflow.log_input(dataset, context=context)


def _log_frontier_runs(client, experiment_id: str, parent_id: str, frontier: dict, record: dict) -> None:
    """Target mode: one child run per point tried (method, level; validation accuracy, size, speed), spread over
    the frontier stage's time in the order measured."""
    from mlflow.entities import Metric, Param

    ended = record.get("ended") or time.time()
    start = ended - sum(p["seconds"] for p in frontier["points"])
    chosen = frontier["choice"]
    for point in frontier["points"]:
        is_chosen = (point["method"], point["level"]) == (chosen["method"], chosen["level"])
        verdict = "within the budget" if point["within"] else "outside: " + "; ".join(point["reasons"])
        child = client.create_run(experiment_id, run_name=f"{point['method']}-{point['level']:g}",
                                  start_time=_millis(start),
                                  tags={"mlflow.parentRunId": parent_id, "taskprune.frontier": "true",
                                        "taskprune.chosen": str(is_chosen).lower(), "mlflow.note.content": verdict})
        start += point["seconds"]
        values = {k: float(point[k]) for k in ("validation_accuracy", "reduction", "bytes_fraction", "bytes_on_disk",
                                               "seconds") if point.get(k) is not None}
        if point.get("speedup") is not None:
            values["decode_speedup"] = float(point["speedup"])
        values["within_budget"] = float(point["within"])
        client.log_batch(child.info.run_id, metrics=[Metric(k, v, _millis(start), 0) for k, v in values.items()],
                         params=[Param("method", point["method"]), Param("level", str(point["level"])),
                                 Param("recovered", str(point["recovered"])),
                                 Param("allocation", point.get("allocation", "uniform"))])
        client.set_terminated(child.info.run_id, end_time=_millis(start))


def result_summary(task_label: str, metrics: dict, side: str = "pruned") -> str:
    """One line for a run's and a model version's description: accuracy before and after, size."""
    dense, model = metrics["dense"], metrics[side]
    smaller = 1 - model["nonzero_params"] / dense["nonzero_params"] if dense.get("nonzero_params") else 0.0
    line = (f"{task_label}: task accuracy {dense['task_accuracy']:.2f} -> {model['task_accuracy']:.2f}, "
            f"{smaller:.0%} fewer non-zero parameters")
    if model.get("bytes_on_disk") and dense.get("bytes_on_disk"):
        line += f", {model['bytes_on_disk'] / 1e6:.0f} MB on disk (dense {dense['bytes_on_disk'] / 1e6:.0f} MB)"
    return line + f" ({metrics['method']})"


def used_params(params: Params) -> dict[str, Any]:
    """The parameters of this run, flattened, without the sections its method does not read (other methods'
    prune.* sections; search when nothing is searched; recovery's settings when it is off) and empty values."""
    method = params.prune.method_object
    plan = method.plan(params.prune)
    tree = params.model_dump()
    sections = {"task_aware", "owl", "sparsegpt", "sieve", "structured"}
    tree["prune"] = {k: v for k, v in tree["prune"].items() if k not in sections or k in plan.sections}
    if params.prune.allocation != "search" and not plan.always_allocates:
        tree.pop("search")
    if not params.recover.enabled:
        tree["recover"] = {"enabled": False}
    return {k: v for k, v in flatten(tree).items() if v is not None}


def _log_loss_curve(client, run_id: str, history: list[dict]) -> None:
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric("recover.loss", float(h["loss"]), now, int(h["step"])) for h in history]
    for start in range(0, len(metrics), 500):
        client.log_batch(run_id, metrics=metrics[start:start + 500])


def _log_search(client, run_id: str, search: dict) -> None:
    """Fitness per generation as metrics, and the Pareto front as a table (the plots come with run_figures)."""
    import time

    import mlflow
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(f"search.{k}_fitness", float(h[k]), now, int(h["generation"]))
                                      for h in search["history"] for k in ("best", "mean")])
    if search.get("front"):
        front = search["front"]
        mlflow.log_table({key: [p.get(key) for p in front] for key in front[0]}, "search/pareto_front.json")


RESULT_KEY = "taskprune.result_key"


def _earlier_attempt(client, experiment_id: str, name: str, key: str, recovered: bool) -> dict | None:
    """What an earlier attempt at registering this result (``taskprune.result_key`` = ``key``) left behind, so
    that registering it again reuses it, wherever that attempt was killed:

    - every version it needed exists: those (``challenger`` and the logged models' links set again);
    - the pruned version exists but the recovered one does not: that much, with ``missing`` = "recovered";
    - a finished run that registered nothing on purpose (no point within the accuracy budget): that run;
    - otherwise None; runs it left unfinished, with no version, are marked FAILED (the new attempt logs its own).
    """
    from mlflow.entities import RunStatus

    versions = client.search_model_versions(f"name='{name}' and tags.`{RESULT_KEY}` = '{key}'") \
        if _registered(client, name) else []
    pruned = sorted((v for v in versions if v.tags.get("recovered") != "true"), key=lambda v: int(v.version))
    if pruned:
        first = pruned[0]
        again = [v for v in versions if v.tags.get("recovered") == "true" and v.tags.get("parent_version") == str(first.version)]
        for version in (first, *again[:1]):
            _link_logged_model(client, name, str(version.version), _model_id_of(version))
        result = {"run_id": first.run_id, "version": str(first.version), "model_uri": first.source}
        if recovered and not again:
            return {**result, "missing": "recovered"}
        if recovered:
            result.update(recovered_version=str(again[0].version), recovered_model_uri=again[0].source)
        client.set_registered_model_alias(name, CHALLENGER, result.get("recovered_version", result["version"]))
        if client.get_run(first.run_id).info.status != "FINISHED":  # killed after its last version: done now
            client.set_terminated(first.run_id, "FINISHED")
        return result
    runs = client.search_runs([experiment_id], f"tags.`{RESULT_KEY}` = '{key}'")
    for run in runs:
        if run.info.status == "FINISHED" and run.data.tags.get("taskprune.candidate") == "false":
            return {"run_id": run.info.run_id, "version": None,
                    "not_registered": run.data.tags.get("taskprune.not_registered", "nothing within the budget")}
    for run in runs:
        if run.info.status != "FINISHED":
            client.set_tag(run.info.run_id, "taskprune.attempt", "interrupted: registered again in a later run")
            client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FAILED))
    return None


def _registered(client, name: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
        return True
    except MlflowException:
        return False
