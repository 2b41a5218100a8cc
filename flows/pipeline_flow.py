"""The pipeline flow: reads like the list of stages."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from prefect_tasks.stages import promote_challenger, run_stage, task_source_changed, validate_inputs
from taskprune import config
from taskprune.paths import Project, read_json, run_lock
from taskprune.pipeline import STAGES


def run_name() -> str:
    """The flow run's name: what it does (task, method, how much), from params.yaml with the run's overrides."""
    from prefect.runtime import flow_run

    from taskprune.data.task import task_label
    from taskprune.target import run_label

    parameters = flow_run.parameters
    try:
        params = config.load(Project(Path(parameters["project_root"])).params_file, parameters.get("overrides"))
    except Exception:  # invalid input: validate_inputs reports it; the run still needs a name
        return "taskprune-pipeline"
    return f"{task_label(params)}-{run_label(params)}"


@flow(name="taskprune-pipeline", flow_run_name=run_name)
def pipeline(project_root: str, overrides: list[str] | None = None, promote: bool | None = None,
             check_services: bool = True) -> dict:
    """Validate inputs, then run every stage through DVC (unchanged stages are skipped); then apply the
    promotion rule when ``promote`` is true (default: params.yaml ``promote.auto``)."""
    project = Project(Path(project_root))
    with run_lock(project):
        return _run(project, project_root, overrides, promote, check_services)


def _run(project: Project, project_root: str, overrides: list[str] | None, promote: bool | None,
         check_services: bool) -> dict:
    from prefect.artifacts import create_markdown_artifact

    from taskprune.report import results_markdown
    from taskprune.results import compression_of

    validate_inputs(project_root, overrides or [], check_services)
    reread_task = task_source_changed(project_root)
    outcome, previous = {}, None
    for entry in STAGES:
        # No Prefect retries: a compute stage that failed fails again, and the stages that talk to servers
        # (register; prepare_data on S3) are retried by their clients, one bounded policy (taskprune/retries.py)
        state = run_stage(entry.name, project_root, force=reread_task and entry.name == "prepare_data",
                          wait_for=[previous] if previous is not None else None, return_state=True)
        previous = state  # each stage waits for the one before: the run's graph shows the pipeline
        if not entry.always_run:  # bookkeeping (the code version) runs every time: not work done
            outcome[entry.name] = state.result()  # a failed stage raises here
    params = config.load(project.params_file)
    apply = params.promote.auto if promote is None else promote
    promotion = promote_challenger(project_root) if apply else None  # no promote step when it is off
    metrics = read_json(project.metrics)
    registration = read_json(project.registration) if project.registration.is_file() else None
    create_markdown_artifact(results_markdown(metrics, compression_of(project), registration),
                             key="taskprune-results", description="results table and where the model is registered")
    return {"stages": outcome, "metrics": metrics, "promotion": promotion}
