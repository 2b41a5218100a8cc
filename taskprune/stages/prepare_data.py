"""prepare_data: task examples split into calibration/test, general text split into calibration/evaluation."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import PurePosixPath

from taskprune.config import Params
from taskprune.data import builtin, general
from taskprune.data.schema import Example, parse_jsonl, split, write_jsonl
from taskprune.paths import Project, StageTimer, atomic_dir, read_json, write_json
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


def write_texts(path, texts: list[str]) -> None:
    """Texts as JSONL rows ``{"text": ...}`` (general calibration pool, held-out documents)."""
    with path.open("w", encoding="utf-8") as fh:
        for text in texts:
            fh.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")


def read_texts(path) -> list[str]:
    """The texts that ``write_texts`` wrote."""
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line)["text"] for line in fh]


def run(params: Params, project: Project) -> None:
    timer = StageTimer(project, "prepare_data")
    examples = load_task(params, project)
    calib, test = split(examples, params.task.calib_fraction, params.task.seed)
    passages = general.load_passages(params.calibration.general, project.root, project.downloads)
    pool, eval_docs = general.split_general(passages, params.calibration.seed, params.evaluate.perplexity_docs)
    chance = sum(1 / len(ex.choices) for ex in test) / len(test)
    with atomic_dir(project.data) as out:
        write_jsonl(out / "task_calib.jsonl", calib)
        write_jsonl(out / "task_test.jsonl", test)
        write_texts(out / "general_calib.jsonl", pool)
        write_texts(out / "general_eval.jsonl", eval_docs)
        write_json(out / "stage.json", dict(
            task=task_label(params), task_source=params.task.path or f"built-in:{params.task.name}",
            task_fingerprint=source_fingerprint(params, project),
            calib_examples=len(calib), test_examples=len(test), chance_accuracy=round(chance, 6),
            general_source=params.calibration.general.source, general_passages=len(pool), general_eval_docs=len(eval_docs)))
    timer.done()
    print(f"task {task_label(params)}: {len(calib)} calibration / {len(test)} test examples "
          f"(chance {chance:.3f}); general text: {len(pool)} passages, {len(eval_docs)} held-out documents")
