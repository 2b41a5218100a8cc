"""The server configuration of infra/ as local processes (tests/infra.py starts each from the compose
file): PostgreSQL as MLflow's backend store, MLflow as a server with proxied S3 artifacts, task data and the
DVC remote on S3 (a moto server in MinIO's place). One tiny `taskprune run` against them; then a DVC
push/pull round trip; no credential in anything written. (Slow: about 3 minutes.)"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_project, make_tiny_model, write_general_text
from infra import Infra, OutageProxy
from pipeline_helpers import tiny_settings
from taskprune import config
from taskprune.data import builtin

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


class Servers:
    """Postgres, S3 with the compose file's bucket, and an MLflow server on them that can be stopped and
    started again on the same port; ``environment`` is what a TaskPrune process gets (the worker's)."""

    def __init__(self, tmp_path: Path):
        self.infra = Infra(tmp_path / "infra")
        self.infra.start_postgres()
        self.infra.start_s3()
        self.s3 = self.infra.s3
        self.uri = self.start_mlflow()
        self.environment = self.infra.client_environment(
            # fail fast when the server is down (MLflow's own retries with backoff: 2 here)
            MLFLOW_HTTP_REQUEST_MAX_RETRIES="2", MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="1", PYTHONUNBUFFERED="1")
        self.environment.pop("PREFECT_API_URL")  # the flow runs on the project's own Prefect store here
        self.environment.pop("MLFLOW_TRACKING_URI")  # the project names the server in params.yaml

    def start_mlflow(self) -> str:
        return self.infra.start_mlflow()

    def stop_mlflow(self) -> None:
        self.infra.stop_mlflow()

    def close(self) -> None:
        self.infra.close()


PREFECT_RETRIED = re.compile(r"^\d\d:\d\d:\d\d\.\d+ \| ERROR +\| prefect\.server\.services\.[\w.]+ - Error flushing \d+ "
                             r"events \(\d+ to retry, 0 dropped\)\n(?:(?!\d\d:\d\d:\d\d\.\d+ \|).*\n)*", re.M)


@pytest.fixture
def servers(tmp_path):
    started = Servers(tmp_path)
    try:
        yield started
    finally:
        started.close()


def tiny_project_on_servers(servers: Servers, tmp_path: Path, tokenizer_dir) -> Path:
    rows = [ex.to_row() for ex in builtin.sentiment(0)[:60]]
    servers.s3.put_object(Bucket="taskprune", Key="tasks/sentiment.jsonl",
                          Body="".join(json.dumps(r) + "\n" for r in rows))
    project = make_project(tmp_path / "project")
    model = make_tiny_model("llama", tokenizer_dir, tmp_path / "model")
    settings = {**tiny_settings(model, Path("unused"), write_general_text(tmp_path / "general.txt")),
                "task.path": "s3://taskprune/tasks/sentiment.jsonl", "tracking.uri": servers.uri}
    config.write_overrides(project / "params.yaml", [f"{k}={v}" for k, v in settings.items()])
    return project


def run(environment, project, *args, timeout=1200):
    done = subprocess.run(list(args), cwd=project, env=environment, capture_output=True, text=True, timeout=timeout)
    return done, done.stdout + done.stderr


def test_run_against_mlflow_server_and_s3_then_dvc_push_pull(servers, tmp_path, tokenizer_dir):
    """TaskPrune and DVC reach S3 through a proxy that cuts the line for 4 s the first time the task file is
    read and again in the middle of `dvc push`: both ride the outage out on their retries."""
    s3, mlflow_uri = servers.s3, servers.uri
    proxy = OutageProxy(servers.infra.local.port("minio"))
    environment = {**servers.environment, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{proxy.port}"}
    project = tiny_project_on_servers(servers, tmp_path, tokenizer_dir)
    logs = []

    proxy.cut_on(b"GET /taskprune/tasks/sentiment.jsonl", 4.0)
    done, out = run(environment, project, str(BIN / "taskprune"), "run")
    logs.append(out)
    (tmp_path / "run.log").write_text(out)
    assert done.returncode == 0, f"see {tmp_path / 'run.log'}"
    assert proxy.cuts == 1 and out.count("retrying: S3 request failed; next attempt in") == 1, out[-3000:]
    # TaskPrune's own output has no traceback. Known noise left: Prefect's temporary server (SQLite) can log a
    # "database is locked" traceback for an event flush it then retries (0 dropped) on a loaded machine
    assert "Traceback" not in PREFECT_RETRIED.sub("", out), f"see {tmp_path / 'run.log'}"
    metrics = json.loads((project / "metrics.json").read_text())
    assert metrics["dense"]["test_examples"] == 42  # 60 rows from S3, 30 % calibration
    registered = json.loads((project / "artifacts" / "register.json").read_text())
    assert registered["tracking_uri"] == mlflow_uri and registered["version"] == "1"

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_uri)
    version = client.get_model_version(registered["registered_model"], "1")
    assert version.tags["eval.task_accuracy"] == f"{metrics['pruned']['task_accuracy']:.4f}"  # rounded for reading
    stored = [o["Key"] for o in s3.list_objects_v2(Bucket="taskprune", Prefix="mlflow/")["Contents"]]
    assert any(key.endswith("model.safetensors") for key in stored), stored[:20]  # artifacts went to S3
    local = client.download_artifacts(registered["run_id"], "metrics.json", str(tmp_path))  # proxied back
    assert json.loads(Path(local).read_text())["pruned"] == metrics["pruned"]
    run_data = client.get_run(registered["run_id"]).data
    assert run_data.params["task.path"] == "s3://taskprune/tasks/sentiment.jsonl"

    # DVC remote on the same S3: push, lose the cache and an output, pull them back
    dvc = [sys.executable, "-m", "dvc"]
    proxy.cut_on(b"PUT /taskprune/dvc/", 4.0)
    for args in (["remote", "add", "-d", "s3", "s3://taskprune/dvc"],
                 ["remote", "modify", "s3", "endpointurl", environment["AWS_ENDPOINT_URL"]], ["push"],
                 ["status", "--cloud"]):
        done, out = run(environment, project, *dvc, *args)
        logs.append(out)
        assert done.returncode == 0, out[-3000:]
    assert proxy.cuts == 2 and "in sync" in out, out  # the push went on after the outage: nothing missing
    assert s3.list_objects_v2(Bucket="taskprune", Prefix="dvc/")["KeyCount"] > 0
    calib = (project / "artifacts" / "data" / "task_calib.jsonl").read_bytes()
    shutil.rmtree(project / ".dvc" / "cache")
    shutil.rmtree(project / "artifacts" / "data")
    done, out = run(environment, project, *dvc, "pull", "prepare_data")
    logs.append(out)
    assert done.returncode == 0, out[-3000:]
    assert (project / "artifacts" / "data" / "task_calib.jsonl").read_bytes() == calib

    # a missing S3 key: one clear message naming it, no credential
    config.write_overrides(project / "params.yaml", ["task.path=s3://taskprune/tasks/missing.jsonl"])
    done, out = run(environment, project, str(BIN / "taskprune"), "run")
    logs.append(out)
    assert done.returncode == 2 and "s3://taskprune/tasks/missing.jsonl: cannot read S3 object: object does not exist" in out

    # no credential in any output, any file the project wrote, or any MLflow param or tag
    texts = logs + [p.read_text(errors="ignore") for p in project.rglob("*")
                    if p.is_file() and ".dvc/cache" not in str(p) and p.suffix in (".json", ".jsonl", ".yaml", ".lock", ".md", ".txt", ".log")]
    recorded = [*run_data.params.values(), *run_data.tags.values(), *version.tags.values()]
    variables = servers.infra.local.variables
    secrets = [variables["POSTGRES_PASSWORD"], variables["MINIO_ROOT_USER"], variables["MINIO_ROOT_PASSWORD"]]
    for text in texts + recorded:
        assert not [secret for secret in secrets if secret in text]


def test_mlflow_down_at_register_then_back_registers_once(servers, tmp_path, tokenizer_dir):
    """The tracking server dies before registration: the stage fails after MLflow's retries with a clear
    message, every other output stays. A registration started while the server is down, which comes back
    within the retries, says it retries and finishes the job; registering the same result again reuses
    the version instead of adding one."""
    project = tiny_project_on_servers(servers, tmp_path, tokenizer_dir)
    dvc = [sys.executable, "-m", "dvc"]
    done, out = run(servers.environment, project, *dvc, "repro", "evaluate_recovered")
    assert done.returncode == 0, out[-3000:]
    servers.stop_mlflow()
    done, out = run(servers.environment, project, *dvc, "repro", "register")
    assert done.returncode != 0
    assert f"MLflow at {servers.uri} failed after retries" in out and "taskprune register" in out, out[-3000:]
    assert out.count("retrying: /api/2.0/mlflow/") == 2  # MLFLOW_HTTP_REQUEST_MAX_RETRIES, said as they happen
    assert "Traceback" not in out and (project / "metrics.json").is_file()
    assert not (project / "artifacts" / "register.json").exists()

    # an outage shorter than the retries: registration started while the server is down rides it out
    patient = {**servers.environment, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "6"}
    registering = subprocess.Popen([*dvc, "repro", "register"], cwd=project, env=patient, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seen = []
    for line in registering.stdout:  # wait until a request to the dead server has been retried
        seen.append(line)
        if line.startswith("retrying: /api/2.0/mlflow/"):
            break
    servers.start_mlflow()
    seen.append(registering.stdout.read())
    out = "".join(seen)
    assert registering.wait(120) == 0 and "retrying: /api/2.0/mlflow/" in out, out[-3000:]
    first = json.loads((project / "artifacts" / "register.json").read_text())
    (project / "artifacts" / "register.json").unlink()  # as if killed after registering, before writing it
    done, out = run(servers.environment, project, str(BIN / "taskprune"), "register")
    assert done.returncode == 0 and "already registered (an earlier attempt): reusing" in out, out[-3000:]
    again = json.loads((project / "artifacts" / "register.json").read_text())
    assert again["version"] == first["version"] == "1" and again["run_id"] == first["run_id"]
    from mlflow import MlflowClient

    versions = MlflowClient(tracking_uri=servers.uri).search_model_versions(f"name='{first['registered_model']}'")
    assert len(versions) == 1
