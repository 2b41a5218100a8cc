"""Importance scores: pure functions ``(weight, statistics) -> scores`` (higher = keep)."""

from __future__ import annotations

import torch

from taskprune.scoring.magnitude import magnitude_scores
from taskprune.scoring.wanda import wanda_scores


def scores_for(method: str, weight: torch.Tensor, square_sums: torch.Tensor | None) -> torch.Tensor:
    if method == "magnitude":
        return magnitude_scores(weight)
    if method == "wanda":
        if square_sums is None:
            raise ValueError("wanda needs calibration statistics")
        return wanda_scores(weight, square_sums)
    raise ValueError(f"unknown scoring method {method!r}")
