"""SparseGPT: the OBS update on hand-made layers, task-aware SparseGPT, and the sequential driver on tiny models."""

import pytest
import torch

from taskprune import masks as masklib
from taskprune.calibration import (Hessian, SquareSums, accumulate_inputs, collect_input_square_sums,
                                   sequential_layers)
from taskprune.config import PruneConfig
from taskprune.models.loading import load_local
from taskprune.pruning import SideStats, compute_masks, layerwise_masks
from taskprune.scoring.sparsegpt import sparsegpt_prune
from taskprune.scoring.task_aware import task_aware_sparsegpt
from taskprune.scoring.wanda import wanda_scores


def correlated_layer(seed=0, rows=48, cols=96, tokens=512):
    gen = torch.Generator().manual_seed(seed)
    mixing = torch.randn(cols, cols, generator=gen) * 0.3 + torch.eye(cols)
    scales = torch.rand(cols, generator=gen) * 3 + 0.1
    x = (torch.randn(tokens, cols, generator=gen) @ mixing) * scales  # correlated channels of unequal size
    return torch.randn(rows, cols, generator=gen), x


def output_error(weight, pruned, x):
    return ((x @ weight.T - x @ pruned.T) ** 2).sum().item()


@pytest.mark.parametrize("pattern", [None, (2, 4)])
def test_sparsegpt_reconstructs_better_than_magnitude_and_wanda(pattern):
    weight, x = correlated_layer()
    pruned, keep = sparsegpt_prune(weight, x.T @ x, 0.5, pattern, blocksize=32)
    wanda = wanda_scores(weight, (x ** 2).sum(0))
    errors = {"sparsegpt": output_error(weight, pruned, x)}
    for name, scores in (("magnitude", weight.abs()), ("wanda", wanda)):
        errors[name] = output_error(weight, weight * masklib.make_mask(scores, 0.5, pattern), x)
    assert errors["sparsegpt"] < 0.8 * errors["wanda"] < 0.8 * errors["magnitude"], errors
    assert torch.equal(pruned != 0, keep)  # zeros exactly where the mask says (random weights have no zeros)


@pytest.mark.parametrize("sparsity,blocksize", [(0.5, 32), (0.6, 40), (0.3, 128)])
def test_every_row_gets_the_exact_number_of_zeros(sparsity, blocksize):
    weight, x = correlated_layer(1, rows=8, cols=100)
    pruned, keep = sparsegpt_prune(weight, x.T @ x, sparsity, blocksize=blocksize)
    assert (keep.sum(dim=1) == 100 - int(100 * sparsity)).all()
    assert (pruned[~keep] == 0).all()


def test_nothing_pruned_leaves_the_weight_alone_and_dead_inputs_are_zeroed():
    weight, x = correlated_layer(2, rows=8, cols=32)
    pruned, keep = sparsegpt_prune(weight, x.T @ x, 0.0)
    assert keep.all() and torch.allclose(pruned, weight, atol=1e-5)
    x[:, 3] = 0  # an input that never fires: its weights cannot matter, SparseGPT zeroes them
    pruned, _ = sparsegpt_prune(weight, x.T @ x, 0.25)
    assert (pruned[:, 3] == 0).all()


def test_nm_rejects_a_blocksize_that_splits_groups():
    weight, x = correlated_layer(3, rows=4, cols=32)
    with pytest.raises(ValueError, match="divisible by 4"):
        sparsegpt_prune(weight, x.T @ x, 0.5, (2, 4), blocksize=6)
    with pytest.raises(ValueError, match="blocksize divisible by 4"):
        PruneConfig(method="sparsegpt", pattern="2:4", sparsegpt={"blocksize": 6})


def test_task_aware_sparsegpt_degenerate_cases():
    weight, x_general = correlated_layer(4)
    _, x_task = correlated_layer(5)
    h_g, h_t = x_general.T @ x_general, x_task.T @ x_task
    plain_g, keep_g = sparsegpt_prune(weight, h_g, 0.5)
    plain_t, keep_t = sparsegpt_prune(weight, h_t, 0.5)
    # one side only: exactly SparseGPT on that side (scale of H does not matter)
    w, keep, task_excl, general_excl = task_aware_sparsegpt(weight, h_g, h_t, alpha=0.5, sparsity=0.5,
                                                            ablation="general_only")
    assert torch.equal(keep, keep_g) and torch.allclose(w, plain_g, atol=1e-4)
    assert not task_excl.any() and not general_excl.any()
    w, keep, *_ = task_aware_sparsegpt(weight, h_g, h_t * 7, alpha=0.5, sparsity=0.5, ablation="task_only")
    assert torch.equal(keep, keep_t)
    # the same Hessian on both sides: fusion is plain SparseGPT whatever alpha and partition
    w, keep, task_excl, _ = task_aware_sparsegpt(weight, h_g, h_g * 3, alpha=0.3, sparsity=0.5,
                                                 exclusive_fraction=0.2)
    assert torch.equal(keep, keep_g) and torch.allclose(w, plain_g, atol=1e-4)
    # different sides: the partition marks the top 20 % of channels, and the result sits between
    w, keep, task_excl, general_excl = task_aware_sparsegpt(weight, h_g, h_t, alpha=0.5, sparsity=0.5,
                                                            exclusive_fraction=0.2)
    assert int(task_excl.sum() + general_excl.sum()) == round(0.2 * 96)
    assert (keep.sum(dim=1) == 48).all()
    assert not torch.equal(keep, keep_g) and not torch.equal(keep, keep_t)


