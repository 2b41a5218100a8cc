"""A finished run's result read back from its outputs: what the MLflow run, the HTML report and
`taskprune show` are made of."""

from __future__ import annotations

from taskprune.config import Params
from taskprune.paths import Project, read_json
from taskprune.target import resolved
from taskprune.tracking.plots import run_name_of


def load_result(params: Params, project: Project) -> dict:
    """metrics.json, how the method describes its result (a line, a value per matrix), exclusive channels,
    the search's record, the recovery's loss history, target mode's frontier and the per-layer drift from dense
    of the pruned (and recovered) model, when the run has them."""
    params = resolved(params, project)  # target mode: the point the stages ran at (its method and level)
    metrics = read_json(project.metrics)
    pruned = read_json(project.pruned_model / "stage.json")
    masks = read_json(project.mask_dir / "masks.json") if (project.mask_dir / "masks.json").is_file() else {}
    search = read_json(project.search / "allocation.json") if (project.search / "allocation.json").is_file() else {}
    recovered = "recovered" in metrics
    frontier = project.frontier / "frontier.json"
    drift = {which: read_json(project.eval_file(which)).get("drift") for which in ("pruned", "recovered")
             if which in metrics and project.eval_file(which).is_file()}
    return {"metrics": metrics, "per_matrix": pruned["per_matrix"], "compression": pruned["compression"],
            "exclusive": masks.get("exclusive"), "search": search if search.get("enabled") else None,
            "history": read_json(project.recovered_model / "train_log.json") if recovered else None,
            "run_name": run_name_of(params, metrics["task"]),
            "frontier": read_json(frontier) if "target" in metrics and frontier.is_file() else None,
            "drift": {which: values for which, values in drift.items() if values} or None}


def compression_of(project: Project) -> str:
    """The method's one-line description of the pruned model ("sparsity 0.500", "... parameters -40.0%")."""
    info = project.pruned_model / "stage.json"
    return read_json(info).get("compression", "") if info.is_file() else ""
