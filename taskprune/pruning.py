"""Scores -> masks -> zeroed weights, over every decoder linear of a model (via its adapter)."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from taskprune import masks as masklib
from taskprune.scoring import scores_for


def compute_masks(model, adapter, method: str, stats: dict[str, torch.Tensor] | None, sparsity: float,
                  n_m: tuple[int, int] | None) -> dict[str, torch.Tensor]:
    """A keep-mask for every decoder linear, keyed like the calibration statistics."""
    result = {}
    for key, module in tqdm(adapter.named_linears(model).items(), desc=f"score {method}", unit="linear"):
        scores = scores_for(method, adapter.weight(module), stats[key] if stats is not None else None)
        result[key] = masklib.make_mask(scores, sparsity, n_m)
    return result


@torch.no_grad()
def apply_masks(model, adapter, masks: dict[str, torch.Tensor]) -> dict[str, float]:
    """Zero the masked weights in place; returns the achieved sparsity of every linear."""
    achieved = {}
    for key, module in adapter.named_linears(model).items():
        weight = adapter.weight(module)
        weight.mul_(masks[key].to(weight.dtype))
        achieved[key] = 1 - torch.count_nonzero(weight).item() / weight.numel()
    return achieved
