"""Where a project's files live. Every stage reads and writes through these names."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from taskprune.errors import TaskPruneError


@dataclass(frozen=True)
class Project:
    root: Path

    @property
    def mask_dir(self) -> Path:
        """The masks the model is pruned with: the search's per-matrix allocation when it made one."""
        return self.search if (self.search / "masks.json").is_file() else self.masks

    @classmethod
    def find(cls, start: Path | None = None) -> Project:
        """The nearest directory holding params.yaml ($TASKPRUNE_PROJECT wins)."""
        env = os.environ.get("TASKPRUNE_PROJECT")
        if env:
            return cls(Path(env).resolve())
        here = (start or Path.cwd()).resolve()
        for candidate in (here, *here.parents):
            if (candidate / "params.yaml").is_file():
                return cls(candidate)
        raise TaskPruneError(f"no params.yaml in {here} or its parents: run inside a TaskPrune project")

    params_file = property(lambda self: self.root / "params.yaml")
    state = property(lambda self: self.root / ".taskprune")  # git-ignored: caches, stores, homes
    artifacts = property(lambda self: self.root / "artifacts")
    eval_dir = property(lambda self: self.artifacts / "eval")
    dvc_lock = property(lambda self: self.root / "dvc.lock")
    downloads = property(lambda self: self.state / "downloads")
    timings = property(lambda self: self.state / "timings")

    def path(self, artifact: str) -> Path:
        """The path of a stage output named in ``ARTIFACTS``."""
        return self.root / ARTIFACTS[artifact]

    def eval_file(self, which: str) -> Path:
        """The evaluation record of the dense, pruned or recovered model."""
        return self.path(f"eval_{which}")

    def code_file(self, stage: str) -> Path:
        """The code version a stage depends on (written by the code_version stage)."""
        return self.path("code") / f"{stage}.json"


def _artifact(name: str) -> property:
    return property(lambda self: self.path(name), doc=ARTIFACTS[name])


# Every stage output, by name: the pipeline table (taskprune/pipeline.py) and dvc.yaml use these names.
ARTIFACTS = {
    "code": "artifacts/code",
    "dense_model": "artifacts/model/dense",
    "data": "artifacts/data",
    "stats": "artifacts/stats",
    "moments": "artifacts/moments",            # input second moments per linear (LLM-Sieve)
    "masks": "artifacts/masks",
    "updates": "artifacts/updates",            # updated weights (SparseGPT) or factors (LLM-Sieve)
    "search": "artifacts/search",              # per-matrix allocation from the genetic search
    "frontier": "artifacts/frontier",          # target mode: every level tried per method, and the choice
    "pruned_model": "artifacts/model/pruned",
    "eval_dense": "artifacts/eval/dense.json",
    "eval_pruned": "artifacts/eval/pruned.json",
    "recovered_model": "artifacts/model/recovered",
    "eval_recovered": "artifacts/eval/recovered.json",
    "metrics": "metrics.json",
    "summary": "summary.json",                 # the few numbers `dvc metrics show` / `dvc exp show` compare
    "layer_plot": "artifacts/plots/per_layer.json",  # `dvc plots show`: the pruned model per decoder layer
    "registration": "artifacts/register.json",
}
for _name in ARTIFACTS:
    setattr(Project, _name, _artifact(_name))

LORA_DIR = "adapter"  # in a recovered model directory saved with recover.merge: false: the LoRA adapter


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a fresh temporary directory that replaces ``target`` only if the block succeeds."""
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(target)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def _remove_leftovers(target: Path) -> None:
    """Temporary siblings of ``target`` left by a process that was killed (kill -9, power loss)."""
    for leftover in target.parent.glob(f".{target.name}.*-*"):
        pid = leftover.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temporary file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def fingerprint(*parts: bytes) -> str:
    """A short hash of several byte strings (names checkpoint directories after their inputs)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()[:16]


class StageTimer:
    """Measures a stage's wall time and keeps it in ``.taskprune/timings/<stage>.json``.

    Timings stay out of DVC-tracked outputs, so re-running a stage on unchanged
    inputs produces byte-identical outputs and DVC skips everything downstream.
    """

    def __init__(self, project: Project, name: str):
        self.project, self.name = project, name
        self.start = time.perf_counter()

    def seconds(self) -> float:
        return round(time.perf_counter() - self.start, 2)

    def done(self, **extra: Any) -> dict:
        record = {"stage": self.name, "seconds": self.seconds(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                  "ended": round(time.time(), 3), **extra}  # ended: seconds since the epoch (MLflow run times)
        write_json(self.project.timings / f"{self.name}.json", record)
        return record


_HELD: dict[Path, int] = {}  # project lock file -> depth, for re-entry in one process (recurring -> pipeline)


@contextlib.contextmanager
def run_lock(project: Project) -> Iterator[None]:
    """One pipeline run at a time per project: a second one, from any process on this machine, stops at
    once with a clear message instead of interleaving its stages, params and registrations with the first."""
    from filelock import FileLock, Timeout

    path = (project.state / "locks" / "run.lock").resolve()
    if _HELD.get(path):
        _HELD[path] += 1
        try:
            yield
        finally:
            _HELD[path] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise TaskPruneError(f"{project.root}: another TaskPrune run is using this project (lock {path}); "
                             "wait for it to finish, or use another project directory (taskprune init)") from None
    _HELD[path] = 1
    try:
        yield
    finally:
        _HELD.pop(path, None)
        lock.release()


def stage_off(target: Path, timer: StageTimer) -> None:
    """A stage these settings turn off: its output is a stage.json saying so (later stages read it)."""
    with atomic_dir(target) as out:
        write_json(out / "stage.json", {"enabled": False})
    timer.done(enabled=False)
