"""Which units structured pruning keeps: how many of each (from the parameter budget, with the same width in
every kept layer so the config stays standard), then which ones (the highest fused importance, per layer)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from taskprune.models.architectures.base import Keep, Units


@dataclass(frozen=True)
class Counts:
    layers_removed: int
    groups_kept: int        # KV head groups per kept layer
    channels_kept: int      # MLP channels per kept layer
    reduction: float        # share of the decoder-linear parameters removed (achieved, after rounding)

    def as_dict(self) -> dict:
        return asdict(self)


def unit_counts(units: Units, cfg) -> Counts:
    """How many layers, head groups and MLP channels ``prune.structured`` (``cfg``) removes from ``units``.
    Raises ValueError naming the parameter when the settings cannot give a working model."""
    total = units.decoder_linear_params
    target = cfg.reduction * total
    layers_removed = round(cfg.depth * target / units.layer_params())
    if layers_removed >= units.layers:
        raise ValueError(f"prune.structured: reduction {cfg.reduction:g} x depth {cfg.depth:g} would remove every "
                         f"one of the {units.layers} decoder layers")
    kept_layers = units.layers - layers_removed
    groups_kept = units.kv_heads
    if cfg.keep_heads is not None:
        if cfg.keep_heads % units.group_size or cfg.keep_heads > units.heads:
            raise ValueError(f"prune.structured.keep_heads: {cfg.keep_heads} query heads is not a whole number of "
                             f"head groups ({units.group_size} query heads share each of the {units.kv_heads} KV "
                             f"heads, {units.heads} in all): use a multiple of {units.group_size} up to {units.heads}")
        groups_kept = cfg.keep_heads // units.group_size
    remaining = target - layers_removed * units.layer_params() \
        - kept_layers * (units.kv_heads - groups_kept) * units.group_params
    removed = max(remaining, 0) / (kept_layers * units.channel_params)
    channels_kept = min(units.intermediate, int(round((units.intermediate - removed) / cfg.width_multiple))
                        * cfg.width_multiple)
    if channels_kept <= 0:
        raise ValueError(f"prune.structured.reduction {cfg.reduction:g} would remove every MLP channel "
                         f"(intermediate size {units.intermediate}): lower it, or take more from depth "
                         f"(prune.structured.depth) or heads (prune.structured.keep_heads)")
    reduction = 1 - kept_layers * units.layer_params(groups_kept, channels_kept) / total
    return Counts(layers_removed, groups_kept, channels_kept, round(reduction, 6))


def top(scores: torch.Tensor, count: int) -> list[int]:
    """Indices of the ``count`` highest scores, in order (ties: the lower index)."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return sorted(order[:count])


def choose(counts: Counts, layer_scores: torch.Tensor, channel_scores: list[torch.Tensor],
           group_scores: list[torch.Tensor]) -> Keep:
    """The layers with the highest scores, and in each kept layer its best channels and head groups."""
    layers = top(layer_scores, len(layer_scores) - counts.layers_removed)
    return Keep(layers=layers, channels={i: top(channel_scores[i], counts.channels_kept) for i in layers},
                groups={i: top(group_scores[i], counts.groups_kept) for i in layers})
