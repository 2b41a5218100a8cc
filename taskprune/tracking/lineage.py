"""What a registered model came from: the git commit, the dvc.lock hashes of its data, statistics, masks
and search, the code version of every stage, and a key that names one pipeline result."""

from __future__ import annotations

import hashlib
import subprocess

import yaml

from taskprune.codeversion import code_version
from taskprune.paths import ARTIFACTS, Project, read_json
from taskprune.pipeline import WORK, producer

LINEAGE = {"data": "data", "stats": "stats", "masks": "masks", "search": "search"}  # tag label -> artifact


def git_commit(project: Project) -> str:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=project.root, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "HEAD") or "unknown"
    return commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def lineage_hashes(project: Project) -> dict[str, str]:
    """The ``dvc.lock`` hashes of the data, statistics, masks and search this model came from."""
    if not project.dvc_lock.exists():
        return {}
    lock = yaml.safe_load(project.dvc_lock.read_text(encoding="utf-8")) or {}
    hashes = {}
    for label, artifact in LINEAGE.items():
        for out in lock.get("stages", {}).get(producer(artifact).name, {}).get("outs", []):
            if out.get("path") == ARTIFACTS[artifact]:
                hashes[f"dvc.{label}_md5"] = out.get("md5", "")
    return hashes


def code_tags(project: Project) -> dict[str, str]:
    """The TaskPrune version and the code version (hash of every stage's code) that made this result."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        release = version("taskprune")
    except PackageNotFoundError:
        release = "unknown"
    records = [read_json(project.code_file(name)) for name in WORK if project.code_file(name).is_file()]
    return {"taskprune.version": release, "taskprune.code_version": code_version(records) if records else "unknown"}


def result_key(project: Project) -> str:
    """Names one pipeline result (its metrics and params), so registering it twice is noticed."""
    return hashlib.sha256(project.metrics.read_bytes() + b"\0" + project.params_file.read_bytes()).hexdigest()[:20]
