"""Target mode: the user gives an accuracy budget (``target.max_accuracy_drop``, relative to dense, and optionally
a size or speed floor); TaskPrune finds, for each allowed method, the largest compression level whose
**validation** accuracy stays within it, and picks the best of those by ``target.objective``.

The level search (``search_levels``) walks the grid ``target.levels`` upwards and stops after ``target.patience``
levels in a row outside the budget (accuracy falls with compression, so the levels above them are not tried), then
bisects ``target.refine`` times between the highest level inside and the first outside above it. Every point tried is kept (the frontier). The stages
after ``frontier`` run at the chosen point (``resolved``): the pruned model, its test accuracy, recovery and
registration are those of that one configuration.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from taskprune.config import Params, prune_for, set_dotted, validate
from taskprune.paths import Project, read_json


@dataclass
class Point:
    """One compression level of one method, measured."""

    method: str
    level: float
    validation_accuracy: float
    reduction: float              # share of the decoder-linear non-zero parameters removed (parameters, or zeros)
    bytes_on_disk: int
    bytes_fraction: float         # x dense
    speedup: float | None         # decode tokens/s x dense, timed side by side (None: not timed)
    within: bool = False          # inside every limit of the budget
    reasons: list[str] = field(default_factory=list)   # the limits it breaks, in words
    recovered: bool = False       # measured after recovery
    allocation: str = "uniform"   # uniform | search (the genetic search's per-matrix levels at this level)
    seconds: float = 0.0
    accuracy_bound: float | None = None   # one-sided lower confidence bound of the validation accuracy

    def as_dict(self) -> dict:
        return asdict(self)


def run_methods(params: Params) -> list[str]:
    """The methods this run may use: target mode's list, else ``prune.method``."""
    return list(params.target.methods) if params.target.enabled else [params.prune.method]


def run_label(params: Params) -> str:
    """What a run does, for flow run names: the method and how much, or in target mode the budget and methods."""
    if params.target.enabled:
        return f"within{params.target.max_accuracy_drop:g}-{'+'.join(params.target.methods)}"
    prune = params.prune
    return f"{prune.label}-{prune.method_object.settings_label(prune)}"


def statistics_needed(params: Params) -> tuple[str, ...]:
    """The calibration statistics every method of the run asks for, at its settings, in first-asked order."""
    from taskprune.methods import get_method

    needed: dict[str, None] = {}
    for name in run_methods(params):
        needed.update(dict.fromkeys(get_method(name).plan(prune_for(params.prune, name)).statistics))
    return tuple(needed)


def at_level(params: Params, method: str, level: float) -> Params:
    """``params`` with ``prune.method`` = ``method`` at compression ``level`` (the method's ``level_key``)."""
    from taskprune.methods import get_method

    raw = params.model_dump(mode="json")
    set_dotted(raw, ["prune", "method"], method)
    set_dotted(raw, ["prune", "allocation"], prune_for(params.prune, method).allocation)
    set_dotted(raw, get_method(method).level_key.split("."), round(float(level), 6))
    return validate(raw, f"target: method {method} at level {level:g}")


def accuracy_bound(items: dict[str, int], dense_items: dict[str, int], confidence: float) -> float:
    """A one-sided lower confidence bound of a model's accuracy from its per-item correctness paired with the dense
    model's on the same items: dense accuracy + mean change - z * standard error of the change. Items both get
    right or wrong add no uncertainty, so the bound is tight when the models mostly agree."""
    import math
    from statistics import NormalDist

    changes = [items[key] - dense_items[key] for key in dense_items]
    n = len(changes)
    mean = sum(changes) / n
    variance = sum((c - mean) ** 2 for c in changes) / (n - 1) if n > 1 else 0.0
    z = NormalDist().inv_cdf(confidence) if confidence > 0.5 else 0.0
    return sum(dense_items.values()) / n + mean - z * math.sqrt(variance / n)


def judge(point: Point, params: Params, dense_accuracy: float) -> Point:
    """Mark ``point`` inside or outside the budget, with the limits it breaks. Accuracy is judged by its lower
    confidence bound when the point has one (``target.confidence``): a level that is inside the budget only by the
    luck of the validation sample does not pass."""
    cfg = params.target
    floor = dense_accuracy * (1 - cfg.max_accuracy_drop)
    reasons = []
    if point.accuracy_bound is not None and point.accuracy_bound < floor - 1e-9:
        reasons.append(f"validation accuracy {point.validation_accuracy:.3f}, at least {point.accuracy_bound:.3f} at "
                       f"{cfg.confidence:.0%} confidence, < {floor:.3f} allowed")
    elif point.validation_accuracy < floor - 1e-9:
        reasons.append(f"validation accuracy {point.validation_accuracy:.3f} < {floor:.3f} allowed")
    if cfg.max_bytes_fraction is not None and point.bytes_fraction > cfg.max_bytes_fraction:
        reasons.append(f"bytes {point.bytes_fraction:.3f}x dense > {cfg.max_bytes_fraction:g}x allowed")
    if cfg.min_decode_speedup is not None and (point.speedup or 0.0) < cfg.min_decode_speedup:
        reasons.append(f"decode {point.speedup or 0:.2f}x dense < {cfg.min_decode_speedup:g}x required")
    point.reasons, point.within = reasons, not reasons
    return point


def search_levels(measure: Callable[[float], Point], levels: list[float], refine: int,
                  patience: int = 1) -> list[Point]:
    """The grid upwards until ``patience`` levels in a row are outside the budget (one unlucky level on a small
    validation sample does not end the walk), then ``refine`` bisection steps between the highest level inside
    (or 0) and the first level outside above it. Returns every point measured, in the order measured."""
    points: list[Point] = []
    inside, outside, misses = 0.0, None, 0
    for level in sorted(levels):
        point = measure(level)
        points.append(point)
        if point.within:
            inside, outside, misses = level, None, 0
            continue
        outside = level if outside is None else outside
        misses += 1
        if misses >= patience:
            break
    for _ in range(refine if outside is not None else 0):
        level = round((inside + outside) / 2, 4)
        if level in (inside, outside):
            break
        point = measure(level)
        points.append(point)
        inside, outside = (level, outside) if point.within else (inside, level)
    return points


OBJECTIVES: dict[str, Callable[[Point], float]] = {
    "parameters": lambda p: p.reduction,
    "bytes": lambda p: -p.bytes_fraction,
    "speed": lambda p: p.speedup or 0.0,
}


def choose(points: list[Point], objective: str) -> tuple[Point, bool]:
    """The best point inside the budget by ``objective`` (ties: the higher validation accuracy), or, when none
    is inside, the closest one (the highest validation accuracy). Returns (point, inside the budget)."""
    inside = [p for p in points if p.within]
    if inside:
        return max(inside, key=lambda p: (OBJECTIVES[objective](p), p.validation_accuracy)), True
    return max(points, key=lambda p: (p.validation_accuracy, -p.level)), False


def choice(project: Project) -> dict | None:
    """The frontier stage's choice (None when target mode was off)."""
    path = project.frontier / "frontier.json"
    return read_json(path)["choice"] if path.is_file() else None


def resolved(params: Params, project: Project) -> Params:
    """The parameters of the chosen point in target mode (``params`` itself otherwise)."""
    if not params.target.enabled:
        return params
    chosen = choice(project)
    if chosen is None:
        return params
    return at_level(params, chosen["method"], chosen["level"])
