"""Masks from scores (True = keep). Both rules compare weights within an output row, as Wanda does: every
row ends with exactly the same sparsity."""

from __future__ import annotations

import torch


def lowest_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Zero the ``k`` lowest-scoring weights of every output row."""
    mask = torch.ones_like(scores, dtype=torch.bool)
    if k:
        mask.scatter_(1, torch.topk(scores, k, dim=1, largest=False).indices, False)
    return mask


def unstructured_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Zero the ``floor(in * sparsity)`` lowest-scoring weights of every output row."""
    return lowest_k_mask(scores, int(scores.shape[1] * sparsity))


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the ``n`` highest-scoring weights of every ``m`` consecutive inputs of a row (N:M)."""
    rows, cols = scores.shape
    if cols % m:
        raise ValueError(f"N:M pattern {n}:{m} needs in_features divisible by {m}, got {cols}")
    groups = scores.reshape(rows, cols // m, m)
    lowest = torch.topk(groups, m - n, dim=2, largest=False).indices
    mask = torch.ones_like(groups, dtype=torch.bool)
    mask.scatter_(2, lowest, False)
    return mask.reshape(rows, cols)


def make_mask(scores: torch.Tensor, sparsity: float, n_m: tuple[int, int] | None) -> torch.Tensor:
    return nm_mask(scores, *n_m) if n_m else unstructured_mask(scores, sparsity)



def sparsity(mask: torch.Tensor) -> float:
    return 1.0 - mask.sum().item() / mask.numel()
