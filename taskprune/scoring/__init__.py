"""Importance scores: pure functions ``(weight, statistics) -> scores`` (higher = keep)."""

from taskprune.scoring.magnitude import magnitude_scores
from taskprune.scoring.wanda import wanda_scores

__all__ = ["magnitude_scores", "wanda_scores"]
