"""SparseGPT: OBS pruning layer by layer on one calibration side, kept weights updated."""

from __future__ import annotations

from taskprune.methods.masking import MaskingMethod
from taskprune.methods.registry import register
from taskprune.methods.wanda import Wanda
from taskprune.scoring.sparsegpt import sparsegpt_prune


def obs_settings(cfg) -> dict:
    return dict(n_m=cfg.n_m, blocksize=cfg.sparsegpt.blocksize, damp=cfg.sparsegpt.damp)


@register
class SparseGPT(MaskingMethod):
    name = "sparsegpt"
    summary = "OBS pruning layer by layer, kept weights updated (prune.stats side)"

    def layerwise(self, cfg) -> bool:
        return True

    def sections(self, cfg) -> tuple[str, ...]:
        return ("sparsegpt", *super().sections(cfg))

    def layer_sides(self, cfg) -> list[str]:
        return [cfg.stats]

    def outlier_scorer(self, cfg, stats):
        return Wanda().scorer(cfg, stats)  # OWL's outliers: Wanda on the same side

    def prune_matrix(self, cfg, weight, hessians, sparsity):
        pruned, keep = sparsegpt_prune(weight, hessians[cfg.stats], sparsity, **obs_settings(cfg))
        return pruned, keep, None, None
