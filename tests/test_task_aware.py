"""Task-aware fusion and OWL on hand-made tensors with known answers, and every scorer on tiny models."""

import pytest
import torch

from taskprune import masks as masklib
from taskprune.config import PruneConfig
from taskprune.models.loading import load_local
from taskprune.pruning import SideStats, compute_masks
from taskprune.scoring.owl import outlier_ratio, owl_sparsities
from taskprune.scoring.task_aware import ChannelStats, fuse_scores, partition_channels, task_aware_scores


def test_normalised_rms_removes_scale_and_token_count():
    sums = torch.tensor([1.0, 4.0, 9.0, 16.0])
    a = ChannelStats(sums, tokens=10).normalised_rms()
    b = ChannelStats(sums * 7, tokens=70).normalised_rms()  # same per-token energy
    c = ChannelStats(sums * 100, tokens=10).normalised_rms()  # 10x louder corpus, same shape
    assert torch.allclose(a, b) and torch.allclose(a, c)
    assert torch.allclose(a, torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64) / 2.5)


def test_partition_picks_the_channels_that_differ_most():
    general = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    task = torch.tensor([1.0, 4.0, 1.0, 0.2, 1.1, 1.0])  # channel 1 task-heavy, channel 3 general-heavy
    task_excl, general_excl = partition_channels(general, task, exclusive_fraction=2 / 6)
    assert task_excl.tolist() == [False, True, False, False, False, False]
    assert general_excl.tolist() == [False, False, False, True, False, False]
    task_excl, general_excl = partition_channels(general, task, tau=0.05)  # |log 1.1| = 0.095 > 0.05
    assert task_excl.nonzero().flatten().tolist() == [1, 4] and general_excl.nonzero().flatten().tolist() == [3]
    with pytest.raises(ValueError, match="exactly one"):
        partition_channels(general, task)


def test_fusion_uses_each_sides_score_where_it_should():
    s_g = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])  # mean 2
    s_t = torch.tensor([[4.0, 0.0, 8.0], [0.0, 4.0, 8.0]])  # mean 4
    task_excl = torch.tensor([False, False, True])
    general_excl = torch.tensor([True, False, False])
    fused = fuse_scores(s_g, s_t, task_excl, general_excl, alpha=0.25)
    assert torch.allclose(fused[:, 0], s_g[:, 0] / 2)            # general-exclusive column: S_G
    assert torch.allclose(fused[:, 2], s_t[:, 2] / 4)            # task-exclusive column: S_T
    assert torch.allclose(fused[:, 1], 0.25 * s_g[:, 1] / 2 + 0.75 * s_t[:, 1] / 4)  # shared: weighted sum


def test_degenerate_cases_reduce_to_one_side():
    torch.manual_seed(0)
    weight = torch.randn(8, 16)
    general = ChannelStats(torch.rand(16) + 0.1, 100)
    task = ChannelStats(torch.rand(16) + 0.1, 50)
    from taskprune.scoring.wanda import wanda_scores

    s_g = wanda_scores(weight, general.square_sums / 100)
    s_t = wanda_scores(weight, task.square_sums / 50)
    same_ranking = lambda a, b: torch.equal(a.argsort(dim=1), b.argsort(dim=1))  # noqa: E731
    for alpha, expected in ((1.0, s_g), (0.0, s_t)):  # no exclusive channels: alpha picks a side
        fused, *_ = task_aware_scores(weight, general, task, alpha=alpha, exclusive_fraction=0.0)
        assert same_ranking(fused, expected)
    assert same_ranking(task_aware_scores(weight, general, task, alpha=0.5, ablation="task_only")[0], s_t)
    assert same_ranking(task_aware_scores(weight, general, task, alpha=0.5, ablation="general_only")[0], s_g)
    # identical statistics on both sides: fusion is plain Wanda whatever alpha and partition
    fused, task_excl, general_excl = task_aware_scores(weight, general, general, alpha=0.3, exclusive_fraction=0.2)
    assert same_ranking(fused, s_g)


def test_owl_averages_to_target_and_favours_outlier_layers():
    sparsities = owl_sparsities([0.01, 0.05, 0.03], [100, 100, 200], target=0.6, lam=0.08)
    assert sum(s * w for s, w in zip(sparsities, [100, 100, 200])) / 400 == pytest.approx(0.6)
    assert sparsities[1] < sparsities[2] < sparsities[0]  # more outliers -> fewer weights pruned
    assert max(sparsities) - min(sparsities) == pytest.approx(0.16)
    assert owl_sparsities([0.02, 0.02], [1, 1], 0.5, 0.08) == [0.5, 0.5]
    assert outlier_ratio([torch.tensor([1.0, 1.0, 1.0, 1.0, 100.0])], m=3) == pytest.approx(0.2)


def tiny_stats(model, arch, seed):
    gen = torch.Generator().manual_seed(seed)
    return SideStats({k: torch.rand(arch.in_features(m), generator=gen) * 10 + 0.1
                      for k, m in arch.named_linears(model).items()}, tokens=64)


@pytest.mark.parametrize("cfg", [
    {"method": "magnitude"}, {"method": "wanda"}, {"method": "wanda", "stats": "task"}, {"method": "task_aware"},
    {"method": "task_aware", "task_aware": {"partition": "threshold", "tau": 0.5}},
    {"method": "task_aware", "task_aware": {"ablation": "no_partition"}},
])
@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_every_scorer_gives_valid_masks(tiny_model_dir, cfg, pattern):
    model, _, arch = load_local(tiny_model_dir)
    stats = {"general": tiny_stats(model, arch, 0), "task": tiny_stats(model, arch, 1)}
    result = compute_masks(model, arch, PruneConfig.model_validate({**cfg, "pattern": pattern}), stats)
    for key, mask in result.masks.items():
        if pattern == "2:4":
            assert (mask.reshape(mask.shape[0], -1, 4).sum(dim=2) == 2).all(), key
        else:
            assert (mask.sum(dim=1) == mask.shape[1] - int(mask.shape[1] * 0.5)).all(), key
    if cfg["method"] == "task_aware" and cfg.get("task_aware", {}).get("ablation") != "no_partition":
        shares = [v["task"] + v["general"] for v in result.exclusive.values()]
        assert all(0 < s <= 1 for s in shares)


def test_owl_allocation_on_a_tiny_model(tiny_llama_dir):
    model, _, arch = load_local(tiny_llama_dir)
    stats = {"general": tiny_stats(model, arch, 0), "task": tiny_stats(model, arch, 1)}
    cfg = PruneConfig.model_validate({"method": "wanda", "allocation": "owl", "sparsity": 0.6})
    result = compute_masks(model, arch, cfg, stats)
    total = sum(m.numel() for m in result.masks.values())
    achieved = 1 - sum(int(m.sum()) for m in result.masks.values()) / total
    assert achieved == pytest.approx(0.6, abs=0.01)
    assert len(set(result.layer_target.values())) == 2  # the two layers differ
    assert masklib.sparsity(next(iter(result.masks.values()))) != pytest.approx(0.6, abs=1e-6)


def test_owl_with_nm_is_rejected():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="owl.*needs pattern 'unstructured'"):
        PruneConfig(allocation="owl", pattern="2:4")
