"""Faults: kill -9 in the middle of calibration, the search and LoRA recovery, then run again: the
stage restarts cleanly (calibration) or resumes from its checkpoint (search, recovery) and ends with
exactly the result of an uninterrupted run. Two pipeline runs at once on one project: one runs, the
other is refused at once with a clear message. (Slow: about 4 minutes.)"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import make_project, make_tiny_model, write_general_text
from pipeline_helpers import cli_env, configure_tiny, dvc, taskprune
from taskprune import config
from taskprune.data import builtin
from taskprune.pipeline import STAGES

pytestmark = pytest.mark.slow
TASKPRUNE = str(Path(sys.executable).parent / "taskprune")


@pytest.fixture
def project(tmp_path, tokenizer_dir):
    root = make_project(tmp_path / "project")
    model = make_tiny_model("llama", tokenizer_dir, tmp_path / "model")
    configure_tiny(root, model, [ex.to_row() for ex in builtin.sentiment(0)[:80]],
                   write_general_text(tmp_path / "general.txt"))
    return root


def tree_hash(path: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file() and p.name != "stage.json"):
        digest.update(file.relative_to(path).as_posix().encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()


def kill_when(project: Path, args: list[str], ready, timeout: float = 300) -> None:
    """Start ``taskprune ...`` and SIGKILL its whole process group once ``ready()`` is true."""
    process = subprocess.Popen([TASKPRUNE, *args], cwd=project, env=cli_env(project), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, f"{args} ended (exit {process.returncode}) before the kill point"
        assert time.monotonic() < deadline, "kill point never reached"
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    assert process.wait(30) == -signal.SIGKILL


def stage(project: Path, name: str) -> subprocess.CompletedProcess:
    done = taskprune(project, "stage", name)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


def test_kill_during_calibration_restarts_cleanly_with_the_same_statistics(project):
    config.write_overrides(project / "params.yaml", ["calibration.num_samples=48", "calibration.seq_len=64"])
    for name in ("fetch_model", "prepare_data", "calibrate"):
        stage(project, name)
    expected = tree_hash(project / "artifacts" / "stats")
    shutil.rmtree(project / "artifacts" / "stats")
    started = time.monotonic()
    kill_when(project, ["stage", "calibrate"], lambda: any((project / "artifacts").glob(".stats.tmp-*"))
              or time.monotonic() - started > 3.0)
    assert not (project / "artifacts" / "stats").exists()  # nothing half-written where the output goes
    stage(project, "calibrate")
    assert tree_hash(project / "artifacts" / "stats") == expected
    assert not list((project / "artifacts").glob(".stats.*"))  # the killed run's temporary output is gone


def test_kill_during_search_resumes_from_the_last_generation_with_the_same_result(project):
    config.write_overrides(project / "params.yaml", [
        "prune.method=sieve", "prune.allocation=search", "search.population=8", "search.generations=25",
        "search.examples=16"])
    for name in ("fetch_model", "prepare_data", "calibrate", "score", "search"):
        stage(project, name)
    expected = json.loads((project / "artifacts" / "search" / "allocation.json").read_text())
    shutil.rmtree(project / "artifacts" / "search")
    checkpoints = project / ".taskprune" / "checkpoints"
    kill_when(project, ["stage", "search"], lambda: any(checkpoints.glob("search-*/generation.pkl")))
    stage(project, "search")
    resumed = json.loads((project / "artifacts" / "search" / "allocation.json").read_text())
    assert 1 <= resumed["resumed_from"] < 25
    assert resumed["levels"] == expected["levels"] and resumed["history"] == expected["history"]


def test_kill_during_recovery_resumes_from_its_checkpoint_with_the_same_model(project):
    config.write_overrides(project / "params.yaml", ["recover.enabled=true", "recover.steps=30",
                                                     "recover.checkpoint_every=3"])
    for name in ("fetch_model", "prepare_data", "calibrate", "score", "search", "prune", "recover"):
        stage(project, name)
    expected = tree_hash(project / "artifacts" / "model" / "recovered")
    shutil.rmtree(project / "artifacts" / "model" / "recovered")
    checkpoints = project / ".taskprune" / "checkpoints"
    kill_when(project, ["stage", "recover"], lambda: any(checkpoints.glob("recover-*/checkpoint.pt")))
    done = stage(project, "recover")
    assert "resum" in (done.stdout + done.stderr).lower()
    assert tree_hash(project / "artifacts" / "model" / "recovered") == expected


def test_two_runs_at_once_one_is_refused_and_the_other_registers_once(project):
    environment = cli_env(project)
    runs = [subprocess.Popen([TASKPRUNE, "run"], cwd=project, env=environment, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [run.communicate(timeout=900) for run in runs]
    codes = sorted(run.returncode for run in runs)
    assert codes == [0, 2], [o[1][-2000:] for o in outputs]
    refused = next(err for (out, err), run in zip(outputs, runs) if run.returncode == 2)
    assert "another TaskPrune run is using this project" in refused
    registered = json.loads((project / "artifacts" / "register.json").read_text())
    assert registered["version"] == "1"
    status = dvc(project, "status", "--json")
    always = {stage.name for stage in STAGES if stage.always_run}  # code_version: "always changed" by design
    assert status.returncode == 0 and set(json.loads(status.stdout)) <= always  # outputs consistent with dvc.lock
