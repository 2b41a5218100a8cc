"""The task of a run: its examples (built-in or a JSONL file, local or on S3), its short name, and the
fingerprint of its source that tells whether a task file changed since prepare_data read it."""

from __future__ import annotations

import hashlib
import re
from pathlib import PurePosixPath

from taskprune.config import Params
from taskprune.data import builtin
from taskprune.data.schema import Example, parse_jsonl
from taskprune.paths import Project, read_json
from taskprune.sources import is_s3, read_bytes, s3_etag


def task_label(params: Params) -> str:
    """Short name of the task: the built-in name, or the task file's stem."""
    if not params.task.path:
        return params.task.name
    return re.sub(r"[^A-Za-z0-9_-]+", "-", PurePosixPath(params.task.path).stem).strip("-") or "task"


def source_fingerprint(params: Params, project: Project) -> str:
    """Identifies the task source's content: sha256 of a local file, ETag of an S3 object,
    or the built-in generator and seed."""
    if not params.task.path:
        return f"built-in:{params.task.name}:seed={params.task.seed}"
    if is_s3(params.task.path):
        return f"s3-etag:{s3_etag(params.task.path)}"
    return "sha256:" + hashlib.sha256(read_bytes(params.task.path, project.root)).hexdigest()


def recorded_fingerprint(project: Project) -> str | None:
    """The fingerprint stored by the last prepare_data run, if any."""
    info = project.data / "stage.json"
    return read_json(info).get("task_fingerprint") if info.exists() else None


def load_task(params: Params, project: Project) -> list[Example]:
    """All task examples, validated (a bad row raises with file and line)."""
    if params.task.path:
        return parse_jsonl(read_bytes(params.task.path, project.root), params.task.path)
    return builtin.generate(params.task.name, params.task.seed)
