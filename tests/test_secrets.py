"""Credentials never reach what TaskPrune writes: logs, MLflow params, error messages."""

from __future__ import annotations

import logging

import pytest

from taskprune.errors import TaskPruneError
from taskprune.secrets import install_log_filter, redact

SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCY"


def test_redact_masks_uri_passwords_and_credential_variables(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "short")  # under 8 characters: not searched for (ordinary words)
    assert redact("http://alice:pa55w0rd@mlflow:5000/x") == "http://alice:***@mlflow:5000/x"
    assert redact(f"postgresql+asyncpg://u:{SECRET}@db/prefect") == "postgresql+asyncpg://u:***@db/prefect"
    assert redact(f"boto said {SECRET}!") == "boto said ***!"
    assert redact("s3://bucket/key and a short word") == "s3://bucket/key and a short word"


def test_log_records_are_redacted(monkeypatch, caplog):
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", SECRET)
    install_log_filter()
    handler = logging.getLogger().handlers[-1] if logging.getLogger().handlers else None
    assert handler is not None
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "token %s in %s", (SECRET, "http://u:p4ss@h"), None)
    for f in handler.filters:
        f.filter(record)
    assert record.getMessage() == "token *** in http://u:***@h"


def test_cli_error_messages_are_redacted(monkeypatch, capsys):
    from taskprune import cli

    monkeypatch.setenv("AWS_SESSION_TOKEN", SECRET)

    def fail(args=None):
        raise TaskPruneError(f"cannot reach https://user:hunter22@example.org with {SECRET}")

    with pytest.raises(SystemExit) as exit_:
        cli.main(application=fail)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert SECRET not in err and "hunter22" not in err and "https://user:***@example.org" in err


def test_mlflow_params_and_register_json_carry_no_credentials(tmp_path, tiny_llama_dir, monkeypatch):
    from mlflow import MlflowClient

    from pipeline_helpers import register_tiny
    from taskprune.config import Params

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    params = Params.model_validate({"tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
                                    "task": {"path": f"s3://bucket/{SECRET}.jsonl"}})  # a user pasting a key
    result = register_tiny(params, tmp_path, tiny_llama_dir)
    run = MlflowClient(tracking_uri=params.tracking.uri).get_run(result["run_id"])
    assert run.data.params["task.path"] == "s3://bucket/***.jsonl"
    assert all(SECRET not in str(v) for v in [*run.data.params.values(), *result.values()])
