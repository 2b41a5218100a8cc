"""Task-aware pruning (arXiv 2510.22489): a base criterion (Wanda or SparseGPT, prune.base) scored on
general and on task text; channels whose normalised norms differ strongly are exclusive to the
dominant side, the rest get the weighted sum (prune.task_aware)."""

from __future__ import annotations

from taskprune.methods.masking import MaskingMethod
from taskprune.methods.registry import register
from taskprune.methods.sparsegpt import obs_settings
from taskprune.scoring.task_aware import (ChannelStats, ablation_sides, exclusive_settings, task_aware_scores,
                                          task_aware_sparsegpt)


def partition(cfg) -> dict:
    return exclusive_settings(cfg.task_aware)


@register
class TaskAware(MaskingMethod):
    name = "task_aware"
    summary = "general/task fusion of Wanda or SparseGPT scores (prune.base, prune.task_aware)"

    def label(self, cfg) -> str:
        return f"task_aware+{cfg.base}"

    def layerwise(self, cfg) -> bool:
        return cfg.base == "sparsegpt"

    def sections(self, cfg) -> tuple[str, ...]:
        return ("task_aware", *(("sparsegpt",) if self.layerwise(cfg) else ()), *super().sections(cfg))

    def scorer(self, cfg, stats):
        if self.layerwise(cfg):
            return super().scorer(cfg, stats)
        general, task = stats["general"], stats["task"]
        ta = cfg.task_aware

        def score(key, weight):
            return task_aware_scores(
                weight, ChannelStats(general.square_sums[key], general.tokens),
                ChannelStats(task.square_sums[key], task.tokens), alpha=ta.alpha, ablation=ta.ablation,
                **partition(cfg))
        return score

    def outlier_scorer(self, cfg, stats):
        return self.scorer(cfg.model_copy(update={"base": "wanda"}), stats)  # OWL: the Wanda-based fusion

    def layer_sides(self, cfg) -> list[str]:
        return ablation_sides(cfg.task_aware.ablation)

    def prune_matrix(self, cfg, weight, hessians, sparsity):
        sides = self.layer_sides(cfg)
        general, task = hessians[sides[0]], hessians[sides[-1]]  # an ablation that uses one side passes it twice
        return task_aware_sparsegpt(weight, general, task, alpha=cfg.task_aware.alpha, sparsity=sparsity,
                                    ablation=cfg.task_aware.ablation, **partition(cfg), **obs_settings(cfg))
