"""evaluate: task accuracy and perplexity (lm-eval), size and decode speed, for the dense or pruned model.

Evaluating ``pruned`` also writes ``metrics.json``, the DVC metrics file that
``dvc exp show`` reads, combining both models and the stage timings.
"""

from __future__ import annotations

from taskprune.config import Params
from taskprune.evaluation import evaluate_loaded, size_metrics
from taskprune.models.loading import load_local, pick_device
from taskprune.paths import Project, StageTimer, read_json, write_json
from taskprune.stages.prepare_data import read_texts

TIMED_STAGES = ("fetch_model", "prepare_data", "calibrate", "score", "prune", "evaluate_dense", "evaluate")


def stage_records(project: Project) -> dict[str, dict]:
    """Timing records of the stages that produced the current result (from their last real run)."""
    return {stage: read_json(project.timings / f"{stage}.json")
            for stage in TIMED_STAGES if (project.timings / f"{stage}.json").exists()}


def evaluate_model(params: Params, project: Project, which: str) -> dict:
    device = pick_device(params.model.device)
    model_dir = project.dense_model if which == "dense" else project.pruned_model
    model, tokenizer, adapter = load_local(model_dir, device)
    print(f"evaluating {which} model on the test split and held-out general text ...", flush=True)
    held_out = read_texts(project.data / "general_eval.jsonl")
    result = evaluate_loaded(model, tokenizer, project.data / "task_test.jsonl", held_out, params.evaluate, device)
    result.update(size_metrics(model, adapter, model_dir))
    return result


def run(params: Params, project: Project, which: str = "pruned") -> None:
    timer = StageTimer(project, "evaluate_dense" if which == "dense" else "evaluate")
    result = evaluate_model(params, project, which)
    data_info = read_json(project.data / "stage.json")
    if which == "dense":
        result["chance_accuracy"] = data_info["chance_accuracy"]
    write_json(project.eval_dir / f"{which}.json", result)
    timer.done(device=pick_device(params.model.device))
    print(f"{which}: task accuracy {result['task_accuracy']:.4f}, perplexity {result['perplexity']:.2f}, "
          f"{result['tokens_per_s']:.1f} tokens/s")
    if which == "pruned":
        write_json(project.metrics, build_metrics(params, project, data_info))


def _public(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "items"}


def build_metrics(params: Params, project: Project, data_info: dict) -> dict:
    dense = read_json(project.eval_dir / "dense.json")
    pruned = read_json(project.eval_dir / "pruned.json")
    masks = read_json(project.masks / "masks.json")
    pruned_public = _public(pruned)
    pruned_public["sparsity"] = masks["sparsity"]
    seconds = {stage: rec["seconds"] for stage, rec in stage_records(project).items()}
    return {
        "task": data_info["task"],
        "method": params.prune.method,
        "dense": _public(dense),
        "pruned": pruned_public,
        "stage_seconds": seconds,
        "run_seconds": round(sum(seconds.values()), 2),
    }