def test_sequential_pass_feeds_each_layer_the_changed_outputs(tiny_llama_dir):
    """After layer 0 is changed, layer 1 sees the changed model's activations, not the dense ones."""
    model, _, arch = load_local(tiny_llama_dir)
    ids = torch.randint(0, model.config.vocab_size, (4, 16), generator=torch.Generator().manual_seed(0))
    dense = collect_input_square_sums(model, arch, ids, batch_size=2)
    seen = {}
    for step in sequential_layers(model, arch, {"s": ids}, 2, "cpu", "test"):
        sums = accumulate_inputs(step, arch, "s", SquareSums)
        seen.update({f"{step.index}.{name}": acc.sum.float() for name, acc in sums.items()})
        if step.index == 0:
            for module in arch.linears(step.layer).values():
                arch.weight(module).mul_(0.5)
            step.changed()
    changed = collect_input_square_sums(model, arch, ids, batch_size=2)  # whole model, layer 0 halved
    for key in (k for k in seen if not k.startswith("0.")):  # layer 0's own inputs change within the layer
        assert torch.allclose(seen[key], changed[key], rtol=1e-4), key
    first_of_layer_1 = next(k for k in seen if k.startswith("1."))
    assert not torch.allclose(seen[first_of_layer_1], dense[first_of_layer_1], rtol=1e-3)


def test_accumulators_match_their_definitions():
    x = torch.randn(3, 5, 7)
    acc, sums = Hessian(7, "cpu"), SquareSums(7)
    for part in (x[:2], x[2:]):
        acc.add(Hessian.contribution(part), 5)
        sums.add(SquareSums.contribution(part), part.shape[0] * part.shape[1])
    flat = x.reshape(-1, 7)
    assert torch.allclose(acc.sum, flat.T @ flat, atol=1e-5)
    assert torch.allclose(sums.sum, (flat.double() ** 2).sum(0)) and sums.tokens == 15


def tiny_blocks(model, seed):
    return torch.randint(0, model.config.vocab_size, (4, 16), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("cfg", [
    {"method": "sparsegpt"}, {"method": "sparsegpt", "stats": "task"},
    {"method": "task_aware", "base": "sparsegpt"},
    {"method": "task_aware", "base": "sparsegpt", "task_aware": {"ablation": "no_partition"}},
])
@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_sparsegpt_methods_on_every_architecture(tiny_model_dir, cfg, pattern):
    model, _, arch = load_local(tiny_model_dir)
    dense = {k: arch.weight(m).clone() for k, m in arch.named_linears(model).items()}
    blocks = {"general": tiny_blocks(model, 0), "task": tiny_blocks(model, 1)}
    config = PruneConfig.model_validate({**cfg, "pattern": pattern, "sparsegpt": {"blocksize": 8}})
    result = layerwise_masks(model, arch, config, None, blocks, batch_size=2)
    for key, module in arch.named_linears(model).items():
        mask, weight = result.masks[key], arch.weight(module)
        if pattern == "2:4":
            assert (mask.reshape(mask.shape[0], -1, 4).sum(dim=2) == 2).all(), key
        else:
            assert (mask.sum(dim=1) == mask.shape[1] - int(mask.shape[1] * 0.5)).all(), key
        assert (weight[~mask] == 0).all(), key
        assert not torch.equal(weight[mask], dense[key][mask]), key  # kept weights were updated (OBS)
    if cfg["method"] == "task_aware" and "task_aware" not in cfg:
        assert all(0 < v["task"] + v["general"] <= 1 for v in result.exclusive.values())


def test_sparsegpt_with_owl_allocation(tiny_llama_dir):
    model, _, arch = load_local(tiny_llama_dir)
    linears = arch.named_linears(model)
    gen = torch.Generator().manual_seed(0)
    stats = {side: SideStats({k: torch.rand(arch.in_features(m), generator=gen) * 10 + 0.1
                              for k, m in linears.items()}, 64) for side in ("general", "task")}
    cfg = PruneConfig(method="sparsegpt", allocation="owl", sparsity=0.6)
    owl = compute_masks(model, arch, PruneConfig(method="wanda", allocation="owl", sparsity=0.6), stats)
    result = layerwise_masks(model, arch, cfg, stats, {"general": tiny_blocks(model, 0)}, batch_size=2)
    assert result.layer_target == owl.layer_target  # OWL ratios from Wanda scores of the dense model
    total = sum(m.numel() for m in result.masks.values())
    assert 1 - sum(int(m.sum()) for m in result.masks.values()) / total == pytest.approx(0.6, abs=0.01)
