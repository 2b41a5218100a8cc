"""Masks from scores (True = keep), and packed 1-bit storage.

Both rules compare weights within an output row, as Wanda does: every row ends
with exactly the same sparsity.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from taskprune import tensorfile


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


def pack(mask: torch.Tensor) -> torch.Tensor:
    """1 bit per weight (uint8), row-major."""
    return torch.from_numpy(np.packbits(mask.numpy().reshape(-1)))


def unpack(packed: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    count = shape[0] * shape[1]
    bits = np.unpackbits(packed.numpy(), count=count)
    return torch.from_numpy(bits.astype(bool)).reshape(shape)


def save_masks(path: Path, masks: dict[str, torch.Tensor]) -> None:
    shapes = {name: list(mask.shape) for name, mask in masks.items()}
    tensorfile.save({name: pack(mask) for name, mask in masks.items()}, path,
                    {"format": "taskprune-packed-masks-v1", "shapes": shapes})


def load_masks(path: Path) -> dict[str, torch.Tensor]:
    shapes = tensorfile.read_metadata(path)["shapes"]
    return {name: unpack(packed, tuple(shapes[name])) for name, packed in load_file(str(path)).items()}


def sparsity(mask: torch.Tensor) -> float:
    return 1.0 - mask.sum().item() / mask.numel()
