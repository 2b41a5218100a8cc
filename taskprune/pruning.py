"""Scores -> per-layer sparsity -> masks -> zeroed weights, over every decoder linear (via the adapter)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable

import torch
from tqdm.auto import tqdm

from taskprune import masks as masklib
from taskprune.config import PruneConfig
from taskprune.scoring import scores_for
from taskprune.scoring.owl import outlier_ratio, owl_sparsities
from taskprune.scoring.task_aware import ChannelStats, task_aware_scores


@dataclass
class SideStats:
    """Calibration statistics of one side: square sums per linear, and the token count."""

    square_sums: dict[str, torch.Tensor]
    tokens: int


@dataclass
class MaskResult:
    masks: dict[str, torch.Tensor]
    sparsity: dict[str, float]                      # achieved, per linear
    exclusive: dict[str, dict[str, float]] = field(default_factory=dict)  # task_aware: channel shares
    layer_target: dict[int, float] = field(default_factory=dict)          # allocation per decoder layer


def make_scorer(cfg: PruneConfig, stats: dict[str, SideStats] | None) -> Callable[[str, torch.Tensor], tuple]:
    """``scorer(key, weight) -> (scores, task_exclusive, general_exclusive)`` for the configured method."""
    if cfg.method == "task_aware":
        ta = cfg.task_aware
        general, task = stats["general"], stats["task"]

        def score(key, weight):
            return task_aware_scores(
                weight, ChannelStats(general.square_sums[key], general.tokens),
                ChannelStats(task.square_sums[key], task.tokens), alpha=ta.alpha, ablation=ta.ablation,
                exclusive_fraction=ta.exclusive_fraction if ta.partition == "fraction" else None,
                tau=ta.tau if ta.partition == "threshold" else None)
        return score
    side = stats[cfg.stats] if cfg.method == "wanda" else None

    def score(key, weight):
        return scores_for(cfg.method, weight, side.square_sums[key] if side else None), None, None
    return score


def compute_masks(model, adapter, cfg: PruneConfig, stats: dict[str, SideStats] | None) -> MaskResult:
    """Keep-masks for every decoder linear, keyed like the calibration statistics."""
    score = make_scorer(cfg, stats)
    linears = adapter.named_linears(model)
    by_layer: dict[int, list[str]] = defaultdict(list)
    for key in linears:
        by_layer[int(key.split(".", 1)[0])].append(key)
    layer_target = {layer: cfg.sparsity for layer in by_layer}
    if cfg.allocation == "owl":  # first pass: outlier ratio of every layer's scores
        ratios, sizes = [], []
        for layer, keys in tqdm(by_layer.items(), desc="OWL outlier ratios", unit="layer"):
            scores = [score(key, adapter.weight(linears[key]))[0] for key in keys]
            ratios.append(outlier_ratio(scores, cfg.owl.m))
            sizes.append(sum(s.numel() for s in scores))
        layer_target = dict(zip(by_layer, owl_sparsities(ratios, sizes, cfg.sparsity, cfg.owl.lam)))
    result = MaskResult({}, {}, layer_target=layer_target)
    for layer, keys in tqdm(by_layer.items(), desc=f"score {cfg.method}", unit="layer"):
        for key in keys:
            scores, task_excl, general_excl = score(key, adapter.weight(linears[key]))
            result.masks[key] = masklib.make_mask(scores, layer_target[layer], cfg.n_m)
            result.sparsity[key] = round(masklib.sparsity(result.masks[key]), 6)
            if task_excl is not None:
                result.exclusive[key] = {"task": round(task_excl.float().mean().item(), 6),
                                         "general": round(general_excl.float().mean().item(), 6)}
    return result


@torch.no_grad()
def apply_masks(model, adapter, masks: dict[str, torch.Tensor]) -> dict[str, float]:
    """Zero the masked weights in place; returns the achieved sparsity of every linear."""
    achieved = {}
    for key, module in adapter.named_linears(model).items():
        weight = adapter.weight(module)
        weight.mul_(masks[key].to(weight.dtype))
        achieved[key] = 1 - torch.count_nonzero(weight).item() / weight.numel()
    return achieved
