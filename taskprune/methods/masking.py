"""The shared steps of methods that zero weights: masks from scores, or layer by layer with updated
weights (SparseGPT family); pruning applies the masks to a dense checkpoint of the same shape."""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

from taskprune.methods.base import Method, Plan, PruneResult, ScoreResult

if TYPE_CHECKING:
    from taskprune.artifacts import Artifacts
    from taskprune.config import Params, PruneConfig


def print_sparsity(achieved: dict[str, float]) -> None:
    """Achieved sparsity per decoder layer: the cheap sanity check Wanda always prints."""
    grouped = defaultdict(list)
    for key, value in achieved.items():
        grouped[int(key.split(".", 1)[0])].append(value)
    line = "  ".join(f"{i}:{sum(v) / len(v):.3f}" for i, v in sorted(grouped.items()))
    print(f"sparsity per layer  {line}")


class MaskingMethod(Method):
    """Score-only by default: ``scorer`` gives every weight a score and the lowest are zeroed.
    Layer-by-layer methods override ``layerwise``, ``layer_sides`` and ``prune_matrix``."""

    statistics: tuple[str, ...] = ("square_sums",)

    def layerwise(self, cfg: PruneConfig) -> bool:
        return False

    def sections(self, cfg: PruneConfig) -> tuple[str, ...]:
        return ("owl",) if cfg.allocation == "owl" else ()

    def plan(self, cfg: PruneConfig) -> Plan:
        layerwise = self.layerwise(cfg)
        return Plan(statistics=self.statistics, produces=("masks", "weights") if layerwise else ("masks",),
                    layerwise=layerwise, levels=None if layerwise else "sparsity", sections=self.sections(cfg))

    def check(self, cfg: PruneConfig) -> None:
        nm = cfg.n_m
        if nm is not None and self.layerwise(cfg) and cfg.sparsegpt.blocksize % nm[1]:
            raise ValueError(f"pattern {cfg.pattern} needs prune.sparsegpt.blocksize divisible by {nm[1]} "
                             f"(got {cfg.sparsegpt.blocksize})")

    # -- scores ------------------------------------------------------------------------------------
    def scorer(self, cfg: PruneConfig, stats):
        """``scorer(key, weight) -> (scores, task-exclusive, general-exclusive)`` (exclusive: None or masks)."""
        raise NotImplementedError(f"method {self.name} prunes layer by layer, not from scores alone")

    def outlier_scorer(self, cfg: PruneConfig, stats):
        """Scores OWL measures outliers on (a Wanda-class score of the dense model)."""
        return self.scorer(cfg, stats)

    # -- layer by layer ------------------------------------------------------------------------------
    def layer_sides(self, cfg: PruneConfig) -> list[str]:
        raise NotImplementedError

    def prune_matrix(self, cfg: PruneConfig, weight, hessians: dict, sparsity: float):
        """``(pruned weight, keep mask, task-exclusive, general-exclusive)`` of one matrix."""
        raise NotImplementedError

    # -- the steps -------------------------------------------------------------------------------------
    def score(self, params: Params, model, tokenizer, arch, inputs: Artifacts) -> ScoreResult:
        from taskprune.models.loading import pick_device
        from taskprune.pruning import compute_masks, layerwise_masks

        cfg = params.prune
        stats = inputs.stats() if self.statistics else None
        if not self.layerwise(cfg):
            return ScoreResult(masks=compute_masks(model, arch, cfg, stats))
        blocks = inputs.blocks(tokenizer, params.calibration, self.layer_sides(cfg))
        result = layerwise_masks(model, arch, cfg, stats, blocks, params.calibration.batch_size,
                                 pick_device(params.model.device))
        weights = {key: arch.weight(module).contiguous() for key, module in arch.named_linears(model).items()}
        return ScoreResult(masks=result, weights=weights)

    def level_space(self, params: Params, shapes: dict[str, tuple[int, int]]):
        from taskprune.search import sparsity_space

        return sparsity_space(shapes, params.prune.sparsity, params.search.sparsity_levels,
                              params.search.sparsity_step)

    def level_setter(self, model, arch, keys: list[str], cfg: PruneConfig, inputs: Artifacts):
        from taskprune.search.levels import SparsityLevels

        return SparsityLevels(model, arch, keys, self.scorer(cfg, inputs.stats() if self.statistics else None))

    def allocate(self, params: Params, model, arch, inputs: Artifacts, allocation: dict[str, float]) -> ScoreResult:
        """Masks at the search's per-matrix sparsities (they supersede the score stage's)."""
        from taskprune.pruning import compute_masks

        stats = inputs.stats() if self.statistics else None
        return ScoreResult(masks=compute_masks(model, arch, params.prune, stats, per_matrix=allocation))

    def prune(self, params: Params, model, arch, inputs: Artifacts) -> PruneResult:
        from taskprune.pruning import apply_masks, load_updated_weights

        updated = inputs.updated_weights()
        if updated is not None:  # SparseGPT: the OBS-updated weights replace the dense ones before masking
            load_updated_weights(model, arch, updated)
        achieved = apply_masks(model, arch, inputs.masks())
        print_sparsity(achieved)
        info = inputs.mask_info()
        return PruneResult(
            model, compression=f"sparsity {info['sparsity']:.3f}", sparsity=info["sparsity"],
            per_matrix={"name": "sparsity_per_layer", "title": "sparsity per layer",
                        "quantity": "sparsity (fraction of weights zeroed)", "values": info["per_layer"]},
            facts=dict(method=info["method"], stats=info["stats"], pattern=info["pattern"],
                       target_sparsity=info["target_sparsity"],
                       achieved_sparsity=round(sum(achieved.values()) / len(achieved), 6)))
