"""Keeping credentials out of what TaskPrune writes: logs, MLflow params and tags, JSON outputs, errors.

Credentials reach TaskPrune only through the environment (AWS variables, MLflow's basic-auth
variables, a token) or inside a URI (``http://user:password@host``). ``redact`` replaces both
with ``***`` and is applied to every param logged to MLflow, to the outputs that record a URI,
and to every error message the CLI prints; ``RedactingFilter`` does the same for log records.
"""

from __future__ import annotations

import logging
import os
import re

# Variables whose values are credentials (values shorter than 8 characters are not searched for:
# they would match ordinary words).
SECRET_VARIABLES = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ACCESS_KEY_ID",
                    "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN",
                    "PREFECT_API_KEY", "DATABASE_PASSWORD", "POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD")
MASK = "***"
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:/@\s]+):(?P<password>[^@/\s]+)@")


def secret_values() -> list[str]:
    values = {os.environ.get(name, "") for name in SECRET_VARIABLES}
    return sorted((v for v in values if len(v) >= 8), key=len, reverse=True)


def redact(text: str) -> str:
    """``text`` with URI passwords and the values of credential variables replaced by ``***``."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    for value in secret_values():
        text = text.replace(value, MASK)
    return text


class RedactingFilter(logging.Filter):
    """A logging filter that redacts each record's message (attach it to handlers)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def install_log_filter() -> None:
    """Attach ``RedactingFilter`` to the handlers of the root logger and of every logger configured so far
    (Prefect's console and API handlers among them: call again after importing Prefect)."""
    loggers = [logging.getLogger()] + [logger for logger in logging.Logger.manager.loggerDict.values()
                                       if isinstance(logger, logging.Logger)]
    for logger in loggers:
        for handler in logger.handlers:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(RedactingFilter())
