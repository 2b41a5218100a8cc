"""A project's stage outputs as the methods read them, each loaded on first use.

The stages hand an ``Artifacts`` to the method; the method takes what its plan needs
(statistics, moments, factors, masks ...), so no stage has to know which inputs a method reads.
"""

from __future__ import annotations

from taskprune.paths import Project, read_json


class Artifacts:
    def __init__(self, project: Project):
        self.project = project
        self._kept: dict = {}

    def kept(self, key, make):
        """``make()``'s result, computed once per ``key`` for as long as this object lives: a method keeps here what
        does not change with its compression level (target mode scores one method at many levels with one
        ``Artifacts``); a stage's own ``Artifacts`` serves one level, so nothing is computed twice."""
        if key not in self._kept:
            self._kept[key] = make()
        return self._kept[key]

    def stats(self):
        """Both calibration sides' square sums (``SideStats`` per side)."""
        from taskprune.calibration import load_stats

        return load_stats(self.project.stats)

    def moments(self, sides: list[str]) -> dict:
        """Second moments per side (LLM-Sieve, the structured refit): side -> {matrix key: tensor}, each matrix
        read from disk when it is looked up."""
        from taskprune.calibration import load_moments

        return {side: load_moments(self.project.moments / side) for side in sides}

    def tokenizer(self):
        """The dense model's tokenizer (loaded once)."""
        from taskprune.models.loading import load_tokenizer

        return self.kept("tokenizer", lambda: load_tokenizer(self.project.dense_model))

    def blocks(self, tokenizer, cfg, sides) -> dict:
        """Calibration token blocks of ``sides`` (layer-by-layer methods re-walk them)."""
        from taskprune.calibration.blocks import calibration_blocks

        return calibration_blocks(self.project, cfg, tokenizer, sides)

    def factors(self) -> dict:
        from taskprune.lowrank import load_factors

        return load_factors(self.project.updates / "factors.safetensors")

    def updated_weights(self) -> dict | None:
        """Weights the score stage updated (SparseGPT family), or None."""
        from safetensors.torch import load_file

        path = self.project.updates / "weights.safetensors"
        return load_file(str(path)) if path.exists() else None

    def masks(self) -> dict:
        """The masks the model is pruned with (the search's when it made them)."""
        from taskprune.masks import load_masks

        return load_masks(self.project.mask_dir / "masks.safetensors")

    def mask_info(self) -> dict:
        return read_json(self.project.mask_dir / "masks.json")

    def structure(self) -> dict:
        """Which units a structured method keeps (the score stage's structure.json)."""
        return read_json(self.project.masks / "structure.json")

    def allocation(self) -> dict:
        """The search stage's per-matrix allocation (allocation.json)."""
        return read_json(self.project.search / "allocation.json")


class HeldArtifacts(Artifacts):
    """The project's calibration outputs, with one configuration's score (and allocation) held in memory instead
    of read from artifacts/: target mode prunes at many levels without writing each one's masks or factors."""

    def __init__(self, project: Project, cfg, score, allocation: dict | None = None):
        super().__init__(project)
        self.cfg, self.score, self.held_allocation = cfg, score, allocation

    def factors(self) -> dict:
        return self.score.factors

    def updated_weights(self) -> dict | None:
        return self.score.weights

    def masks(self) -> dict:
        return self.score.masks.masks

    def mask_info(self) -> dict:
        from taskprune.masks.packed import mask_info

        return mask_info(self.cfg, self.score.masks)

    def structure(self) -> dict:
        return self.score.structure

    def allocation(self) -> dict:
        return self.held_allocation
