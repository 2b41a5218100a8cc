"""Scores -> per-layer sparsity -> masks -> zeroed weights, over every decoder linear (via the arch)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable

import torch
from tqdm.auto import tqdm

from taskprune import masks as masklib
from taskprune.calibration import SIDES, Hessian, accumulate_inputs, sequential_layers
from taskprune.config import PruneConfig
from taskprune.scoring import scores_for
from taskprune.scoring.owl import outlier_ratio, owl_sparsities
from taskprune.scoring.sparsegpt import sparsegpt_prune
from taskprune.scoring.task_aware import ChannelStats, task_aware_scores, task_aware_sparsegpt


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


def load_side_stats(path) -> SideStats:
    from safetensors.torch import load_file

    from taskprune import tensorfile

    tokens = int(tensorfile.read_metadata(path)["tokens"])
    return SideStats(load_file(str(path)), tokens)


def load_stats(stats_dir, method: str) -> dict[str, SideStats] | None:
    """Both sides' calibration statistics from the calibrate stage's directory (None for magnitude)."""
    from pathlib import Path

    return None if method == "magnitude" else {
        side: load_side_stats(Path(stats_dir) / f"{side}.safetensors") for side in SIDES}


def make_scorer(cfg: PruneConfig, stats: dict[str, SideStats] | None) -> Callable[[str, torch.Tensor], tuple]:
    """``scorer(key, weight) -> (scores, task_exclusive, general_exclusive)`` for a score-only method."""
    if cfg.sequential:
        raise ValueError("SparseGPT-based methods prune in sparsegpt_masks, not from scores alone")
    if cfg.method == "task_aware":
        ta = cfg.task_aware
        general, task = stats["general"], stats["task"]

        def score(key, weight):
            return task_aware_scores(
                weight, ChannelStats(general.square_sums[key], general.tokens),
                ChannelStats(task.square_sums[key], task.tokens), alpha=ta.alpha, ablation=ta.ablation,
                **_partition(cfg))
        return score
    side = stats[cfg.stats] if cfg.method == "wanda" else None

    def score(key, weight):
        return scores_for(cfg.method, weight, side.square_sums[key] if side else None), None, None
    return score


def _partition(cfg: PruneConfig) -> dict:
    ta = cfg.task_aware
    return {"exclusive_fraction": ta.exclusive_fraction if ta.partition == "fraction" else None,
            "tau": ta.tau if ta.partition == "threshold" else None}


def _by_layer(keys) -> dict[int, list[str]]:
    by_layer: dict[int, list[str]] = defaultdict(list)
    for key in keys:
        by_layer[int(key.split(".", 1)[0])].append(key)
    return by_layer


def layer_targets(model, arch, cfg: PruneConfig, stats: dict[str, SideStats] | None) -> dict[int, float]:
    """Sparsity per decoder layer: the target everywhere, or OWL's outlier-weighted allocation.

    OWL's outlier ratios come from Wanda-class scores of the dense model (for
    SparseGPT-based methods: Wanda on the same side, or the Wanda-based fusion).
    """
    linears = arch.named_linears(model)
    by_layer = _by_layer(linears)
    if cfg.allocation != "owl":  # uniform; "search" starts from uniform and is refined by the search stage
        return {layer: cfg.sparsity for layer in by_layer}
    if cfg.sequential:
        cfg = cfg.model_copy(update={"method": "wanda"} if cfg.method == "sparsegpt" else {"base": "wanda"})
    score = make_scorer(cfg, stats)
    ratios, sizes = [], []
    for keys in tqdm(by_layer.values(), desc="OWL outlier ratios", unit="layer"):
        scores = [score(key, arch.weight(linears[key]))[0] for key in keys]
        ratios.append(outlier_ratio(scores, cfg.owl.m))
        sizes.append(sum(s.numel() for s in scores))
    return dict(zip(by_layer, owl_sparsities(ratios, sizes, cfg.sparsity, cfg.owl.lam)))


def _record(result: MaskResult, key: str, keep: torch.Tensor, task_excl, general_excl) -> None:
    result.masks[key] = keep.cpu()
    result.sparsity[key] = round(masklib.sparsity(result.masks[key]), 6)
    if task_excl is not None:
        result.exclusive[key] = {"task": round(task_excl.float().mean().item(), 6),
                                 "general": round(general_excl.float().mean().item(), 6)}


def compute_masks(model, arch, cfg: PruneConfig, stats: dict[str, SideStats] | None,
                  per_matrix: dict[str, float] | None = None) -> MaskResult:
    """Keep-masks for every decoder linear, keyed like the calibration statistics (score-only methods).

    ``per_matrix`` (the genetic search's allocation) overrides the per-layer targets."""
    score = make_scorer(cfg, stats)
    linears = arch.named_linears(model)
    targets = {layer: cfg.sparsity for layer in _by_layer(linears)} if per_matrix else \
        layer_targets(model, arch, cfg, stats)
    result = MaskResult({}, {}, layer_target=targets)
    for layer, keys in tqdm(_by_layer(linears).items(), desc=f"score {cfg.method}", unit="layer"):
        for key in keys:
            scores, task_excl, general_excl = score(key, arch.weight(linears[key]))
            sparsity = per_matrix[key] if per_matrix else targets[layer]
            _record(result, key, masklib.make_mask(scores, sparsity, cfg.n_m), task_excl, general_excl)
    return result


def sparsegpt_sides(cfg: PruneConfig) -> list[str]:
    """Calibration sides a SparseGPT-based method needs Hessians of."""
    if cfg.method == "sparsegpt":
        return [cfg.stats]
    return {"general_only": ["general"], "task_only": ["task"]}.get(cfg.task_aware.ablation, list(SIDES))


@torch.no_grad()
def sparsegpt_masks(model, arch, cfg: PruneConfig, stats: dict[str, SideStats] | None,
                    blocks: dict[str, torch.Tensor], batch_size: int, device: str = "cpu") -> MaskResult:
    """Prune with SparseGPT (or task-aware SparseGPT) layer by layer; updates the model's weights in place.

    Each layer's Hessians come from the outputs of the already pruned layers before
    it; one decoder layer is on the device at a time. ``stats`` is needed only for OWL.
    """
    sides = sparsegpt_sides(cfg)
    result = MaskResult({}, {}, layer_target=layer_targets(model, arch, cfg, stats))
    obs = dict(n_m=cfg.n_m, blocksize=cfg.sparsegpt.blocksize, damp=cfg.sparsegpt.damp)
    for step in sequential_layers(model, arch, {side: blocks[side] for side in sides}, batch_size, device,
                                  desc=f"{cfg.method} ({cfg.base if cfg.method == 'task_aware' else cfg.stats})"):
        hessians = {side: accumulate_inputs(step, arch, side, lambda n: Hessian(n, device)) for side in sides}
        sparsity = result.layer_target[step.index]
        for name, module in arch.linears(step.layer).items():
            weight = arch.weight(module)
            if cfg.method == "sparsegpt":
                pruned, keep = sparsegpt_prune(weight, hessians[cfg.stats][name].sum, sparsity, **obs)
                task_excl = general_excl = None
            else:
                general = hessians[sides[0]][name].sum  # an ablation that uses one side passes it twice
                task = hessians[sides[-1]][name].sum
                pruned, keep, task_excl, general_excl = task_aware_sparsegpt(
                    weight, general, task, alpha=cfg.task_aware.alpha, sparsity=sparsity,
                    ablation=cfg.task_aware.ablation, **_partition(cfg), **obs)
            weight.copy_(pruned.to(weight.dtype))
            _record(result, f"{step.index}.{name}", keep, task_excl, general_excl)
        step.changed()
    return result


@torch.no_grad()
def apply_masks(model, arch, masks: dict[str, torch.Tensor]) -> dict[str, float]:
    """Zero the masked weights in place; returns the achieved sparsity of every linear."""
    achieved = {}
    for key, module in arch.named_linears(model).items():
        weight = arch.weight(module)
        weight.mul_(masks[key].to(weight.dtype))
        achieved[key] = 1 - torch.count_nonzero(weight).item() / weight.numel()
    return achieved


@torch.no_grad()
def load_updated_weights(model, arch, weights: dict[str, torch.Tensor]) -> None:
    """Copy saved decoder-linear weights (keyed like the masks) into the model."""
    linears = arch.named_linears(model)
    if set(weights) != set(linears):
        raise ValueError("updated weights do not match the model's decoder linears; re-run the score stage")
    for key, module in linears.items():
        arch.weight(module).copy_(weights[key])
