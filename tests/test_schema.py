import json

import pytest

from taskprune.data import builtin
from taskprune.data.schema import Example, parse_jsonl, split
from taskprune.errors import TaskPruneError

GOOD = {"query": "2+2 =", "choices": ["3", "4"], "gold": 1}


def rows(*objs) -> bytes:
    return "\n".join(o if isinstance(o, str) else json.dumps(o) for o in objs).encode()


@pytest.mark.parametrize("data, message", [
    (b"", r"t\.jsonl: file is empty"),
    (rows(GOOD, "{not json"), r"t\.jsonl:2: not valid JSON.*truncated"),
    (rows("[1, 2]"), r"t\.jsonl:1: expected a JSON object"),
    (rows({"query": "q", "choices": ["a", "b"]}), r"t\.jsonl:1: missing field\(s\) gold"),
    (rows(GOOD, {"query": "q", "choices": ["a", "b"], "gold": 2}), r"t\.jsonl:2: field 'gold' is 2, out of range"),
    (rows({"query": "q", "choices": [], "gold": 0}), r"t\.jsonl:1: field 'choices' needs at least 2"),
    (rows({"query": "q", "choices": ["a"], "gold": 0}), r"field 'choices' needs at least 2 options, got 1"),
    (rows({"query": "q", "choices": ["a", "a"], "gold": 0}), r"field 'choices' has duplicates"),
    (rows({"query": "q", "choices": "ab", "gold": 0}), r"field 'choices' must be a list"),
    (rows({"query": 3, "choices": ["a", "b"], "gold": 0}), r"field 'query' must be a non-empty string"),
    (rows({"query": "q", "choices": ["a", "b"], "gold": "1"}), r"field 'gold' must be an integer"),
    (rows({"query": "q", "choices": ["a", "b"], "gold": True}), r"field 'gold' must be an integer"),
    (rows(GOOD).replace(b"2+2", b"\xff\xfe"), r"t\.jsonl:1: not UTF-8"),
])
def test_bad_rows_name_file_line_and_field(data, message):
    with pytest.raises(TaskPruneError, match=message):
        parse_jsonl(data, "t.jsonl")


def test_huge_line_is_refused():
    big = {"query": "x" * 1_100_000, "choices": ["a", "b"], "gold": 0}
    with pytest.raises(TaskPruneError, match="longer than"):
        parse_jsonl(rows(big), "t.jsonl")


def test_good_rows_parse_with_ids_and_blank_lines():
    examples = parse_jsonl(rows(GOOD, "", dict(GOOD, id="x7")), "t.jsonl")
    assert [ex.id for ex in examples] == ["row1", "x7"]
    assert examples[0].calibration_text() == "2+2 = 4"


def test_split_is_deterministic_disjoint_and_keeps_groups():
    examples = builtin.capital(0)
    calib, _, test = split(examples, 0.3, seed=0)
    again_calib, _, _ = split(examples, 0.3, seed=0)
    assert [e.id for e in calib] == [e.id for e in again_calib]
    assert not {e.id for e in calib} & {e.id for e in test}
    assert not {e.group for e in calib} & {e.group for e in test}  # both directions of a pair together
    assert len(calib) + len(test) == len(examples)


@pytest.mark.parametrize("name", sorted(builtin.BUILTIN))
def test_builtin_tasks_have_300_test_examples_and_valid_rows(name):
    examples = builtin.generate(name, 0)
    _, _, test = split(examples, 0.3, 0)
    assert len(test) >= 300
    for ex in examples:
        assert 0 <= ex.gold < len(ex.choices) and len(set(ex.choices)) == len(ex.choices)
    assert [e.query for e in builtin.generate(name, 0)] == [e.query for e in examples]


def test_sentiment_is_balanced():
    labels = [ex.gold for ex in builtin.sentiment(0)]
    assert 0.4 < sum(labels) / len(labels) < 0.6


def test_unknown_builtin():
    with pytest.raises(TaskPruneError, match="unknown built-in task 'nope'"):
        builtin.generate("nope", 0)


def test_example_roundtrip():
    ex = Example("q", ["a", "b"], 1, "id1", "g")
    assert ex.to_row() == {"query": "q", "choices": ["a", "b"], "gold": 1, "id": "id1"}
