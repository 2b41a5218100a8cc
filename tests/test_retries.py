"""Retries of MLflow's and boto3's clients are said on stderr, one short redacted line each."""

from __future__ import annotations

import pytest

from taskprune.retries import show_retries
from taskprune.sources import s3_client


@pytest.fixture
def retries_shown(monkeypatch):
    import taskprune.retries

    show_retries()  # what the CLI does first (once per process; it stays for the session)
    monkeypatch.setattr(taskprune.retries, "_s3_said", float("-inf"))  # no S3 retry said yet in this test


def test_mlflow_retries_are_said_then_the_error_comes(retries_shown, monkeypatch, capsys):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    with pytest.raises(MlflowException):
        MlflowClient("http://user:hunter2-password@127.0.0.1:1").get_experiment_by_name("x")
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("retrying:")]
    assert lines == [
        "retrying: /api/2.0/mlflow/experiments/get-by-name?experiment_name=x failed (NewConnectionError); 1 retries left",
        "retrying: /api/2.0/mlflow/experiments/get-by-name?experiment_name=x failed (NewConnectionError); 0 retries left",
    ]


def test_s3_retries_are_said_and_other_debug_records_are_not(retries_shown, monkeypatch, capsys):
    from botocore.exceptions import EndpointConnectionError

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "3")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-real-secret-123")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with pytest.raises(EndpointConnectionError):
        s3_client().head_object(Bucket="b", Key="k")
    err = capsys.readouterr().err
    retries = [line for line in err.splitlines() if line.startswith("retrying: S3 request failed; next attempt in ")]
    # two retries, said once (the second follows within the quiet minute), with the attempts it may take
    assert len(retries) == 1 and retries[0].endswith("(up to 3 attempts)"), err
    assert "Max attempts" not in err and "Not retrying" not in err, err
