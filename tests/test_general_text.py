"""General text sources: file, hub dataset (stubbed: no network here) and the held-out split."""

import pytest

from taskprune.config import GeneralTextConfig
from taskprune.data import general
from taskprune.errors import TaskPruneError


def test_file_source_splits_paragraphs(tmp_path):
    (tmp_path / "g.txt").write_text("First paragraph\nstill first.\n\nSecond.\n\n\nThird.\n\nFourth.\n")
    passages = general.load_passages(GeneralTextConfig(source="file", path="g.txt"), tmp_path, tmp_path)
    assert passages == ["First paragraph\nstill first.", "Second.", "Third.", "Fourth."]


def test_file_source_errors(tmp_path):
    with pytest.raises(TaskPruneError, match="nope.txt: file not found"):
        general.load_passages(GeneralTextConfig(source="file", path="nope.txt"), tmp_path, tmp_path)
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(TaskPruneError, match="not UTF-8"):
        general.load_passages(GeneralTextConfig(source="file", path="bin.txt"), tmp_path, tmp_path)


def test_dataset_source_reads_the_text_field(monkeypatch, tmp_path):
    import datasets

    calls = {}

    def fake_load_dataset(name, config, split):
        calls.update(name=name, config=config, split=split)
        return datasets.Dataset.from_dict({"text": ["a b c", "", "d e f", "g h", "i j"], "other": [1, 2, 3, 4, 5]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    cfg = GeneralTextConfig(source="dataset", dataset="wikitext", dataset_config="wikitext-2-raw-v1")
    assert general.load_passages(cfg, tmp_path, tmp_path) == ["a b c", "d e f", "g h", "i j"]
    assert calls == {"name": "wikitext", "config": "wikitext-2-raw-v1", "split": "train"}
    with pytest.raises(TaskPruneError, match="text_field 'body' is not a column"):
        general.load_passages(cfg.model_copy(update={"text_field": "body"}), tmp_path, tmp_path)


def test_held_out_documents_are_disjoint_and_long_enough():
    passages = [f"Passage number {i} " * 8 for i in range(400)]
    pool, held_out = general.split_general(passages, seed=0, eval_docs=10)
    assert len(held_out) == 10 and all(len(doc) >= general.MIN_EVAL_DOC_CHARS for doc in held_out)
    used = {p for doc in held_out for p in doc.split("\n\n")}
    assert not used & set(pool)
    assert general.split_general(passages, seed=0, eval_docs=10) == (pool, held_out)
