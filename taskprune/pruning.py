"""Masks over a whole model: scores -> per-layer sparsity -> masks -> zeroed weights, for every decoder
linear (via the architecture). The method (``taskprune.methods``) supplies the scores or the per-matrix
pruning step; nothing here depends on which method it is."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import torch
from tqdm.auto import tqdm

from taskprune import masks as masklib
from taskprune.calibration import Hessian, SideStats, accumulate_inputs, sequential_layers
from taskprune.methods.registry import get_method
from taskprune.scoring.owl import outlier_ratio, owl_sparsities

if TYPE_CHECKING:
    from taskprune.config import PruneConfig

# scorer(key, weight) -> (scores, task-exclusive channels or None, general-exclusive channels or None)
Scorer = Callable[[str, torch.Tensor], tuple]


@dataclass
class MaskResult:
    masks: dict[str, torch.Tensor]
    sparsity: dict[str, float]                      # achieved, per linear
    exclusive: dict[str, dict[str, float]] = field(default_factory=dict)  # task_aware: channel shares
    layer_target: dict[int, float] = field(default_factory=dict)          # allocation per decoder layer


def by_layer(keys) -> dict[int, list[str]]:
    grouped: dict[int, list[str]] = defaultdict(list)
    for key in keys:
        grouped[int(key.split(".", 1)[0])].append(key)
    return grouped


def layer_targets(model, arch, cfg: PruneConfig, stats: dict[str, SideStats] | None) -> dict[int, float]:
    """Sparsity per decoder layer: the target everywhere, or OWL's outlier-weighted allocation (outlier
    ratios from the method's ``outlier_scorer``: Wanda-class scores of the dense model)."""
    linears = arch.named_linears(model)
    grouped = by_layer(linears)
    if cfg.allocation != "owl":  # uniform; "search" starts from uniform and is refined by the search stage
        return {layer: cfg.sparsity for layer in grouped}
    score = get_method(cfg.method).outlier_scorer(cfg, stats)
    ratios, sizes = [], []
    for keys in tqdm(grouped.values(), desc="OWL outlier ratios", unit="layer"):
        scores = [score(key, arch.weight(linears[key]))[0] for key in keys]
        ratios.append(outlier_ratio(scores, cfg.owl.m))
        sizes.append(sum(s.numel() for s in scores))
    return dict(zip(grouped, owl_sparsities(ratios, sizes, cfg.sparsity, cfg.owl.lam)))


def record(result: MaskResult, key: str, keep: torch.Tensor, task_excl, general_excl) -> None:
    result.masks[key] = keep.cpu()
    result.sparsity[key] = round(masklib.sparsity(result.masks[key]), 6)
    if task_excl is not None:
        result.exclusive[key] = {"task": round(task_excl.float().mean().item(), 6),
                                 "general": round(general_excl.float().mean().item(), 6)}


def compute_masks(model, arch, cfg: PruneConfig, stats: dict[str, SideStats] | None,
                  per_matrix: dict[str, float] | None = None) -> MaskResult:
    """Keep-masks for every decoder linear from the method's scores, keyed like the calibration statistics.

    ``per_matrix`` (the genetic search's allocation) overrides the per-layer targets."""
    score = get_method(cfg.method).scorer(cfg, stats)
    linears = arch.named_linears(model)
    targets = {layer: cfg.sparsity for layer in by_layer(linears)} if per_matrix else \
        layer_targets(model, arch, cfg, stats)
    result = MaskResult({}, {}, layer_target=targets)
    for layer, keys in tqdm(by_layer(linears).items(), desc=f"score {cfg.method}", unit="layer"):
        for key in keys:
            scores, task_excl, general_excl = score(key, arch.weight(linears[key]))
            sparsity = per_matrix[key] if per_matrix else targets[layer]
            record(result, key, masklib.make_mask(scores, sparsity, cfg.n_m), task_excl, general_excl)
    return result


@torch.no_grad()
def layerwise_masks(model, arch, cfg: PruneConfig, stats: dict[str, SideStats] | None,
                    blocks: dict[str, torch.Tensor], batch_size: int, device: str = "cpu") -> MaskResult:
    """Prune layer by layer with the method's ``prune_matrix`` (SparseGPT and its task-aware form); updates
    the model's weights in place.

    Each layer's Hessians (one per calibration side the method asks for) come from the outputs of the
    already pruned layers before it; one decoder layer is on the device at a time. ``stats`` is needed
    only for OWL."""
    method = get_method(cfg.method)
    sides = method.layer_sides(cfg)
    result = MaskResult({}, {}, layer_target=layer_targets(model, arch, cfg, stats))
    for step in sequential_layers(model, arch, {side: blocks[side] for side in sides}, batch_size, device,
                                  desc=method.label(cfg)):
        hessians = {side: accumulate_inputs(step, arch, side, lambda n: Hessian(n, device)) for side in sides}
        sparsity = result.layer_target[step.index]
        for name, module in arch.linears(step.layer).items():
            weight = arch.weight(module)
            pruned, keep, task_excl, general_excl = method.prune_matrix(
                cfg, weight, {side: hessians[side][name].sum for side in sides}, sparsity)
            weight.copy_(pruned.to(weight.dtype))
            record(result, f"{step.index}.{name}", keep, task_excl, general_excl)
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
