"""The pipeline flow: reads like the list of stages."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from prefect_tasks.stages import promote_challenger, run_stage, task_source_changed, validate_inputs
from taskprune.paths import Project, read_json, run_lock
from taskprune.pipeline import STAGES


@flow(name="taskprune-pipeline")
def pipeline(project_root: str, overrides: list[str] | None = None, promote: bool | None = None,
             check_services: bool = True) -> dict:
    """Validate inputs, then run every stage through DVC (unchanged stages are skipped); then apply the
    promotion rule when ``promote`` is true (default: params.yaml ``promote.auto``)."""
    project = Project(Path(project_root))
    with run_lock(project):
        return _run(project, project_root, overrides, promote, check_services)


def _run(project: Project, project_root: str, overrides: list[str] | None, promote: bool | None,
         check_services: bool) -> dict:
    validate_inputs(project_root, overrides or [], check_services)
    reread_task = task_source_changed(project_root)
    outcome = {}
    for entry in STAGES:
        # No Prefect retries: a compute stage that failed fails again, and the stages that talk to servers
        # (register; prepare_data on S3) are retried by their clients, one bounded policy (taskprune/retries.py)
        state = run_stage(entry.name, project_root, force=reread_task and entry.name == "prepare_data")
        if not entry.always_run:  # bookkeeping (the code version) runs every time: not work done
            outcome[entry.name] = state
    promotion = promote_challenger(project_root, promote)
    return {"stages": outcome, "metrics": read_json(project.metrics), "promotion": promotion}
