"""Helpers for tests that run the real CLI and DVC in a temporary project."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from taskprune import config
from prefect_tasks.stages import dvc_environment


def cli_env(project: Path) -> dict[str, str]:
    environment = dvc_environment()  # this interpreter's scripts first on PATH, as the flow does
    environment.pop("MLFLOW_TRACKING_URI", None)
    environment.pop("TASKPRUNE_PROJECT", None)
    environment.pop("PREFECT_HOME", None)  # the project's own store (an in-process CLI test may have set one here)
    environment["PYTHONUNBUFFERED"] = "1"
    return environment


def run(args: list[str], project: Path, timeout: int = 1200, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=project, env={**cli_env(project), **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


def taskprune(project: Path, *args: str, timeout: int = 1200, env: dict | None = None) -> subprocess.CompletedProcess:
    return run([str(Path(sys.executable).parent / "taskprune"), *args], project, timeout, env)


def dvc(project: Path, *args: str, timeout: int = 1200) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "dvc", *args], project, timeout)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a server subprocess)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, seconds: float = 180) -> None:
    """Until ``url`` answers 200 (a server subprocess is up), or TimeoutError."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise TimeoutError(url)


def tiny_settings(model_dir: Path, task_file: Path, general_file: Path) -> dict[str, object]:
    """params.yaml keys for a tiny local model, a local task file and a local general text file."""
    return {"model.name": str(model_dir), "task.path": str(task_file), "calibration.general.source": "file",
            "calibration.general.path": str(general_file), "calibration.num_samples": 4, "calibration.seq_len": 32,
            "evaluate.perplexity_docs": 4, "evaluate.decode_tokens": 4, "evaluate.batch_size": 16,
            "target.max_accuracy_drop": "", "task.validation_fraction": 0}  # fixed-level mode (Wanda 50 %)


def write_task(path: Path, task_rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in task_rows))
    return path


def configure_tiny(project: Path, model_dir: Path, task_rows: list[dict], general_file: Path) -> None:
    """Point a project at a tiny local model, a local task file and a local general text file."""
    write_task(project / "data" / "task.jsonl", task_rows)
    settings = tiny_settings(model_dir, Path("data/task.jsonl"), general_file)
    config.write_overrides(project / "params.yaml", [f"{k}={v}" for k, v in settings.items()])
    subprocess.run(["git", "add", "-A"], cwd=project, check=True)
    subprocess.run(["git", "commit", "-q", "-m", "tiny setup"], cwd=project, check=True)


def per_matrix_of(sparsities: dict[str, float]) -> dict:
    """What a masking method's pruned model reports per matrix (its stage.json ``per_matrix``)."""
    return {"name": "sparsity_per_layer", "title": "sparsity per layer", "quantity": "sparsity",
            "values": sparsities}


SIDE = {"task_accuracy": 0.5, "perplexity": 10.0, "params": 100, "nonzero_params": 50,
        "decoder_linear_params": 80, "bytes_on_disk": 400, "tokens_per_s": 12.0}


def register_tiny(params, tmp_path: Path, model_dir: Path, **extra) -> dict:
    """register_result for a made-up Wanda result on the capital task (tracking tests)."""
    from taskprune.tracking import register_result

    kwargs = dict(params=params, state_dir=tmp_path, task_label="capital",
                  metrics={"task": "capital", "method": "wanda", "dense": SIDE, "pruned": SIDE, "run_seconds": 1.0},
                  per_matrix=per_matrix_of({"0.mlp.up_proj": 0.5}), stage_records={}, model_dir=model_dir, artifacts=[],
                  lineage_tags={})
    return register_result(**{**kwargs, **extra})
