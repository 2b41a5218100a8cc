"""Modules for low-rank linears: the exported FactorizedLinear and the search's LevelLinear, and model surgery."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from taskprune.lowrank.factors import Factors


class FactorizedLinear(nn.Module):
    """``x -> up(down(x))``: a rank-r replacement of a linear (A = down.weight, B = up.weight)."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool):
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=bias)

    @classmethod
    def from_factors(cls, up: torch.Tensor, down: torch.Tensor, bias: torch.Tensor | None) -> FactorizedLinear:
        module = cls(down.shape[1], up.shape[0], down.shape[0], bias is not None)
        with torch.no_grad():
            module.down.weight.copy_(down)
            module.up.weight.copy_(up)
            if bias is not None:
                module.up.bias.copy_(bias)
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}"


class LevelLinear(nn.Module):
    """A linear that can run at any of its levels without rebuilding: dense weight, or a rank slice
    of precomputed full-depth factors. The genetic search sets ``rank`` per matrix per candidate."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, factors: Factors):
        super().__init__()
        self.weight = weight        # (out, in), shared with the original module's storage
        self.bias = bias
        self.up, self.down = factors.up, factors.down
        self.rank: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rank is None:
            return F.linear(x, self.weight, self.bias)
        return F.linear(F.linear(x, self.down[:self.rank]), self.up[:, :self.rank], self.bias)


def module_bias(module: nn.Module) -> torch.Tensor | None:
    return module.bias.data if getattr(module, "bias", None) is not None else None


def replace_module(root: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    setattr(root.get_submodule(parent_path) if parent_path else root, child, new)


def linear_paths(model: nn.Module, arch) -> dict[str, str]:
    """Matrix key ``"<layer>.<linear>"`` -> module path in the model."""
    names = {id(m): n for n, m in model.named_modules()}
    return {key: names[id(module)] for key, module in arch.named_linears(model).items()}


@torch.no_grad()
def factorize_model(model: nn.Module, arch, factors: dict[str, Factors], ranks: dict[str, int | None]) -> dict:
    """Replace every linear with a rank in ``ranks`` by a FactorizedLinear; returns {module path: rank}."""
    paths = linear_paths(model, arch)
    linears = arch.named_linears(model)
    done = {}
    for key, rank in ranks.items():
        if rank is None:
            continue
        up, down = factors[key].at_rank(rank)
        replace_module(model, paths[key], FactorizedLinear.from_factors(up, down, module_bias(linears[key])))
        done[paths[key]] = rank
    return done


@torch.no_grad()
def refill_factors(model: nn.Module, arch, factors: dict[str, Factors], ranks: dict[str, int | None],
                   suffix: str) -> list[str]:
    """In a model ``factorize_model`` made, put the factors ``key + suffix`` (at the same rank) into every
    factorized matrix that has them, in place; returns the keys changed. ``suffix=""`` puts back the first ones."""
    linears = arch.named_linears(model)
    changed = []
    for key, rank in ranks.items():
        if rank is None or key + suffix not in factors:
            continue
        up, down = factors[key + suffix].at_rank(rank)
        linears[key].up.weight.copy_(up)
        linears[key].down.weight.copy_(down)
        changed.append(key)
    return changed


def factorized_ranks(model: nn.Module) -> dict[str, int]:
    """Module path -> rank of every FactorizedLinear in ``model``."""
    return {name: module.rank for name, module in model.named_modules() if isinstance(module, FactorizedLinear)}
