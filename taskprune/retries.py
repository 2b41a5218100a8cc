"""The one retry policy for network calls, and saying on stderr when a call is being retried.

Exactly one layer retries a call: the client that makes it. MLflow's HTTP client (urllib3) retries
``MLFLOW_RETRIES`` times with exponential backoff (factor ``MLFLOW_BACKOFF``, each request at most
``MLFLOW_TIMEOUT`` s); boto3 retries in botocore's standard mode (``S3_ATTEMPTS`` attempts, jittered
exponential backoff of at most 1, 2, 4, 8, 16, 20, 20 s: an outage of a few seconds is ridden out, one of
a minute is not), and so does DVC's S3 client in the stages TaskPrune starts (``AWS_MAX_ATTEMPTS``,
``AWS_RETRY_MODE``, which botocore reads). Prefect does not retry
the stages on top of them (flows/pipeline_flow.py), so the total wait is bounded and stated: the
first retry of MLflow says for how long it will go on. The values are defaults: the user's
``MLFLOW_HTTP_REQUEST_*`` variables win. Services that do not answer at all are found before a run
starts (taskprune/services.py).

``show_retries`` turns the clients' retry records into one short line each, redacted like every
other log line:

    MLflow unreachable: retrying for up to 2.1 min (6 retries), then the stage fails
    retrying: /api/2.0/mlflow/runs/create failed (NewConnectionError); 5 retries left
    retrying: S3 request failed; next attempt in 0.6 s (up to 8 attempts)

(S3 says its first retry only: the seven that may follow within a minute add nothing a reader needs.)
"""

from __future__ import annotations

import logging
import os
import sys
import time

from taskprune.secrets import RedactingFilter

MLFLOW_RETRIES = 6
MLFLOW_BACKOFF = 2         # seconds (an integer, as MLflow reads it); the n-th retry waits BACKOFF * 2**(n-1), at most 120 s
MLFLOW_TIMEOUT = 30        # seconds for one request
S3_ATTEMPTS = 8            # botocore's default of 3 gives up after about 1.5 s of backoff
S3_QUIET = 60.0            # seconds after an S3 retry line in which further S3 retries are not said again
_s3_said = float("-inf")

_HTTP = "urllib3.connectionpool"  # MLflow (requests) logs "Retrying (...)" here at WARNING
_S3 = "botocore.retries.standard"  # boto3's standard retry mode, at DEBUG


class _RetryLine(logging.Filter):
    """Rewrites the retry records of the two loggers as one short line; their other records pass
    at WARNING and above (the two loggers stop propagating, so nothing prints twice)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.msg if isinstance(record.msg, str) else ""
        if record.name == _HTTP and message.startswith("Retrying (") and len(record.args or ()) == 3:
            retry, error, url = record.args
            left = getattr(retry, "total", None)
            record.msg = f"retrying: {url} failed ({type(error).__name__}); {left} retries left"
            if isinstance(left, int) and left + 1 == mlflow_retries():  # the first retry: say how long at most
                record.msg = f"MLflow unreachable: {retry_budget()}\n{record.msg}"
        elif record.name == _S3 and message.startswith("Retry needed, retrying request after delay of"):
            global _s3_said
            now = time.monotonic()
            if now - _s3_said < S3_QUIET:  # one line per outage: the retries that follow it say nothing new
                return False
            _s3_said = now
            record.msg = (f"retrying: S3 request failed; next attempt in {float(record.args[0]):.1f} s "
                          f"(up to {s3_attempts()} attempts)")
        else:
            return record.levelno >= logging.WARNING
        record.args = None
        return True


class _Stderr(logging.StreamHandler):
    """A stream handler on whatever ``sys.stderr`` is when a record comes (not when it was made)."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self):  # noqa: D102
        return sys.stderr


_handler: logging.Handler | None = None


def apply_policy() -> None:
    """The policy's defaults for MLflow's client, unless the user set them."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(MLFLOW_RETRIES))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", str(MLFLOW_BACKOFF))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(MLFLOW_TIMEOUT))
    os.environ.setdefault("AWS_RETRY_MODE", "standard")
    os.environ.setdefault("AWS_MAX_ATTEMPTS", str(S3_ATTEMPTS))


def s3_attempts() -> int:
    return int(os.environ.get("AWS_MAX_ATTEMPTS", S3_ATTEMPTS))


def mlflow_retries() -> int:
    return int(os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", MLFLOW_RETRIES))


def retry_budget() -> str:
    """How long MLflow's retries of one call wait at most, in words (backoff only; each request may also
    take up to the request timeout)."""
    factor = int(os.environ.get("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", MLFLOW_BACKOFF))
    retries = mlflow_retries()
    seconds = sum(min(factor * 2 ** n, 120.0) for n in range(retries))
    shown = f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"
    return f"retrying for up to {shown} ({retries} retries), then the stage fails"


def show_retries() -> None:
    """Apply the retry policy and print the retries of MLflow's and boto3's clients on stderr (idempotent)."""
    global _handler
    apply_policy()
    if _handler is not None:
        return
    _handler = _Stderr()
    _handler.setFormatter(logging.Formatter("%(message)s"))
    _handler.addFilter(_RetryLine())
    _handler.addFilter(RedactingFilter())
    for name, level in ((_HTTP, logging.WARNING), (_S3, logging.DEBUG)):
        logger = logging.getLogger(name)
        logger.addHandler(_handler)
        logger.propagate = False
        if logger.getEffectiveLevel() > level:
            logger.setLevel(level)
