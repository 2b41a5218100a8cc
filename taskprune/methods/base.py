"""What a compression method is: a name, a plan (what it needs and makes, as data) and its steps.

The stages read the plan and call the steps; none of them, nor tracking, evaluation or model
loading, asks which method it is. A method is one module in this package (or a plug-in module
named in ``$TASKPRUNE_PLUGINS`` or the ``taskprune.methods`` entry-point group) with one class
decorated by ``taskprune.methods.register``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from taskprune.artifacts import Artifacts
    from taskprune.config import Params, PruneConfig


@dataclass(frozen=True)
class Plan:
    """What a method needs and makes, for one configuration (``prune.*``)."""

    statistics: tuple[str, ...]      # calibration statistics: "square_sums" (per input channel), "moments" (x x^T)
    produces: tuple[str, ...]        # score stage outputs: "masks", "weights" (updated kept weights), "factors"
    layerwise: bool = False          # prunes layer by layer on the already pruned model (re-walks calibration text)
    levels: str | None = None        # what the genetic search varies per matrix: "sparsity" | "lowrank" | None
    always_allocates: bool = False   # the search stage allocates levels even with prune.allocation uniform
    export: str = "checkpoint"       # model format of the result (taskprune.models.formats)
    sections: tuple[str, ...] = ()   # params.yaml prune.* sub-sections the method reads

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ScoreResult:
    """What the score stage writes: any of masks (a ``MaskResult``), updated weights and factors."""

    masks: Any = None
    weights: dict | None = None
    factors: dict | None = None
    structure: dict | None = None            # which units a structured method keeps (structure.json)
    notes: dict = field(default_factory=dict)   # small facts for the stage record (stage.json)


@dataclass
class PruneResult:
    """The pruned model, and how to describe it: ``compression`` is one line for tables and titles,
    ``per_matrix`` the quantity shown per decoder matrix (``{"quantity": ..., "values": {key: value}}``)."""

    model: Any
    compression: str
    per_matrix: dict
    sparsity: float = 0.0            # fraction of decoder-linear weights that are zero (0 for parameter removal)
    facts: dict = field(default_factory=dict)
    removed: dict[str, str] = field(default_factory=dict)   # what was removed, in words (shown in tables, MLflow)


class Method:
    """Base of every method. Subclasses set ``name`` and ``summary`` and implement ``plan`` and the steps
    their plan calls for."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""

    def plan(self, cfg: PruneConfig) -> Plan:
        raise NotImplementedError

    def check(self, cfg: PruneConfig) -> None:
        """Raise ``ValueError`` for settings this method cannot use (generic ones are checked in config)."""

    reads_model_config: ClassVar[bool] = False
    # the params.yaml key that sets how much this method compresses; target mode varies it (taskprune/target.py)
    level_key: ClassVar[str] = "prune.sparsity"
    level_name: ClassVar[str] = "sparsity"

    def check_model(self, cfg: PruneConfig, model_config, arch, where: str) -> None:
        """With ``reads_model_config``: raise ``TaskPruneError`` for settings this model (``where``: how the user
        named it) cannot take; checked before any stage runs (``model_config`` may be a namespace of the
        config's main fields)."""

    def label(self, cfg: PruneConfig) -> str:
        """The method in a word, for run names and tables."""
        return self.name

    def settings_label(self, cfg: PruneConfig) -> str:
        """How much and how, for run names: allocation, pattern and sparsity unless the method says otherwise."""
        return f"{cfg.allocation}-{cfg.pattern.replace(':', 'of')}-{cfg.sparsity:g}"

    # -- the steps ------------------------------------------------------------------------------
    def score(self, params: Params, model, tokenizer, arch, inputs: Artifacts) -> ScoreResult:
        """The score stage: masks, updated weights or factors of every decoder linear."""
        raise NotImplementedError

    def level_space(self, params: Params, shapes: dict[str, tuple[int, int]]):
        """The genetic search's space (``plan.levels`` set): ``(LevelSpace, values per matrix and level)``."""
        raise NotImplementedError(f"method {self.name} offers no search space")

    def level_setter(self, model, arch, keys: list[str], cfg: PruneConfig, inputs: Artifacts):
        """An object with ``set(key, value)`` that puts one matrix of ``model`` at a level value (None = dense)."""
        raise NotImplementedError(f"method {self.name} offers no search space")

    def allocate(self, params: Params, model, arch, inputs: Artifacts, allocation: dict) -> ScoreResult:
        """What the search stage writes for the chosen per-matrix ``allocation`` (level value per matrix)."""
        raise NotImplementedError(f"method {self.name} offers no search space")

    def prune(self, params: Params, model, arch, inputs: Artifacts) -> PruneResult:
        """The prune stage: the dense ``model`` made into the pruned one (in place or replaced)."""
        raise NotImplementedError
