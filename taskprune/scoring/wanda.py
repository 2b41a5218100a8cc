"""Wanda (Sun et al. 2023): score_ij = |W_ij| * ||X_j||_2."""

import torch


def wanda_scores(weight: torch.Tensor, square_sums: torch.Tensor) -> torch.Tensor:
    """``weight`` is (out, in); ``square_sums[j]`` is the sum over calibration tokens of x_j^2."""
    if square_sums.shape != (weight.shape[1],):
        raise ValueError(f"statistics have shape {tuple(square_sums.shape)}, expected ({weight.shape[1]},)")
    return weight.abs().float() * square_sums.float().sqrt().unsqueeze(0)
