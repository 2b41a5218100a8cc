"""prepare_data on local and S3 task files; the fingerprint that tells a changed task file; atomic outputs."""

import json

import pytest

from conftest import write_general_text
from taskprune.config import Params
from taskprune.errors import TaskPruneError
from taskprune.paths import Project, atomic_dir, read_json
from taskprune.stages import run_stage
from prefect_tasks.stages import task_source_changed

ROWS = [{"query": f"Question {i}?", "choices": ["yes", "no", "maybe"], "gold": i % 3} for i in range(40)]


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def params_for(project_root, task_path):
    general = write_general_text(project_root / "general.txt")
    (project_root / "params.yaml").write_text(
        f"task:\n  path: {task_path}\ncalibration:\n  general:\n    source: file\n    path: {general}\n"
        "evaluate:\n  perplexity_docs: 4\n")
    return Params.model_validate({"task": {"path": task_path},
                                  "calibration": {"general": {"source": "file", "path": str(general)}},
                                  "evaluate": {"perplexity_docs": 4}})


def test_local_task_split_and_fingerprint_change(tmp_path):
    project = Project(tmp_path)
    write_rows(tmp_path / "t.jsonl", ROWS)
    params = params_for(tmp_path, "t.jsonl")
    run_stage("prepare_data", params, project)
    info = read_json(project.data / "stage.json")
    assert info["calib_examples"] + info["test_examples"] == 40 and info["chance_accuracy"] == pytest.approx(1 / 3)
    assert info["task"] == "t" and info["task_fingerprint"].startswith("sha256:")
    assert task_source_changed.fn(str(tmp_path)) is False
    write_rows(tmp_path / "t.jsonl", ROWS[:-1])  # same path, new content
    assert task_source_changed.fn(str(tmp_path)) is True


def test_s3_task(tmp_path, monkeypatch):
    moto = pytest.importorskip("moto")
    for key, value in {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    with moto.mock_aws():
        import boto3

        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="tasks-bucket")
        s3.put_object(Bucket="tasks-bucket", Key="tasks/qa.jsonl", Body="".join(json.dumps(r) + "\n" for r in ROWS))
        project = Project(tmp_path)
        run_stage("prepare_data", params_for(tmp_path, "s3://tasks-bucket/tasks/qa.jsonl"), project)
        info = read_json(project.data / "stage.json")
        assert info["task"] == "qa" and info["task_fingerprint"].startswith("s3-etag:")
        s3.put_object(Bucket="tasks-bucket", Key="tasks/qa.jsonl", Body="".join(json.dumps(r) + "\n" for r in ROWS[:30]))
        assert task_source_changed.fn(str(tmp_path)) is True
        with pytest.raises(TaskPruneError, match="s3://tasks-bucket/tasks/gone.jsonl: cannot read S3 object: object does not exist"):
            run_stage("prepare_data", params_for(tmp_path, "s3://tasks-bucket/tasks/gone.jsonl"), project)
        assert read_json(project.data / "stage.json") == info  # the failed run left the old output alone


def test_atomic_dir_keeps_old_output_on_failure(tmp_path):
    target = tmp_path / "out"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("first")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("crash")
    assert (target / "a.txt").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary left behind
