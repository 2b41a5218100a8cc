"""LLM-Sieve low-rank projections: task-aware factors W ~= B A, factorized linears, smaller checkpoints.

For a weight W (d_out x d_in) and the second moment H = sum_t x_t x_t^T of its
inputs on calibration text, the rank-r matrix M minimising the output error
||(W - M) X||_F^2 = tr((W - M) H (W - M)^T) is the truncated SVD of W S taken
back through S^-1, where H = S S^T (whitened SVD, as in SVD-LLM). With the
eigendecomposition H = Q diag(l) Q^T, S = Q diag(sqrt l) and
S^-1 = diag(1/sqrt l) Q^T. One SVD gives every rank (nested truncations):

    W S = U diag(s) V^T,   B_r = U_r diag(sqrt s_r),   A_r = diag(sqrt s_r) V_r^T S^-1

and the relative output error at rank r is sum_{i>r} s_i^2 / sum_i s_i^2.

The closed form is the exact minimiser of that objective, so a few Adam steps on the
same objective cannot improve it; TaskPrune stops at the closed form (see the README).

A factorized linear stores A (``down``, r x d_in) and B (``up``, d_out x r); it pays
only when r (d_in + d_out) < d_in d_out. Levels are fractions of the dense
parameter count, level 0 being the dense matrix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from taskprune.calibration.accumulators import RELATIVE


@dataclass
class Factors:
    """Full-depth factors of one matrix: ``up[:, :r] @ down[:r]`` is its best rank-r approximation."""

    up: torch.Tensor        # B, d_out x k
    down: torch.Tensor      # A, k x d_in
    energy: torch.Tensor    # s_i^2, descending (output error accounting)

    def at_rank(self, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.up[:, :rank], self.down[:rank]

    def relative_error(self, rank: int) -> float:
        """Relative output error (w.r.t. the damped second moment) of the rank-``rank`` truncation."""
        return float(self.energy[rank:].sum() / self.energy.sum()) if self.energy.sum() > 0 else 0.0


def damped(hessian: torch.Tensor, damp: float) -> torch.Tensor:
    h = hessian.double()
    diag = torch.diagonal(h)
    level = diag.mean() if diag.mean() > 0 else torch.tensor(1.0, dtype=h.dtype)
    return h + damp * level * torch.eye(h.shape[0], dtype=h.dtype)


def whitened_factors(weight: torch.Tensor, hessian: torch.Tensor | None, damp: float = 0.01,
                     max_rank: int | None = None) -> Factors:
    """Output-aware factors of ``weight`` (d_out x d_in) for inputs with second moment ``hessian``.

    ``hessian=None`` gives the plain SVD of the weight (the data-free baseline).
    ``max_rank`` keeps only the first columns/rows (the largest rank any level uses).
    """
    w = weight.double()
    if hessian is None:
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        down_back = vh
    else:
        evals, q = torch.linalg.eigh(damped(hessian, damp))
        evals = evals.clamp_min(evals.max() * 1e-12)
        u, s, vh = torch.linalg.svd(w @ (q * evals.sqrt()), full_matrices=False)
        down_back = (vh / evals.sqrt()) @ q.T  # V^T S^-1
    k = s.numel() if max_rank is None else min(max_rank, s.numel())
    root = s[:k].sqrt()
    return Factors(up=(u[:, :k] * root).float().contiguous(), down=(root[:, None] * down_back[:k]).float().contiguous(),
                   energy=(s ** 2).float())


def output_error(weight: torch.Tensor, approx: torch.Tensor, hessian: torch.Tensor) -> float:
    """Relative output error tr(D H D^T) / tr(W H W^T) with D = W - approx."""
    h = hessian.double()
    diff = (weight - approx).double()
    return float(torch.einsum("ij,jk,ik->", diff, h, diff) / torch.einsum("ij,jk,ik->", weight.double(), h,
                                                                         weight.double()))


def breakeven_rank(d_out: int, d_in: int) -> float:
    return d_out * d_in / (d_out + d_in)


def level_fractions(levels: int, target_reduction: float) -> list[float]:
    """Parameter fraction of each level: 1 (dense), then equal steps down, one of them exactly
    ``1 - target_reduction`` (the uniform allocation's level), all above 0."""
    on_grid = max(1, round(target_reduction * levels))
    step = target_reduction / on_grid
    return [1.0 - k * step for k in range(levels) if 1.0 - k * step > 1e-9]


def rank_for_fraction(d_out: int, d_in: int, fraction: float) -> int | None:
    """The rank whose factors hold about ``fraction`` of the dense parameters; None = keep dense."""
    if fraction >= 1.0 - 1e-9:
        return None
    return max(1, int(round(fraction * breakeven_rank(d_out, d_in))))


def params_at(d_out: int, d_in: int, rank: int | None) -> int:
    return d_out * d_in if rank is None else rank * (d_out + d_in)


def mixed_moment(general: torch.Tensor | None, task: torch.Tensor, general_weight: float) -> torch.Tensor:
    """``w * G + (1 - w) * T`` with each side scaled to mean diagonal 1 (sides saw different token counts)."""
    def normalised(h):
        return h.double() / torch.diagonal(h).double().mean().clamp_min(1e-12)
    if general is None or general_weight == 0:
        return normalised(task)
    return general_weight * normalised(general) + (1 - general_weight) * normalised(task)


@torch.no_grad()
def sieve_factors(model: nn.Module, arch, moments: dict[str, dict[str, torch.Tensor]], general_weight: float,
                  damp: float, progress=None) -> dict[str, Factors]:
    """Output-aware factors of every decoder linear, up to the break-even rank (every level is a truncation).

    A linear whose output a norm rescales token by token also gets factors from its ``RELATIVE`` moment when
    calibration made one (key ``key + RELATIVE``): what reaches the model there is each token's error relative to its
    output. Neither weighting keeps more answers everywhere (on Gemma-3-270M it depends on the task and the level,
    bench/results/target_gemma.md), so the prune step builds both and keeps the one that scores higher on the
    calibration rows (``taskprune.methods.sieve``)."""
    factors = {}
    for key, module in arch.named_linears(model).items():
        weight = arch.weight(module)
        for which in (key, key + RELATIVE):
            if which not in moments["task"]:
                continue
            h = mixed_moment(moments["general"][which] if "general" in moments else None, moments["task"][which],
                             general_weight)
            factors[which] = whitened_factors(weight, h, damp, max_rank=int(breakeven_rank(*weight.shape)))
        if progress is not None:
            progress.update(1)
    return factors


def load_factors(path: Path) -> dict[str, Factors]:
    from safetensors.torch import load_file

    flat = load_file(str(path))
    keys = {name.rsplit("/", 1)[0] for name in flat}
    return {key: Factors(flat[f"{key}/up"], flat[f"{key}/down"], flat[f"{key}/energy"]) for key in keys}


def save_factors(path: Path, factors: dict[str, Factors]) -> None:
    from safetensors.torch import save_file

    flat = {}
    for key, f in factors.items():
        flat.update({f"{key}/up": f.up.contiguous(), f"{key}/down": f.down.contiguous(),
                     f"{key}/energy": f.energy.contiguous()})
    save_file(flat, str(path), metadata={"format": "taskprune-factors-v1"})
