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


def unit_counts(units: Units, cfg, groups_kept: int | None = None) -> Counts:
    """How many layers, head groups and MLP channels ``prune.structured`` (``cfg``) removes from ``units``; with
    ``keep_heads: auto`` all head groups are kept unless ``groups_kept`` (one of ``head_options``) says otherwise.
    Raises ValueError naming the parameter when the settings cannot give a working model."""
    total = units.decoder_linear_params
    target = cfg.reduction * total
    layers_removed = _layers_removed(units, cfg)
    kept_layers = units.layers - layers_removed
    if groups_kept is None:
        groups_kept = _fixed_groups(units, cfg.keep_heads)
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


def head_options(units: Units, cfg) -> list[int]:
    """The KV head groups per layer structured pruning may keep at these settings, all of them first: the number
    ``keep_heads`` fixes (empty: all), or with ``auto`` all, all but the most groups whose parameters fit in the
    reduction left after the layers ``depth`` removes (the rest comes from MLP width), and all but half as many:
    at most three options, whatever the number of KV heads. More than one: the score step keeps the one whose
    model answers more calibration rows."""
    if cfg.keep_heads != "auto":
        return [_fixed_groups(units, cfg.keep_heads)]
    layers_removed = _layers_removed(units, cfg)
    left = cfg.reduction * units.decoder_linear_params - layers_removed * units.layer_params()
    most = min(units.kv_heads - 1, int(left // ((units.layers - layers_removed) * units.group_params)))
    return [units.kv_heads - removed for removed in sorted({0, round(most / 2), most})]


def _layers_removed(units: Units, cfg) -> int:
    layers_removed = round(cfg.depth * cfg.reduction * units.decoder_linear_params / units.layer_params())
    if layers_removed >= units.layers:
        raise ValueError(f"prune.structured: reduction {cfg.reduction:g} x depth {cfg.depth:g} would remove every "
                         f"one of the {units.layers} decoder layers")
    return layers_removed


def _fixed_groups(units: Units, keep_heads) -> int:
    """KV head groups kept for a ``keep_heads`` that fixes them (a number of query heads; empty or auto: all)."""
    if not isinstance(keep_heads, int):
        return units.kv_heads
    if keep_heads % units.group_size or keep_heads > units.heads:
        raise ValueError(f"prune.structured.keep_heads: {keep_heads} query heads is not a whole number of "
                         f"head groups ({units.group_size} query heads share each of the {units.kv_heads} KV "
                         f"heads, {units.heads} in all): use a multiple of {units.group_size} up to {units.heads}")
    return keep_heads // units.group_size


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
