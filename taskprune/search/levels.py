"""Putting one matrix of a loaded model at any compression level without rebuilding the model.

The search's fitness workers hold one model and switch matrices between levels for every genome:
``SparsityLevels`` masks the dense weight by a precomputed per-row rank of its scores,
``RankLevels`` runs a rank slice of precomputed full-depth factors. The method chooses which.
"""

from __future__ import annotations

import torch

from taskprune.lowrank import LevelLinear, linear_paths, module_bias, replace_module


def row_ranks(scores: torch.Tensor) -> torch.Tensor:
    """Position of every weight in its row's ascending score order (0 = pruned first)."""
    order = scores.argsort(dim=1, stable=True)
    ranks = torch.empty_like(order, dtype=torch.int32)
    ranks.scatter_(1, order, torch.arange(scores.shape[1], dtype=torch.int32).expand_as(order).contiguous())
    return ranks


class SparsityLevels:
    """``set(key, sparsity)``: the dense weight with its lowest-scoring share of every row zeroed (None = dense)."""

    def __init__(self, model, arch, keys: list[str], scorer):
        linears = arch.named_linears(model)
        self.weights = {key: arch.weight(linears[key]) for key in keys}
        self.dense = {key: w.clone() for key, w in self.weights.items()}
        self.ranks = {key: row_ranks(scorer(key, self.dense[key])[0]) for key in keys}

    def set(self, key: str, value: float | None) -> None:
        dense = self.dense[key]
        kept = None if value is None else self.ranks[key] >= int(dense.shape[1] * value)
        self.weights[key].copy_(dense if kept is None else dense * kept)


class RankLevels:
    """``set(key, rank)``: the matrix runs as a rank slice of its factors (None = the dense weight)."""

    def __init__(self, model, arch, keys: list[str], factors: dict):
        linears = arch.named_linears(model)
        paths = linear_paths(model, arch)
        self.modules = {}
        for key in keys:
            module = linears[key]
            level = LevelLinear(arch.weight(module), module_bias(module), factors[key])
            replace_module(model, paths[key], level)
            self.modules[key] = level

    def set(self, key: str, value: int | None) -> None:
        self.modules[key].rank = value
