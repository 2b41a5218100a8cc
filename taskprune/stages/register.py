"""register: log the result to MLflow and register the pruned model (alias ``challenger``)."""

from __future__ import annotations

from taskprune.config import Params
from taskprune.errors import TaskPruneError
from taskprune.models.packaged import provenance
from taskprune.paths import Project, StageTimer, write_json
from taskprune.pipeline import stage_records
from taskprune.report import html_report
from taskprune.results import load_result
from taskprune.secrets import redact
from taskprune.tracking import is_tracking_failure, register_result, run_figures, tracking_uri
from taskprune.tracking.lineage import code_tags, git_commit, lineage_hashes, result_key


def run(params: Params, project: Project) -> None:
    timer = StageTimer(project, "register")
    inputs = load_result(params, project)
    metrics = inputs["metrics"]
    figures = run_figures(inputs["run_name"], inputs["per_matrix"], inputs["search"], inputs["exclusive"],
                          inputs["history"], inputs["frontier"], inputs["drift"])  # made once: MLflow and the report
    tags = {"git_commit": git_commit(project), **lineage_hashes(project), **code_tags(project),
            "settings": params.prune.method_object.settings_label(params.prune)}  # how much and how, as the method says
    try:
        result = register_result(
            params=params, state_dir=project.state, task_label=metrics["task"], metrics=metrics,
            per_matrix=inputs["per_matrix"], stage_records=stage_records(project), model_dir=project.pruned_model,
            artifacts=[project.metrics, project.mask_dir / "masks.json", project.search / "allocation.json",
                       project.dvc_lock, project.params_file],
            lineage_tags=tags, exclusive=inputs["exclusive"],
            recovered_dir=project.recovered_model if "recovered" in metrics else None,
            history=inputs["history"], search=inputs["search"], figures=figures, frontier=inputs["frontier"],
            datasets={"calibration": project.data / "task_calib.jsonl",
                      "validation": project.data / "task_validation.jsonl", "test": project.data / "task_test.jsonl",
                      "general": project.data / "general_calib.jsonl"},
            report_html=html_report(**inputs, figures=figures), result_key=result_key(project),
            provenance=provenance(params.model.name, project.root))
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
    if result["version"] is None:
        print(f"not registered: {result['not_registered']}; MLflow run {result['run_id']} at {result['tracking_uri']}")
        return
    how = "already registered (an earlier attempt): reusing" if result.get("reused") else "registered"
    print(f"{how} {result['registered_model']} version {result['version']}, run {result['run_id']} "
          f"at {result['tracking_uri']}")
    if "recovered_version" in result:
        print(f"registered the recovered model as version {result['recovered_version']} "
              f"(parent version {result['version']})")
    print(f"alias challenger -> version {result.get('recovered_version', result['version'])}")
