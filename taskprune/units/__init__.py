"""Structured pruning's units (decoder layers, head groups, MLP channels): their importance and which are kept."""

from taskprune.units.importance import skip_losses, unit_importance
from taskprune.units.selection import Counts, choose, head_options, unit_counts

__all__ = ["Counts", "choose", "head_options", "skip_losses", "unit_counts", "unit_importance"]
