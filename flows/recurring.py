"""The recurring run (what the deployments in prefect.yaml schedule): re-prune only when something changed.

Each deployment names its own project directory (created with `taskprune init` on the first run)
and its settings (model, task, method, budget: params.yaml keys). A run applies the settings,
asks DVC what is out of date (params, the model, stage code's inputs) and whether the task file
changed; if nothing did, it records that and stops. Otherwise it runs the pipeline, which
redoes only the stages that changed, evaluates, registers, and applies the promotion rule.
Every run appends one line to ``<project>/.taskprune/recurring.jsonl`` and leaves a markdown
artifact in the Prefect UI.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from flows.pipeline_flow import pipeline
from taskprune import env
from taskprune.paths import Project, run_lock
from taskprune.secrets import install_log_filter
from prefect_tasks.stages import pipeline_changes, validate_inputs


def as_overrides(settings: dict | None) -> list[str]:
    """{"prune.sparsity": 0.6, "task.name": "sentiment"} -> ["prune.sparsity=0.6", "task.name=sentiment"]"""
    return [f"{key}={value if isinstance(value, str) else json.dumps(value)}" for key, value in (settings or {}).items()]


@task(name="ensure-project")
def ensure_project(project_root: str) -> str:
    from taskprune.scaffold import init_project

    root = Path(project_root).resolve()
    if not (root / "dvc.yaml").exists():
        init_project(root)
        print(f"recurring: created project {root}")
    return str(root)


@task(name="record-run")
def record_run(project_root: str, entry: dict) -> None:
    project = Project(Path(project_root))
    project.state.mkdir(parents=True, exist_ok=True)
    with (project.state / "recurring.jsonl").open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry) + "\n")
    lines = [f"**{entry['outcome']}** in `{project_root}` at {entry['at']}"]
    if entry.get("changed"):
        lines.append("changed: " + ", ".join(entry["changed"]))
    if entry.get("promotion"):
        lines.append(entry["promotion"])
    create_markdown_artifact("\n\n".join(lines), key="taskprune-recurring", description="TaskPrune recurring run")


@flow(name="taskprune-recurring")
def recurring(project_root: str = "runs/default", settings: dict | None = None, promote: bool = True,
              check_services: bool = True) -> dict:
    """Re-prune ``project_root`` with ``settings`` (params.yaml keys) if anything changed; promote by the rule."""
    install_log_filter()
    root = ensure_project(project_root)
    project = Project(Path(root))
    env.apply(project.state)
    with run_lock(project):
        return _recur(root, settings, promote, check_services)


def _recur(root: str, settings: dict | None, promote: bool, check_services: bool) -> dict:
    # writes the settings into params.yaml; check_services false: a deployment whose MLflow comes up later
    validate_inputs(root, as_overrides(settings), check_services)
    changed = pipeline_changes(root)
    entry = {"at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "changed": changed}
    if not changed:
        entry["outcome"] = "nothing changed"
        print(f"recurring: nothing changed in {root} (dvc status is clean, the task file is the same)")
        record_run(root, entry)
        return entry
    result = pipeline(root, [], promote=promote, check_services=False)
    metrics = result["metrics"]
    entry.update(outcome="re-pruned", promotion=result["promotion"],
                 stages=[s for s, state in result["stages"].items() if state == "ran"],
                 task_accuracy=metrics["pruned"]["task_accuracy"], method=metrics["method"])
    record_run(root, entry)
    return entry
