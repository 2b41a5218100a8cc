"""OWL non-uniform layer sparsity (Yin et al. 2023, "Outlier Weighed Layerwise sparsity").

A decoder layer's outlier ratio is the fraction of its importance scores above
``m`` times the layer's mean score. Ratios are rescaled to a spread of
``2 * lam`` and shifted so the layers' densities average to ``1 - target``:
layers with more outliers keep more weights. Layer sizes are taken into
account, so the parameter-weighted mean sparsity equals the target.
"""

from __future__ import annotations

import torch


def outlier_ratio(layer_scores: list[torch.Tensor], m: float) -> float:
    """Fraction of a layer's scores above ``m`` times their mean."""
    flat = torch.cat([s.reshape(-1) for s in layer_scores])
    return (flat > m * flat.mean()).float().mean().item()


def owl_sparsities(ratios: list[float], sizes: list[int], target: float, lam: float) -> list[float]:
    """Per-layer sparsity whose size-weighted mean is ``target`` (clipped to [0, 0.99])."""
    d = torch.tensor(ratios, dtype=torch.float64)
    w = torch.tensor(sizes, dtype=torch.float64)
    spread = (d - d.min()) / (d.max() - d.min()) * 2 * lam if d.max() > d.min() else torch.zeros_like(d)
    density = spread - (spread * w).sum() / w.sum() + (1 - target)
    return [min(max(1 - x, 0.0), 0.99) for x in density.tolist()]
