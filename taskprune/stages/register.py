"""register: log the result to MLflow and register the pruned model (alias ``challenger``)."""

from __future__ import annotations

import subprocess

import yaml

from taskprune.config import Params
from taskprune.paths import Project, StageTimer, read_json, write_json
from taskprune.stages.evaluate import stage_records
from taskprune.report import html_report
from taskprune.errors import TaskPruneError
from taskprune.secrets import redact
from taskprune.tracking import is_tracking_failure, register_result, run_figures, run_name_of, tracking_uri

LINEAGE_OUTS = {"data": ("prepare_data", "artifacts/data"), "masks": ("score", "artifacts/masks"),
                "stats": ("calibrate", "artifacts/stats"), "search": ("search", "artifacts/search")}


def git_commit(project: Project) -> str:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=project.root, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "HEAD") or "unknown"
    return commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def lineage_hashes(project: Project) -> dict[str, str]:
    """The ``dvc.lock`` hashes of the data, statistics and masks this model came from."""
    if not project.dvc_lock.exists():
        return {}
    lock = yaml.safe_load(project.dvc_lock.read_text(encoding="utf-8")) or {}
    hashes = {}
    for label, (stage, path) in LINEAGE_OUTS.items():
        for out in lock.get("stages", {}).get(stage, {}).get("outs", []):
            if out.get("path") == path:
                hashes[f"dvc.{label}_md5"] = out.get("md5", "")
    return hashes


def result_key(project: Project) -> str:
    """Names one pipeline result (its metrics and params), so registering it twice is noticed."""
    import hashlib

    return hashlib.sha256(project.metrics.read_bytes() + b"\0" + project.params_file.read_bytes()).hexdigest()[:20]


def run_inputs(params: Params, project: Project) -> dict:
    """What the MLflow run and the HTML report are made of, read from the stage outputs."""
    metrics = read_json(project.metrics)
    masks = read_json(project.mask_dir / "masks.json")
    search = read_json(project.search / "allocation.json") if (project.search / "allocation.json").is_file() else {}
    recovered = "recovered" in metrics
    return {"metrics": metrics, "per_layer": masks["per_layer"], "exclusive": masks.get("exclusive"),
            "search": search if search.get("enabled") else None,
            "history": read_json(project.recovered_model / "train_log.json") if recovered else None,
            "run_name": run_name_of(params, metrics["task"])}


def report(params: Params, project: Project) -> str:
    """The run's HTML report (taskprune report; the register stage logs it to MLflow)."""
    inputs = run_inputs(params, project)
    registration = read_json(project.registration) if project.registration.is_file() else None
    return html_report(**inputs, registration=registration)


def run(params: Params, project: Project) -> None:
    timer = StageTimer(project, "register")
    inputs = run_inputs(params, project)
    metrics = inputs["metrics"]
    figures = run_figures(inputs["run_name"], inputs["per_layer"], inputs["search"], inputs["exclusive"],
                          inputs["history"])  # made once: logged to MLflow and inlined in the report
    tags = {"git_commit": git_commit(project), **lineage_hashes(project),
            "sparsity": str(params.prune.sparsity), "pattern": params.prune.pattern, "stats": params.prune.stats,
            "allocation": params.prune.allocation}
    try:
        result = register_result(
            params=params, state_dir=project.state, task_label=metrics["task"], metrics=metrics,
            per_layer=inputs["per_layer"], stage_records=stage_records(project), model_dir=project.pruned_model,
            artifacts=[project.metrics, project.mask_dir / "masks.json", project.search / "allocation.json",
                       project.dvc_lock, project.params_file],
            lineage_tags=tags, exclusive=inputs["exclusive"],
            recovered_dir=project.recovered_model if "recovered" in metrics else None,
            history=inputs["history"], search=inputs["search"], figures=figures,
            report_html=html_report(**inputs, figures=figures), result_key=result_key(project))
    except Exception as exc:  # MLflow (or its artifact store) down or failing after its own retries
        if not is_tracking_failure(exc):
            raise
        uri = tracking_uri(params, project.state)
        raise TaskPruneError(
            f"MLflow at {redact(uri)} failed after retries ({type(exc).__name__}: {redact(str(exc))[:300]}). "
            "Every other output of this run is on disk: run `taskprune register` (or `taskprune run`) "
            "when the server is back; a result is never registered twice.") from None
    write_json(project.registration, result)
    timer.done(version=result["version"])
    how = "already registered (an earlier attempt): reusing" if result.get("reused") else "registered"
    print(f"{how} {result['registered_model']} version {result['version']}, run {result['run_id']} "
          f"at {result['tracking_uri']}")
    if "recovered_version" in result:
        print(f"registered the LoRA-recovered model as version {result['recovered_version']} "
              f"(parent version {result['version']})")
    print(f"alias challenger -> version {result.get('recovered_version', result['version'])}")
