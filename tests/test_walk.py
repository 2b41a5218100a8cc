"""The layer walk gives every decoder layer exactly the inputs the model's own forward gives it: the hidden
states, and its own rotary table and mask where layer types differ (Gemma-3's sliding and full attention,
Qwen2 with sliding-window layers). BOS: blocks and perplexity start the way the tokenizer starts a text."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import make_tiny_model
from taskprune.calibration import sequential_layers
from taskprune.data.tokens import text_prefix, token_blocks
from taskprune.evaluation import perplexity
from taskprune.models.loading import load_local


def forward_inputs(model, arch, ids):
    """What each decoder layer receives and returns in one whole-model forward (forward hooks)."""
    seen = {}

    def hook(index):
        def record(_module, args, kwargs, output):
            hidden = args[0] if args else kwargs["hidden_states"]
            seen[index] = (hidden.clone(), kwargs, output[0] if isinstance(output, tuple) else output)
        return record

    handles = [layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(arch.layers(model))]
    with torch.no_grad():
        model(ids, use_cache=False)
    for handle in handles:
        handle.remove()
    return seen


@pytest.mark.parametrize("arch_name", ["llama", "qwen2-sliding", "gemma3"])
def test_each_layer_gets_the_inputs_of_the_models_own_forward(arch_name, tokenizer_dir, tmp_path):
    model, _, arch = load_local(make_tiny_model(arch_name, tokenizer_dir, tmp_path / arch_name))
    ids = torch.randint(3, 500, (2, 24), generator=torch.Generator().manual_seed(0))
    expected = forward_inputs(model, arch, ids)
    for step in sequential_layers(model, arch, {"x": ids}, batch_size=2, device="cpu", desc="walk"):
        (args, kwargs), = step.inputs["x"]
        hidden, want_kwargs, want_out = expected[step.index]
        assert torch.allclose(args[0] if args else kwargs["hidden_states"], hidden, atol=1e-5), step.index
        cos, sin = kwargs["position_embeddings"]
        want_cos, want_sin = want_kwargs["position_embeddings"]
        assert torch.equal(cos, want_cos) and torch.equal(sin, want_sin), f"layer {step.index}: rotary table"
        mask, want_mask = kwargs.get("attention_mask"), want_kwargs.get("attention_mask")
        assert (mask is None and want_mask is None) or torch.equal(mask, want_mask), f"layer {step.index}: mask"
        step.run("x")
        assert torch.allclose(step.outputs["x"][0], want_out, atol=1e-5), f"layer {step.index}: output"


def test_layer_types_really_differ_in_the_tiny_gemma(tokenizer_dir, tmp_path):
    """The check above would pass on layer 0's inputs reused if the types did not differ."""
    model, _, arch = load_local(make_tiny_model("gemma3", tokenizer_dir, tmp_path / "g"))
    ids = torch.randint(3, 500, (1, 24), generator=torch.Generator().manual_seed(1))
    seen = forward_inputs(model, arch, ids)
    assert not torch.equal(seen[0][1]["position_embeddings"][0], seen[1][1]["position_embeddings"][0])
    sliding, full = seen[0][1]["attention_mask"], seen[1][1]["attention_mask"]
    assert sliding is not None and (full is None or not torch.equal(sliding, full))


def test_blocks_start_with_bos_where_the_tokenizer_adds_one(tokenizer_dir, tmp_path):
    from transformers import AutoTokenizer

    plain = AutoTokenizer.from_pretrained(tokenizer_dir)
    bos = AutoTokenizer.from_pretrained(make_tiny_model("gemma3", tokenizer_dir, tmp_path / "g"))
    text = ["The history of the old city begins with a small village by the river."] * 8
    assert text_prefix(plain) == [] and text_prefix(bos) == [bos.bos_token_id]
    plain_blocks, bos_blocks = token_blocks(plain, text, 16, 4), token_blocks(bos, text, 16, 4)
    assert plain_blocks.shape == bos_blocks.shape == (4, 16)
    assert (bos_blocks[:, 0] == bos.bos_token_id).all()
    assert torch.equal(bos_blocks[0, 1:], plain_blocks.flatten()[:15])  # then the same text, one token shorter


def test_perplexity_on_a_bos_model_is_the_models_own_loss_with_bos(tokenizer_dir, tmp_path):
    model, tokenizer, _ = load_local(make_tiny_model("gemma3", tokenizer_dir, tmp_path / "g"))
    text = ["The history of the old city begins with a small village by the river, and the river is old."]
    got = perplexity(model, tokenizer, text, seq_len=16, batch_size=4, device="cpu")
    blocks = token_blocks(tokenizer, text, 16, 1_000_000)
    with torch.no_grad():
        losses = [model(block[None], labels=block[None]).loss.item() for block in blocks]  # HF shifts: BOS not a target
    assert got["perplexity"] == pytest.approx(math.exp(sum(losses) / len(losses)), rel=1e-4)
    assert got["perplexity_tokens"] == blocks.numel() - len(blocks)
