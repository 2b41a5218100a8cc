"""The task format: JSONL rows of ``{"query": str, "choices": [str, ...], "gold": int}``.

Validation reads the whole file and stops at the first bad row with a message
that names the file, the line and the field.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

from taskprune.errors import TaskPruneError

MAX_LINE_BYTES = 1_000_000
EXPECTED = 'one JSON object per line: {"query": str, "choices": [str, ...], "gold": int}'


@dataclass
class Example:
    query: str
    choices: list[str]
    gold: int
    id: str = ""
    group: str = field(default="", repr=False)  # rows of one group land on the same side of the split

    def calibration_text(self) -> str:
        """The text a calibration pass sees: the prompt followed by its right answer."""
        return f"{self.query} {self.choices[self.gold]}"

    def to_row(self) -> dict:
        row = asdict(self)
        row.pop("group")
        return row


def _check_row(obj: object, where: str) -> Example:
    if not isinstance(obj, dict):
        raise TaskPruneError(f"{where}: expected a JSON object, got {type(obj).__name__}. Expected {EXPECTED}")
    missing = [k for k in ("query", "choices", "gold") if k not in obj]
    if missing:
        raise TaskPruneError(f"{where}: missing field(s) {', '.join(missing)}. Expected {EXPECTED}")
    query, choices, gold = obj["query"], obj["choices"], obj["gold"]
    if not isinstance(query, str) or not query.strip():
        raise TaskPruneError(f"{where}: field 'query' must be a non-empty string, got {query!r:.80}")
    if not isinstance(choices, list) or not all(isinstance(c, str) and c.strip() for c in choices):
        raise TaskPruneError(f"{where}: field 'choices' must be a list of non-empty strings, got {choices!r:.80}")
    if len(choices) < 2:
        raise TaskPruneError(f"{where}: field 'choices' needs at least 2 options, got {len(choices)}")
    if len(set(choices)) != len(choices):
        raise TaskPruneError(f"{where}: field 'choices' has duplicates: {choices!r:.120}")
    if isinstance(gold, bool) or not isinstance(gold, int):
        raise TaskPruneError(f"{where}: field 'gold' must be an integer index into 'choices', got {gold!r:.40}")
    if not 0 <= gold < len(choices):
        raise TaskPruneError(f"{where}: field 'gold' is {gold}, out of range for {len(choices)} choices (0..{len(choices) - 1})")
    return Example(query=query, choices=list(choices), gold=gold, id=str(obj.get("id", "")))


def parse_jsonl(data: bytes, source: str) -> list[Example]:
    """Validate task JSONL bytes; ``source`` names the file in every message."""
    if not data.strip():
        raise TaskPruneError(f"{source}: file is empty. Expected {EXPECTED}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise TaskPruneError(f"{source}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x}); save the file as UTF-8") from None
    lines = text.splitlines()
    examples = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{source}:{number}"
        if len(line.encode("utf-8")) > MAX_LINE_BYTES:
            raise TaskPruneError(f"{where}: line is longer than {MAX_LINE_BYTES} bytes; is this really a task file?")
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            hint = " (the file looks truncated)" if number == len(lines) else ""
            raise TaskPruneError(f"{where}: not valid JSON at column {exc.colno}: {exc.msg.removesuffix(' at')}{hint}. Expected {EXPECTED}") from None
        example = _check_row(obj, where)
        example.id = example.id or f"row{number}"
        examples.append(example)
    return examples


def split(examples: list[Example], calib_fraction: float, seed: int,
          validation_fraction: float = 0.0) -> tuple[list[Example], list[Example], list[Example]]:
    """Deterministic calibration/validation/test split; rows sharing a ``group`` stay together. The groups are
    shuffled once: calibration takes the first share, validation the next (none when its fraction is 0, which
    leaves the calibration/test split as it was before validation existed), test the rest."""
    groups = sorted({ex.group or ex.id for ex in examples})
    random.Random(seed).shuffle(groups)
    n_calib = max(1, round(len(groups) * calib_fraction))
    n_val = max(1, round(len(groups) * validation_fraction)) if validation_fraction > 0 else 0
    if n_calib + n_val >= len(groups):
        parts = "calibration, validation and test" if n_val else "calibration and test"
        raise TaskPruneError(f"task has {len(examples)} examples: too few to split into {parts}")
    side = {group: 0 for group in groups[:n_calib]} | {group: 1 for group in groups[n_calib:n_calib + n_val]}
    parts: tuple[list[Example], list[Example], list[Example]] = ([], [], [])
    for ex in examples:
        parts[side.get(ex.group or ex.id, 2)].append(ex)
    return parts


def write_jsonl(path: Path, examples: list[Example]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for ex in examples:
            fh.write(json.dumps(ex.to_row(), ensure_ascii=False) + "\n")


def read_jsonl(path: Path) -> list[Example]:
    return parse_jsonl(path.read_bytes(), str(path))
