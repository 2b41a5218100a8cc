"""Wanda: |W| times the input channel's norm on one calibration side (prune.stats: general or task)."""

from __future__ import annotations

from taskprune.methods.masking import MaskingMethod
from taskprune.methods.registry import register
from taskprune.scoring.wanda import wanda_scores


@register
class Wanda(MaskingMethod):
    name = "wanda"
    summary = "|W| x input-channel norm on general or task text (prune.stats)"

    def scorer(self, cfg, stats):
        side = stats[cfg.stats]
        return lambda key, weight: (wanda_scores(weight, side.square_sums[key]), None, None)
