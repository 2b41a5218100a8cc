"""The methods as a table: what `taskprune methods` prints and the README lists (a test keeps them equal)."""

from __future__ import annotations

from taskprune.config import PruneConfig
from taskprune.methods.registry import get_method, method_names


def describe() -> list[dict[str, str]]:
    """One row per method, at its default settings: what `taskprune methods` prints and the README lists."""
    rows = []
    for name in method_names():
        method, cfg = get_method(name), PruneConfig(method=name)
        plan = method.plan(cfg)
        rows.append({"method": name, "what it does": method.summary,
                     "statistics": ", ".join(plan.statistics) or "none",
                     "search levels": plan.levels or "-", "result": plan.export})
    return rows
