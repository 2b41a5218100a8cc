"""Magnitude pruning: |W|, no calibration data (the data-free baseline)."""

from __future__ import annotations

from taskprune.methods.masking import MaskingMethod
from taskprune.methods.registry import register
from taskprune.scoring.magnitude import magnitude_scores


@register
class Magnitude(MaskingMethod):
    name = "magnitude"
    summary = "|W|: the data-free baseline"
    statistics = ()

    def scorer(self, cfg, stats):
        return lambda key, weight: (magnitude_scores(weight), None, None)
