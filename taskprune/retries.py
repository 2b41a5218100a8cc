"""Say on stderr when a network call is being retried.

MLflow's HTTP client (urllib3) and boto3 (botocore's standard mode) retry failed requests
with exponential backoff, silently: with MLflow's defaults an unreachable server means minutes
of waiting with no output. ``show_retries`` turns their retry records into one short line
each, redacted like every other log line:

    retrying: /api/2.0/mlflow/runs/create failed (NewConnectionError); 5 retries left
    retrying: S3 request failed; next attempt in 0.6 s
"""

from __future__ import annotations

import logging
import sys

from taskprune.secrets import RedactingFilter

_HTTP = "urllib3.connectionpool"  # MLflow (requests) logs "Retrying (...)" here at WARNING
_S3 = "botocore.retries.standard"  # boto3's standard retry mode, at DEBUG


class _RetryLine(logging.Filter):
    """Rewrites the retry records of the two loggers as one short line; their other records pass
    at WARNING and above (the two loggers stop propagating, so nothing prints twice)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.msg if isinstance(record.msg, str) else ""
        if record.name == _HTTP and message.startswith("Retrying (") and len(record.args or ()) == 3:
            retry, error, url = record.args
            record.msg = f"retrying: {url} failed ({type(error).__name__}); {getattr(retry, 'total', '?')} retries left"
        elif record.name == _S3 and message.startswith("Retry needed, retrying request after delay of"):
            record.msg = f"retrying: S3 request failed; next attempt in {float(record.args[0]):.1f} s"
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


def show_retries() -> None:
    """Print the retries of MLflow's and boto3's clients on stderr (idempotent)."""
    global _handler
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
