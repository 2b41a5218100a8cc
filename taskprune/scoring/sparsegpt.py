"""SparseGPT (Frantar & Alistarh 2023): one-shot pruning with an OBS weight update.

For a linear with weight W (out x in) and layer-input Hessian H = sum_t x_t x_t^T,
columns are pruned left to right in blocks. Within a block the mask is chosen
from the OBS saliency ``w^2 / [H^-1]_jj^2`` (per output row, like every mask rule
here; N:M groups are chosen lazily when the loop reaches them, on the already
updated weights), and each pruned weight's error is spread over the not yet
processed columns through the upper Cholesky factor of ``H^-1``. Dampening adds
``damp * mean(diag H)`` to the diagonal; inputs that never fire (H_jj = 0) have
their column zeroed.

This module is pure tensor code; the sequential driver (each layer calibrated on
the outputs of the already pruned layers) is in ``taskprune.pruning``.
"""

from __future__ import annotations

from typing import Callable

import torch

from taskprune import masks as masklib
from taskprune.errors import TaskPruneError

# (weights of the block's columns, diag of the inverse-Hessian factor there, first column) -> scores
BlockScores = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


def inverse_hessian_factor(hessian: torch.Tensor, damp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Upper Cholesky factor of the dampened ``H^-1`` (float32) and the mask of dead input channels."""
    h = hessian.detach().to(torch.float64).clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    h.diagonal().add_(damp * torch.diagonal(h).mean())
    try:
        inverse = torch.cholesky_inverse(torch.linalg.cholesky(h))
        factor = torch.linalg.cholesky(inverse, upper=True)
    except torch.linalg.LinAlgError:
        raise TaskPruneError(f"SparseGPT: the layer-input Hessian is not positive definite with "
                             f"damp={damp}; raise prune.sparsegpt.damp") from None
    return factor.to(torch.float32), dead


def obs_saliency(weights: torch.Tensor, diag: torch.Tensor) -> torch.Tensor:
    """SparseGPT's pruning score: ``w^2 / [H^-1 factor]_jj^2`` (higher = keep)."""
    return weights.pow(2) / diag.pow(2).unsqueeze(0)


@torch.no_grad()
def sparsegpt_prune(weight: torch.Tensor, hessian: torch.Tensor, sparsity: float,
                    n_m: tuple[int, int] | None = None, *, blocksize: int = 128, damp: float = 0.01,
                    block_scores: BlockScores | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pruned and OBS-updated weight (float32, out x in) and its keep-mask.

    Every row ends with exactly ``floor(in * sparsity)`` zeros (unstructured) or N of
    every M kept. ``block_scores`` replaces the OBS saliency (task-aware fusion uses it).
    """
    rows, cols = weight.shape
    if n_m and (cols % n_m[1] or blocksize % n_m[1]):
        raise ValueError(f"N:M {n_m[0]}:{n_m[1]} needs in_features ({cols}) and blocksize ({blocksize}) "
                         f"divisible by {n_m[1]}")
    score = block_scores or (lambda w, d, _start: obs_saliency(w, d))
    w = weight.detach().to(torch.float32).clone()
    factor, dead = inverse_hessian_factor(hessian, damp)
    w[:, dead] = 0
    keep = torch.ones(rows, cols, dtype=torch.bool, device=w.device)
    for start in range(0, cols, blocksize):
        end = min(start + blocksize, cols)
        block = w[:, start:end].clone()
        f_block = factor[start:end, start:end]
        diag = torch.diagonal(f_block)
        errors = torch.zeros_like(block)
        if not n_m:  # pruned per row so far, rounded down, so the rows reach floor(cols * sparsity) exactly
            count = int(end * sparsity) - int(start * sparsity)
            keep[:, start:end] = masklib.lowest_k_mask(score(block, diag, start), count)
        dropped = (~keep[:, start:end]).to(block.dtype)
        for i in range(end - start):
            if n_m and i % n_m[1] == 0:
                group = slice(i, i + n_m[1])
                keep[:, start + i:start + i + n_m[1]] = masklib.nm_mask(
                    score(block[:, group], diag[group], start + i), *n_m)
                dropped[:, group] = (~keep[:, start + i:start + i + n_m[1]]).to(block.dtype)
            error = block[:, i] * dropped[:, i] / diag[i]  # dropped: 1.0 where the mask prunes
            block[:, i:].addr_(error, f_block[i, i:], alpha=-1)  # leaves column i at its kept value
            errors[:, i] = error
        w[:, start:end] = block
        w[:, end:] -= errors @ factor[start:end, end:]
    w[~keep] = 0
    return w, keep
