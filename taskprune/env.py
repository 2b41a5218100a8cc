"""Process environment the project sets for itself (offline, no telemetry).

Imported first by the CLI so every library (and every subprocess DVC starts)
sees the same settings. Values are defaults: a user with network access can
export ``HF_HUB_OFFLINE=0`` to load hub ids.
"""

from __future__ import annotations

import os
from pathlib import Path

OFFLINE_DEFAULTS = {
    "DO_NOT_TRACK": "true",  # MLflow honours "true", not "1"
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
    # The ephemeral Prefect server needs ~20 s to start on 2 cores; the default limit is 20 s.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "GIT_PYTHON_REFRESH": "quiet",
}


def apply(state_dir: Path | None = None) -> None:
    """Set the offline defaults, and keep Prefect/HF homes inside the project's state directory."""
    for key, value in OFFLINE_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if state_dir is not None:
        for key, sub in (("PREFECT_HOME", "prefect"), ("HF_HOME", "hf")):
            os.environ.setdefault(key, str(state_dir / sub))
            Path(os.environ[key]).mkdir(parents=True, exist_ok=True)  # Prefect does not create parents
