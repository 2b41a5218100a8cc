"""Plain texts as JSONL rows ``{"text": ...}`` (the general calibration pool, held-out documents)."""

from __future__ import annotations

import json


def write_texts(path, texts: list[str]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for text in texts:
            fh.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")


def read_texts(path) -> list[str]:
    """The texts that ``write_texts`` wrote."""
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line)["text"] for line in fh]
