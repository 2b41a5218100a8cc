"""LLM-Sieve low-rank factors: the algebra, the factorized module, export and reload."""

from __future__ import annotations

import pytest
import torch

from taskprune.lowrank import (FactorizedLinear, factorize_model, level_fractions, load_factorized, mixed_moment,
                               output_error, params_at, rank_for_fraction, save_factorized, whitened_factors)
from taskprune.models.loading import load_local


def correlated_layer(d_out=48, d_in=64, tokens=4000, seed=0):
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(d_out, d_in, generator=gen)
    mixing = torch.randn(d_in, d_in, generator=gen) * torch.logspace(0, -2, d_in)  # strongly correlated inputs
    x = torch.randn(tokens, d_in, generator=gen) @ mixing
    return weight, x.T @ x


def test_full_rank_reproduces_the_weight_and_error_falls_with_rank():
    weight, h = correlated_layer()
    factors = whitened_factors(weight, h, damp=1e-6)
    up, down = factors.at_rank(48)
    assert torch.allclose(up @ down, weight, atol=1e-3)
    assert output_error(weight, up @ down, h) < 1e-8
    errors = [output_error(weight, torch.matmul(*factors.at_rank(r)), h) for r in range(1, 49, 4)]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    # the closed-form accounting (energy beyond r) is the measured error
    assert factors.relative_error(8) == pytest.approx(output_error(weight, torch.matmul(*factors.at_rank(8)), h),
                                                      rel=1e-3)


@pytest.mark.parametrize("rank", [4, 8, 16, 32])
def test_output_aware_factors_beat_plain_svd_on_correlated_inputs(rank):
    weight, h = correlated_layer()
    aware = torch.matmul(*whitened_factors(weight, h, damp=1e-6).at_rank(rank))
    plain = torch.matmul(*whitened_factors(weight, None).at_rank(rank))
    assert output_error(weight, aware, h) < 0.7 * output_error(weight, plain, h)


def test_nested_truncations_share_one_decomposition():
    weight, h = correlated_layer()
    full = whitened_factors(weight, h)
    short = whitened_factors(weight, h, max_rank=10)
    assert torch.allclose(full.at_rank(10)[0], short.at_rank(10)[0]) and short.up.shape[1] == 10


def test_levels_pay_and_hit_the_target_exactly():
    assert level_fractions(10, 0.4) == pytest.approx([1 - k / 10 for k in range(10)])
    fractions = level_fractions(10, 0.35)
    assert 0.65 in [round(f, 10) for f in fractions] and fractions[0] == 1.0 and min(fractions) > 0
    for d_out, d_in in [(576, 576), (1536, 576), (192, 576)]:
        assert rank_for_fraction(d_out, d_in, 1.0) is None
        for fraction in fractions[1:]:
            rank = rank_for_fraction(d_out, d_in, fraction)
            assert params_at(d_out, d_in, rank) < d_out * d_in  # a factorisation only where it pays
            assert params_at(d_out, d_in, rank) == pytest.approx(fraction * d_out * d_in, rel=0.02)


def test_mixed_moment_weights_normalised_sides():
    g, t = torch.eye(3) * 100.0, torch.diag(torch.tensor([1.0, 2.0, 3.0]))
    assert torch.allclose(mixed_moment(g, t, 0.0), t.double() / 2)
    assert torch.allclose(mixed_moment(g, t, 1.0), torch.eye(3, dtype=torch.float64))


def test_factorized_linear_runs_its_factors():
    up, down, bias = torch.randn(5, 3), torch.randn(3, 7), torch.randn(5)
    module = FactorizedLinear.from_factors(up, down, bias)
    x = torch.randn(2, 7)
    assert torch.allclose(module(x), x @ (up @ down).T + bias, atol=1e-5)
    assert sum(p.numel() for p in module.parameters() if p.dim() == 2) == 3 * (5 + 7)


def _factors_for(model, arch):
    factors = {}
    for key, module in arch.named_linears(model).items():
        weight = arch.weight(module)
        factors[key] = whitened_factors(weight, torch.eye(weight.shape[1]))
    return factors


def test_export_reloads_and_matches_the_in_memory_model(tiny_model_dir, tmp_path):
    """Every architecture: factorize half the matrices, save, rebuild with transformers, same logits, generate."""
    import taskprune

    model, tokenizer, arch = load_local(tiny_model_dir)
    keys = list(arch.named_linears(model))
    ranks = {key: (8 if i % 2 == 0 else None) for i, key in enumerate(keys)}
    saved = factorize_model(model, arch, _factors_for(model, arch), ranks)
    assert len(saved) == (len(keys) + 1) // 2
    save_factorized(model, tokenizer, saved, tmp_path / "out")
    ids = torch.tensor([[1, 5, 9, 14, 3, 7]])
    with torch.no_grad():
        expected = model(ids).logits
        reloaded, tokenizer2 = taskprune.load(tmp_path / "out")
        assert torch.allclose(reloaded(ids).logits, expected, atol=1e-5)
    assert isinstance(reloaded.get_submodule(next(iter(saved))), FactorizedLinear)
    out = reloaded.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=tokenizer2.pad_token_id)
    assert out.shape[1] == ids.shape[1] + 3
    dense_bytes = sum(f.stat().st_size for f in tiny_model_dir.glob("*.safetensors"))
    assert sum(f.stat().st_size for f in (tmp_path / "out").glob("*.safetensors")) < dense_bytes


def test_reload_refuses_weights_that_do_not_match_the_ranks(tiny_llama_dir, tmp_path):
    import json

    model, tokenizer, arch = load_local(tiny_llama_dir)
    key = next(iter(arch.named_linears(model)))
    saved = factorize_model(model, arch, _factors_for(model, arch), {key: 4})
    save_factorized(model, tokenizer, saved, tmp_path)
    spec = json.loads((tmp_path / "lowrank.json").read_text())
    spec["ranks"] = {path: 6 for path in spec["ranks"]}
    (tmp_path / "lowrank.json").write_text(json.dumps(spec))
    with pytest.raises(Exception, match="size mismatch|do not match"):
        load_factorized(tmp_path)
