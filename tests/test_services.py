"""Fail fast on services that cannot be reached, and one retry layer (issue: a typo in tracking.uri cost a
whole pipeline and then twelve minutes of retries multiplied)."""

from __future__ import annotations

import threading
import time

import pytest

from conftest import make_project
from pipeline_helpers import free_port, taskprune


@pytest.fixture
def project(tmp_path):
    return make_project(tmp_path / "project", git=False)


def test_unreachable_tracking_server_stops_the_run_before_anything(project):
    before = (project / "params.yaml").read_bytes()
    port = free_port()  # nothing listens there
    started = time.perf_counter()
    done = taskprune(project, "run", "-S", f"tracking.uri=http://user:secret@127.0.0.1:{port}", "-S",
                     "evaluate.limit=20", timeout=120)
    took = time.perf_counter() - started
    assert done.returncode == 2, done.stderr[-2000:]
    # the check does not go through MLflow's retries (2 + 4 + 8 ... s): seconds, not minutes; the bound leaves
    # room for a loaded machine starting Python and its imports (about 5 s alone, 16 s seen under load)
    assert took < 30, took
    err = done.stderr
    assert f"tracking.uri (http://user:***@127.0.0.1:{port})" in err and "Connection refused" in err, err
    assert "secret" not in err and "Traceback" not in err
    assert (project / "params.yaml").read_bytes() == before  # the -S values were not written
    assert not (project / "artifacts").exists() and not (project / "dvc.lock").exists()  # no stage ran


def run_cli(project, monkeypatch, capsys, *overrides: str) -> str:
    from flows.app import app
    from taskprune.cli import main

    monkeypatch.chdir(project)
    before = (project / "params.yaml").read_bytes()
    started = time.perf_counter()
    with pytest.raises(SystemExit) as exit_:
        main(app, ["run", *[a for item in overrides for a in ("-S", item)]])
    assert time.perf_counter() - started < 15
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("error: cannot reach the services"), err
    assert (project / "params.yaml").read_bytes() == before
    return err


def test_s3_endpoint_that_refuses_connections(project, monkeypatch, capsys):
    port = free_port()
    for key, value in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    err = run_cli(project, monkeypatch, capsys, "task.path=s3://tasks/task.jsonl")
    assert f"task.path (s3://tasks/task.jsonl at http://127.0.0.1:{port}): EndpointConnectionError" in err, err


def test_bucket_that_does_not_exist_and_a_dvc_remote_nobody_serves(project, monkeypatch, capsys):
    moto = pytest.importorskip("moto")
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    port = free_port()
    (project / ".dvc").mkdir()
    (project / ".dvc" / "config").write_text(f"[core]\n    remote = store\n['remote \"store\"']\n"
                                             f"    url = s3://dvc-store/cache\n    endpointurl = http://127.0.0.1:{port}\n")
    with moto.mock_aws():
        err = run_cli(project, monkeypatch, capsys, "task.path=s3://no-such-bucket/task.jsonl")
    assert "task.path (s3://no-such-bucket/task.jsonl at AWS): bucket does not exist" in err, err
    assert f"DVC remote (.dvc/config) (s3://dvc-store/cache at http://127.0.0.1:{port}): EndpointConnectionError" in err


class _Hangup:
    """A TCP server that accepts every connection and closes it at once: each request fails as if the
    tracking server were going down. Counts the attempts."""

    def __init__(self):
        import socket

        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port, self.attempts = self.sock.getsockname()[1], 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.attempts += 1
            conn.close()


def test_one_retry_layer_with_a_stated_bound(tmp_path, monkeypatch, capsys, tiny_llama_dir):
    """MLflow's client retries each call MLFLOW_HTTP_REQUEST_MAX_RETRIES times, says for how long first, and
    then the stage fails: nothing retries the stage again (no Prefect retries on any stage task)."""
    from pipeline_helpers import per_matrix_of
    from prefect_tasks.stages import promote_challenger, run_stage
    from taskprune.config import Params
    from taskprune.retries import show_retries
    from taskprune.tracking import register_result

    server = _Hangup()
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    show_retries()
    params = Params.model_validate({"tracking": {"uri": f"http://127.0.0.1:{server.port}"}})
    side = {"task_accuracy": 0.5, "perplexity": 10.0, "params": 1, "nonzero_params": 1, "bytes_on_disk": 1}
    try:
        with pytest.raises(Exception):
            register_result(params=params, state_dir=tmp_path, task_label="capital",
                            metrics={"task": "capital", "method": "wanda", "dense": side, "pruned": side,
                                     "run_seconds": 1.0},
                            per_matrix=per_matrix_of({}), stage_records={}, model_dir=tiny_llama_dir, artifacts=[],
                            lineage_tags={})
    finally:
        server.sock.close()
    assert server.attempts == 1 + 3  # the first call, then its three retries: one layer
    err = capsys.readouterr().err
    assert err.count("MLflow unreachable: retrying for up to 7 s (3 retries), then the stage fails") == 1, err
    assert err.count("retrying: /api/2.0/mlflow/") == 3
    assert run_stage.retries == 0 and promote_challenger.retries == 0  # Prefect adds no second layer


def test_no_service_check_lets_a_run_start_whose_server_comes_up_later(project, monkeypatch, capsys):
    """`taskprune run --no-service-check` (a scheduled run whose MLflow starts after it) goes past the check to
    the pipeline; the recurring flow passes its `check_services` parameter the same way."""
    import inspect

    import flows.pipeline_flow
    import flows.recurring
    from flows.app import app
    from taskprune.cli import main

    started = {}

    def pipeline(root, overrides, check_services=True):  # stands in for the Prefect flow (unit test)
        started.update(root=root, overrides=overrides, check_services=check_services)
        raise SystemExit(0)

    monkeypatch.setattr(flows.pipeline_flow, "pipeline", pipeline)
    monkeypatch.chdir(project)
    with pytest.raises(SystemExit) as exit_:
        main(app, ["run", "--no-service-check", "-S", f"tracking.uri=http://127.0.0.1:{free_port()}"])
    assert exit_.value.code == 0, capsys.readouterr().err
    assert started["check_services"] is False  # the flow does not check again either
    assert inspect.signature(flows.recurring.recurring.fn).parameters["check_services"].default is True
