"""Least-squares refit of what a layer keeps: after some MLP channels (or head groups) are removed, the kept
columns of the output projection are solved again so that, on the calibration inputs, the layer's output stays
as close as it can to the dense layer's: ``W_K' = W H[:, K] (H[K, K] + damp)^-1`` with ``H = sum x x^T`` of
the projection's inputs (the classic channel-pruning reconstruction; the removed channels' average effect is
folded into the kept ones)."""

from __future__ import annotations

import torch


@torch.no_grad()
def refit_columns(weight: torch.Tensor, moment: torch.Tensor, keep: list[int], damp: float) -> torch.Tensor:
    """The kept columns ``keep`` of ``weight`` (out x in), refitted on the input second moment ``moment``."""
    index = torch.tensor(keep)
    h = moment.double()
    kept = h[index][:, index]
    kept = kept + damp * torch.diagonal(kept).mean().clamp_min(1e-12) * torch.eye(len(keep), dtype=torch.float64)
    cross = weight.double() @ h[:, index]
    return torch.linalg.solve(kept, cross.T).T.to(weight.dtype)


def head_columns(groups: list[int], group_size: int, head_dim: int) -> list[int]:
    """The attention output projection's input columns of the kept head groups."""
    width = group_size * head_dim
    return [g * width + c for g in groups for c in range(width)]
