"""The whole flow on the embedded default (SmolLM2-135M-Instruct, CPU, offline): `taskprune run` twice.

Slow (about 6-8 minutes on 2 cores): run alone with `pytest -m slow tests/test_end_to_end.py`.
"""

import json
import os
import sqlite3
from pathlib import Path

import pytest

from conftest import make_project
from pipeline_helpers import taskprune

pytestmark = pytest.mark.slow


def test_default_run_then_rerun_skips_everything(tmp_path):
    project = make_project(tmp_path / "project")
    first = taskprune(project, "run", timeout=1500)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    metrics = json.loads((project / "metrics.json").read_text())
    dense, pruned = metrics["dense"], metrics["pruned"]
    assert metrics["task"] == "capital" and dense["test_examples"] >= 300
    assert dense["task_accuracy"] > dense["chance_accuracy"] + 0.3  # SmolLM2 clearly knows capitals
    assert pruned["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert pruned["nonzero_params"] < dense["nonzero_params"] - 0.45 * dense["decoder_linear_params"]
    assert pruned["task_accuracy"] > dense["chance_accuracy"]  # Wanda 50% keeps the model alive
    assert dense["perplexity"] < pruned["perplexity"] < 10 * dense["perplexity"]
    assert "task accuracy" in first.stdout and "decode tokens/s" in first.stdout  # the results table
    registered = json.loads((project / "artifacts" / "register.json").read_text())
    assert registered["version"] == "1" and registered["registered_model"] == "taskprune-capital"
    assert (project / ".taskprune" / "mlflow.db").exists()

    second = taskprune(project, "run", "-S", "promote.auto=true", timeout=900)  # promote is not a stage param
    assert second.returncode == 0, second.stderr[-4000:]
    assert "stages run: none (all up to date)" in second.stdout
    assert json.loads((project / "artifacts" / "register.json").read_text())["version"] == "1"
    # Wanda 50 % loses far more than the allowed 0.05 accuracy: the rule keeps it out of `champion`
    assert "promotion: taskprune-capital version 1: not promoted (accuracy" in second.stdout, second.stdout[-3000:]
    assert "champion: none" in second.stdout
    # the local Prefect store: the project's own, unless this test process already set one (the CLI inherits it)
    home = Path(os.environ.get("PREFECT_HOME") or project / ".taskprune" / "prefect")
    prefect = sqlite3.connect(home / "prefect.db")
    runs = [(run_id, name, tags) for run_id, name, tags, parameters in prefect.execute(
        "select id, name, tags, parameters from flow_run order by start_time")
        if json.loads(parameters).get("project_root") == str(project.resolve())]
    assert [name for _, name, _ in runs] == ["capital-wanda-uniform-unstructured-0.5"] * 2  # named by what it does
    assert all({"taskprune", "task:capital", "method:wanda"} <= set(json.loads(tags)) for _, _, tags in runs)
    states = [dict(prefect.execute("select name, state_name from task_run where flow_run_id = ?", (run_id,)))
              for run_id, _, _ in runs]
    assert states[0]["calibrate"] == "Completed" and states[1]["calibrate"] == "Skipped"
    assert "promote the challenger" not in states[0] and states[1]["promote the challenger"] == "Completed"
    logs = [m for (m,) in prefect.execute("select l.message from log l join task_run t on l.task_run_id = t.id "
                                          "where t.name = 'score'")]
    assert any(m.startswith("masks:") for m in logs)  # the stage's own output is in its task run's log
    assert "git add dvc.lock" not in first.stdout  # DVC's advice stays out of the console
    artifacts = [(key, kind, data) for key, kind, data, run_id in prefect.execute(
        "select key, type, data, flow_run_id from artifact") if run_id in {r[0] for r in runs}]
    assert len(artifacts) == 2 and all(key == "taskprune-results" and kind == "markdown" for key, kind, _ in artifacts)
    assert "| task accuracy |" in json.loads(artifacts[-1][2]) and "taskprune-capital" in json.loads(artifacts[-1][2])
    listed = taskprune(project, "models")
    assert listed.returncode == 0 and "not promoted" in listed.stdout and "challenger" in listed.stdout
    report = taskprune(project, "report")
    assert report.returncode == 0 and "logged to MLflow run" in report.stdout, report.stderr[-2000:]
    page = (project / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 1 and "Sparsity per layer" in page  # a Wanda run: the heatmap
    assert "taskprune-capital version 1" in page
