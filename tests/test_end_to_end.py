"""The whole flow on the embedded default (SmolLM2-135M-Instruct, CPU, offline): `taskprune run` twice, in the
default target mode (the smallest model within 5 % of dense accuracy), with a shorter level grid (one grid level and
one bisection step, structured only), half the calibration samples and 120 test questions, so the suite stays within
its time.

Slow (about 6-8 minutes on 2 cores): run alone with `pytest -m slow tests/test_end_to_end.py`.
"""

import json
import sqlite3

import pytest

from conftest import make_project
from pipeline_helpers import taskprune

pytestmark = pytest.mark.slow


def test_default_run_then_rerun_skips_everything(tmp_path):
    project = make_project(tmp_path / "project")
    first = taskprune(project, "run", "-S", "target.methods=[structured]", "-S", "target.levels=[0.05]",
                      "-S", "target.refine=1", "-S", "calibration.num_samples=32", "-S", "evaluate.limit=120",
                      timeout=1500)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    metrics = json.loads((project / "metrics.json").read_text())
    dense, pruned, target = metrics["dense"], metrics["pruned"], metrics["target"]
    split = json.loads((project / "artifacts" / "data" / "stage.json").read_text())
    assert metrics["task"] == "capital" and split["test_examples"] >= 200 and target["validation_examples"] >= 60
    assert dense["test_examples"] == 120  # evaluate.limit
    assert dense["task_accuracy"] > dense["chance_accuracy"] + 0.3  # SmolLM2 clearly knows capitals
    frontier = json.loads((project / "artifacts" / "frontier" / "frontier.json").read_text())
    levels = [p["level"] for p in frontier["points"]]  # the grid level, then one bisection step if it failed
    assert levels == ([0.05] if frontier["points"][0]["within"] else [0.05, 0.025])
    choice = target["choice"]
    assert choice == frontier["choice"] and choice["method"] == "structured"
    removed = 1 - pruned["decoder_linear_nonzero"] / dense["decoder_linear_nonzero"]
    assert removed == pytest.approx(choice["reduction"], abs=1e-6) and removed > 0  # the chosen point was built
    assert pruned["bytes_on_disk"] < dense["bytes_on_disk"]  # a smaller checkpoint, not zeros
    assert dense["perplexity"] < pruned["perplexity"] < 3 * dense["perplexity"]
    answer = "smallest model within 5% of dense accuracy" if choice["within_budget"] else "no model within 5%"
    assert answer in first.stdout and "task accuracy" in first.stdout and "decode tokens/s" in first.stdout
    registered = json.loads((project / "artifacts" / "register.json").read_text())
    assert registered["registered_model"] == "taskprune-capital"
    assert registered["version"] == ("1" if choice["within_budget"] else None)
    assert (project / ".taskprune" / "mlflow.db").exists()

    second = taskprune(project, "run", "-S", "promote.auto=true", timeout=900)  # promote is not a stage param
    assert second.returncode == 0, second.stderr[-4000:]
    assert "stages run: none (all up to date)" in second.stdout
    assert json.loads((project / "artifacts" / "register.json").read_text()) == registered
    assert ("promotion: taskprune-capital version 1: " if choice["within_budget"] else "nothing to promote") \
        in second.stdout, second.stdout[-3000:]
    home = project / ".taskprune" / "prefect"  # the project's own Prefect store
    prefect = sqlite3.connect(home / "prefect.db")
    runs = [(run_id, name, tags) for run_id, name, tags, parameters in prefect.execute(
        "select id, name, tags, parameters from flow_run order by start_time")
        if json.loads(parameters).get("project_root") == str(project.resolve())]
    assert [name for _, name, _ in runs] == ["capital-within0.05-structured"] * 2  # named by what it does
    assert all({"taskprune", "task:capital", "method:structured"} <= set(json.loads(tags)) for _, _, tags in runs)
    states = [dict(prefect.execute("select name, state_name from task_run where flow_run_id = ?", (run_id,)))
              for run_id, _, _ in runs]
    assert states[0]["calibrate"] == "Completed" and states[1]["calibrate"] == "Skipped"
    assert "promote the challenger" not in states[0] and states[1]["promote the challenger"] == "Completed"
    logs = [m for (m,) in prefect.execute("select l.message from log l join task_run t on l.task_run_id = t.id "
                                          "where t.name = 'frontier'")]
    assert any(m.startswith("frontier: structured at 0.05") for m in logs)  # the stage's output in its task run's log
    assert "git add dvc.lock" not in first.stdout  # DVC's advice stays out of the console
    artifacts = [(key, kind, data) for key, kind, data, run_id in prefect.execute(
        "select key, type, data, flow_run_id from artifact") if run_id in {r[0] for r in runs}]
    assert len(artifacts) == 2 and all(key == "taskprune-results" and kind == "markdown" for key, kind, _ in artifacts)
    assert "| task accuracy (chance 0.250) |" in json.loads(artifacts[-1][2]) and answer in json.loads(artifacts[-1][2])
    listed = taskprune(project, "models")
    if choice["within_budget"]:
        assert listed.returncode == 0 and "challenger" in listed.stdout
    else:  # nothing was registered: the registry has no such model yet, and says so
        assert listed.returncode == 2 and "no registered model 'taskprune-capital'" in listed.stderr
    report = taskprune(project, "report")
    assert report.returncode == 0 and "logged to MLflow run" in report.stdout, report.stderr[-2000:]
    page = (project / "report.html").read_text()
    # the frontier, the drift from dense layer by layer, and the per-matrix picture only where it varies by layer
    per_layer = "Parameters removed per matrix" in page
    assert page.count("data:image/png;base64,") == 2 + per_layer and "Accuracy budget: every point tried" in page
    assert "Drift from the dense model, layer by layer" in page
    assert per_layer == bool(json.loads((project / "artifacts" / "model" / "pruned" / "stage.json").read_text())
                             .get("removed_layers")), "a width cut alike in every layer draws no per-matrix map"
    assert f"TaskPrune: {choice['method']}-{choice['level']:g}-capital" in page  # the point the stages ran at
    assert answer in page
