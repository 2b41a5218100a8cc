"""The lm-eval path on a tiny model: the generated task YAML loads, runs batched, and counts right."""

import json

import pytest

from taskprune.data import builtin
from taskprune.data.schema import split, write_jsonl
from taskprune.evaluation import decode_tokens_per_s, perplexity, prior_corrected_accuracy, run_lm_eval, size_metrics
from taskprune.models.loading import load_local


@pytest.fixture(scope="module")
def eval_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    _, _, test = split(builtin.sentiment(0), 0.3, 0)
    write_jsonl(root / "test.jsonl", test[:40])
    with (root / "general.jsonl").open("w") as fh:
        for i in range(4):
            fh.write(json.dumps({"text": f"Document {i}. The old city by the river has many people."}) + "\n")
    return root


def test_lm_eval_on_tiny_model(tiny_llama_dir, eval_files):
    model, tokenizer, arch = load_local(tiny_llama_dir)
    result = run_lm_eval(model, tokenizer, eval_files / "test.jsonl", batch_size=16, limit=None, device="cpu")
    assert result["test_examples"] == 40 and len(result["items"]) == 40
    assert result["task_accuracy"] == pytest.approx(sum(result["items"].values()) / 40)
    assert 0 <= result["task_accuracy_prior_corrected"] <= 1  # sentiment: a fixed label set
    limited = run_lm_eval(model, tokenizer, eval_files / "test.jsonl", batch_size=16, limit=10, device="cpu")
    assert limited["test_examples"] == 10


def test_size_and_speed(tiny_llama_dir):
    model, tokenizer, arch = load_local(tiny_llama_dir)
    size = size_metrics(model, arch, tiny_llama_dir)
    assert size["params"] == sum(p.numel() for p in model.parameters())
    assert size["decoder_linear_params"] == 2 * (2 * 64 * 64 + 2 * 32 * 64 + 3 * 64 * 128)
    assert size["bytes_on_disk"] > 4 * size["params"] * 0.9
    assert decode_tokens_per_s(model, tokenizer, 8, "cpu", repeats=1) > 0


def test_decode_side_by_side_loads_each_model_for_its_timing_and_holds_one_at_a_time(tiny_llama_dir):
    """A loader instead of a model: called for each of its rounds, the model released after its timing, so the
    frontier never holds the point and dense together for timing; rounds still alternate."""
    import weakref

    from taskprune.evaluation.size import decode_side_by_side, paired_decode

    tokenizer = load_local(tiny_llama_dir)[1]
    alive, order = [], []

    def loader(label):
        def load():
            assert not [ref for ref in alive if ref() is not None], "another model still in memory"
            order.append(label)
            model = load_local(tiny_llama_dir)[0]
            alive.append(weakref.ref(model))
            return model
        return load

    times = decode_side_by_side({"model": loader("model"), "dense": loader("dense")}, tokenizer, 4, "cpu", 3)
    assert order == ["model", "dense"] * 3 and all(len(v) == 3 and min(v) > 0 for v in times.values())
    assert not [ref for ref in alive if ref() is not None]
    held = load_local(tiny_llama_dir)[0]  # a model as such is used as it is, and kept
    result = paired_decode(held, loader("dense"), tokenizer, 4, "cpu", 2)
    assert result["rounds"] == 2 and result["speedup"] > 0 and order[-2:] == ["dense", "dense"]


def test_perplexity_matches_the_model_loss(tiny_llama_dir):
    """Token-level perplexity equals exp of the mean next-token loss that transformers computes."""
    import math

    import torch

    from taskprune.data.tokens import token_blocks

    model, tokenizer, _ = load_local(tiny_llama_dir)
    texts = [f"Document {i}. The old city by the river has many people and a long history." for i in range(20)]
    result = perplexity(model, tokenizer, texts, seq_len=32, batch_size=3, device="cpu")
    blocks = token_blocks(tokenizer, texts, 32, 1_000_000)
    with torch.no_grad():
        loss = model(blocks, labels=blocks).loss.item()
    assert result["perplexity_tokens"] == blocks.shape[0] * 31
    assert result["perplexity"] == pytest.approx(math.exp(loss), rel=1e-4)
    assert 1.0 < result["perplexity"] < len(tokenizer) * 10


def test_prior_correction_removes_a_label_lean():
    # A model that scores "negative" 2 nats higher everywhere, but still ranks the items right
    # once that lean is removed: raw accuracy 0.5, prior-corrected 1.0.
    labels = ["positive", "negative"]
    scored = []
    for gold in [0, 1] * 10:
        signal = 0.5 if gold == 0 else -0.5
        scored.append((labels, [signal, -signal + 2.0], gold))
    raw = sum(int(max(range(2), key=lls.__getitem__) == gold) for _, lls, gold in scored) / len(scored)
    assert raw == 0.5
    assert prior_corrected_accuracy(scored) == 1.0
    open_choices = [([f"city{i}", f"city{i + 100}"], [0.0, -1.0], 0) for i in range(40)]
    assert prior_corrected_accuracy(open_choices) is None  # no fixed label set: not defined


def test_layer_drift_is_zero_until_the_first_changed_layer_and_follows_removed_layers(tiny_llama_dir, eval_files):
    import torch

    from taskprune.data.schema import read_jsonl
    from taskprune.data.texts import read_texts
    from taskprune.evaluation.drift import drift_sequences, kept_positions, layer_drift

    dense, tokenizer, arch = load_local(tiny_llama_dir)
    model = load_local(tiny_llama_dir)[0]
    sequences = drift_sequences(tokenizer, read_jsonl(eval_files / "test.jsonl"), read_texts(eval_files / "general.jsonl"))
    assert len(sequences["task"]) == 8 and len(sequences["general"]) == 4
    same = layer_drift(model, arch.layers(model), dense, arch.layers(dense), sequences, "cpu")
    assert same["texts"] == {"task": 8, "general": 4}
    assert [row["layer"] for row in same["layers"]] == [0, 1]
    assert all(row[kind] == 0 for row in same["layers"] for kind in ("task", "general"))

    with torch.no_grad():  # change the second layer only: the first stays exact, the second departs
        arch.weight(arch.linears(arch.layers(model)[1])["mlp.down_proj"]).mul_(0.5)
    changed = layer_drift(model, arch.layers(model), dense, arch.layers(dense), sequences, "cpu")
    assert changed["layers"][0]["task"] == 0 and changed["layers"][1]["task"] > 0.01
    assert changed["layers"][1]["general"] > 0.01

    assert kept_positions(3, [0]) == [None, 0, 1] and kept_positions(3, [1]) == [0, 0, 1]
    shallow = load_local(tiny_llama_dir)[0]
    del arch.layers(shallow)[1]  # the last layer removed: after layer 1 it still carries layer 0's state
    removed = layer_drift(shallow, arch.layers(shallow), dense, arch.layers(dense), sequences, "cpu", removed=[1])
    assert removed["layers"][0]["task"] == 0 and removed["layers"][1]["task"] > 0.01
