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


def test_a_relative_moment_factors_for_the_error_each_token_keeps_after_a_norm():
    """A norm after a linear divides each token's output by its RMS, so what a factorization changes there is each
    token's relative error. A few tokens with large outputs, from other directions (as a model's attention sinks),
    dominate the plain moment; factors from the relative moment leave far less of the error after the norm."""
    from taskprune.calibration.accumulators import RelativeMoment

    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(32, 48, generator=gen)
    few = torch.randn(100, 48, generator=gen) @ torch.randn(48, 48, generator=gen) * torch.logspace(0, -3, 48)
    x = torch.cat([30 * few, torch.randn(900, 48, generator=gen)])
    relative = RelativeMoment(48, None)
    relative.add(x, x @ weight.T)

    def error_after_norm(moment):
        factors = whitened_factors(weight, moment, 0.01)
        approx = factors.up[:, :12].double() @ factors.down[:12].double()
        delta, y = x.double() @ (weight.double() - approx).T, x.double() @ weight.double().T
        return float((delta.pow(2).mean(-1) / (y.pow(2).mean(-1) + 1e-6)).mean())

    assert error_after_norm(relative.sum) < 0.8 * error_after_norm(x.T @ x)  # 0.28 vs 0.40


def test_sieve_factors_come_from_both_moments_where_a_norm_follows(tokenizer_dir, tmp_path):
    """Gemma-3: the linears whose output a norm rescales (q, k, o, down) get factors from calibration's plain and
    relative moments (``key`` and ``key + RELATIVE``), the others (v, gate, up) from the plain ones only."""
    from conftest import make_tiny_model
    from taskprune.calibration import MomentWriter, collect_input_square_sums, load_moments
    from taskprune.calibration.accumulators import RELATIVE
    from taskprune.lowrank import sieve_factors

    model, tokenizer, arch = load_local(make_tiny_model("gemma3", tokenizer_dir, tmp_path / "gemma3"))
    ids = torch.randint(0, len(tokenizer), (4, 16), generator=torch.Generator().manual_seed(0))
    collect_input_square_sums(model, arch, ids, batch_size=4, moments=MomentWriter(tmp_path / "task", {}))
    moments = load_moments(tmp_path / "task")
    factors = sieve_factors(model, arch, {"task": moments}, 0.0, 0.01)
    linears = arch.named_linears(model)
    assert set(factors) == set(moments)
    assert {key.split(".", 1)[1] for key in factors if key not in linears} == {
        "self_attn.q_proj:relative", "self_attn.k_proj:relative", "self_attn.o_proj:relative", "mlp.down_proj:relative"}
    for which, made in factors.items():
        weight = arch.weight(linears[which.removesuffix(RELATIVE)])
        assert torch.equal(made.up, whitened_factors(weight, mixed_moment(None, moments[which], 0.0), 0.01,
                                                     max_rank=made.up.shape[1]).up), which
    key = next(k for k in linears if k + RELATIVE in factors)
    assert not torch.allclose(factors[key].up, factors[key + RELATIVE].up)  # the weighting changes them


@pytest.fixture(scope="module")
def sieve_gemma(tokenizer_dir, tmp_path_factory):
    """The stages on a tiny Gemma-3 with sieve at a uniform level (fixed-level mode)."""
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    import behaviour
    from conftest import make_tiny_model, write_general_text
    from taskprune.data import builtin
    from taskprune.paths import Project

    tmp = tmp_path_factory.mktemp("sieve-gemma")
    task = tmp / "task.jsonl"
    task.write_text("".join(json.dumps(ex.to_row()) + "\n" for ex in builtin.sentiment(0)[:80]))
    behaviour.run_config(tmp, "run", {"prune.method": "sieve", "search.target_reduction": 0.5},
                         make_tiny_model("gemma3", tokenizer_dir, tmp / "gemma3"), task,
                         write_general_text(tmp / "general.txt"))
    return Project(tmp / "run")


def test_sieve_keeps_the_moment_weighting_that_answers_more_calibration_rows(sieve_gemma):
    """Both weightings are scored on the calibration rows (lm-eval), the record (and the one-line description
    tables show) says which was kept, and the checkpoint holds that one's factors."""
    import json

    from taskprune.calibration.accumulators import RELATIVE
    from taskprune.lowrank import load_factors

    record = json.loads((sieve_gemma.pruned_model / "stage.json").read_text())
    accuracy = record["calibration_accuracy"]
    assert record["moment_weighting"] == ("token-weighted" if accuracy["token-weighted"] > accuracy["plain"]
                                          else "plain")
    assert record["compression"].endswith(f", {record['moment_weighting']} moments")  # tables and titles say it
    factors = load_factors(sieve_gemma.updates / "factors.safetensors")
    model, _, arch = load_local(sieve_gemma.pruned_model)
    suffix = RELATIVE if record["moment_weighting"] == "token-weighted" else ""
    checked = 0
    for key, module in arch.named_linears(model).items():
        if isinstance(module, FactorizedLinear):
            which = key + suffix if key + suffix in factors else key
            assert torch.equal(module.up.weight, factors[which].at_rank(module.rank)[0]), key
            checked += 1
    assert checked


@pytest.mark.parametrize("scores,kept", [((0.5, 0.75), "token-weighted"), ((0.75, 0.5), "plain"),
                                         ((0.5, 0.5), "plain")])
def test_the_weighting_choice_keeps_the_better_and_puts_the_plain_factors_back(sieve_gemma, monkeypatch, scores,
                                                                              kept):
    """The prune step's choice, with the calibration scores given: the loser's factors do not stay in the model."""
    from taskprune.artifacts import Artifacts
    from taskprune.calibration.accumulators import RELATIVE
    from taskprune.config import load
    from taskprune.evaluation import accuracy
    from taskprune.methods.sieve import Sieve

    given = iter(scores)
    monkeypatch.setattr(accuracy, "run_lm_eval", lambda *args: {"task_accuracy": next(given)})
    params, inputs = load(sieve_gemma.params_file), Artifacts(sieve_gemma)
    model, _, arch = load_local(sieve_gemma.dense_model, owned=True)
    result = Sieve().prune(params, model, arch, inputs)
    assert result.facts["moment_weighting"] == kept
    assert result.facts["calibration_accuracy"] == dict(zip(("plain", "token-weighted"), scores))
    factors, suffix = inputs.factors(), RELATIVE if kept == "token-weighted" else ""
    weighted = 0
    for key, module in arch.named_linears(result.model).items():
        if isinstance(module, FactorizedLinear) and key + RELATIVE in factors:
            assert torch.equal(module.down.weight, factors[key + suffix].at_rank(module.rank)[1]), key
            weighted += 1
    assert weighted
