"""`taskprune init DIR`: a new project directory (params.yaml, dvc.yaml, git and DVC initialised).

The template is the code checkout's own project files, so a new project starts from the
defaults this version of TaskPrune was tested with. Recurring deployments use it to give
each deployment its own project (its own params.yaml, DVC cache and MLflow store).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from taskprune.errors import TaskPruneError

CODE_ROOT = Path(__file__).resolve().parents[1]
PROJECT_FILES = ("params.yaml", "dvc.yaml", ".gitignore", ".dvcignore")


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True)


def init_project(root: Path, overrides: list[str] | None = None, *, template: Path = CODE_ROOT) -> Path:
    """Create a project at ``root`` (which must not hold one yet), apply ``key=value`` overrides to its
    params.yaml, and commit it; returns the root."""
    from taskprune import config

    missing = [name for name in PROJECT_FILES[:2] if not (template / name).is_file()]
    if missing:
        raise TaskPruneError(f"{template}: no {' or '.join(missing)} to copy; `taskprune init` needs a checkout of "
                             "the TaskPrune repository (pip install -e .)")
    if (root / "dvc.yaml").exists() or (root / "params.yaml").exists():
        raise TaskPruneError(f"{root}: already a project (params.yaml or dvc.yaml exists)")
    if overrides:
        config.load(template / "params.yaml", overrides)  # a typo fails before anything is written
    root.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        if (template / name).exists():
            shutil.copy(template / name, root / name)
    if overrides:
        config.write_overrides(root / "params.yaml", overrides)
    _git(root, "init", "-q")
    _git(root, "config", "user.email", "taskprune@localhost")  # dvc exp needs an identity; local to this repo
    _git(root, "config", "user.name", "TaskPrune")
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=root, check=True, capture_output=True)
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "TaskPrune project")
    return root
