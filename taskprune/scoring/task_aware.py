"""Task-aware fusion of importance scores (after arXiv 2510.22489, from its abstract).

1. Per input channel j of a linear, the activation RMS on general text (D_G)
   and on task text (D_T) is normalised to mean 1 over the layer's channels:
   ``g_j = rms_G(j) / mean_k rms_G(k)`` and likewise ``t_j``. This removes the
   overall scale difference between the two corpora, leaving the shape.
2. Channels are compared by ``r_j = log(t_j / g_j)``. The channels with the
   largest ``|r_j|`` (the top ``exclusive_fraction``, or ``|r_j| > tau``) are
   *exclusive* to the side that dominates (task if ``r_j > 0``); the rest are *shared*.
3. Base scores are computed once per side (Wanda: ``|W| * rms``) and each is
   normalised by its mean over the layer. Shared columns get
   ``alpha * S_G + (1 - alpha) * S_T``; exclusive columns the dominant side's score.

Ablations: ``no_partition`` (every channel shared: the plain weighted average),
``task_only`` (S_T), ``general_only`` (S_G).

With SparseGPT as the base, each side's layer-input Hessian is normalised to mean
diagonal 1 (its diagonal is the square sums, so the partition is the same as
above); the per-side scores are the OBS saliencies ``w^2 / [H_side^-1]_jj^2``, fused
block by block as above, and the OBS update uses ``alpha * H_G + (1 - alpha) * H_T``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from taskprune.scoring.sparsegpt import inverse_hessian_factor, obs_saliency, sparsegpt_prune
from taskprune.scoring.wanda import wanda_scores

EPS = 1e-12


@dataclass(frozen=True)
class ChannelStats:
    """Sum of squares per input channel and the number of tokens it was summed over."""

    square_sums: torch.Tensor
    tokens: int

    def normalised_rms(self) -> torch.Tensor:
        rms = (self.square_sums.double() / max(self.tokens, 1)).sqrt()
        return rms / rms.mean().clamp_min(EPS)


def ablation_sides(ablation: str) -> list[str]:
    """The calibration sides a fusion setting reads: one for ``general_only``/``task_only``, else both."""
    return {"general_only": ["general"], "task_only": ["task"]}.get(ablation, ["general", "task"])


def exclusive_settings(cfg) -> dict:
    """``partition_channels``'s keyword arguments from ``prune.task_aware`` (a ``TaskAwareConfig``)."""
    return {"exclusive_fraction": cfg.exclusive_fraction if cfg.partition == "fraction" else None,
            "tau": cfg.tau if cfg.partition == "threshold" else None}


def fuse_units(general: torch.Tensor, task: torch.Tensor, cfg) -> torch.Tensor:
    """Task-aware fusion of one vector of unit importances per side (MLP channels, head groups or layers of a
    model; ``cfg``: ``prune.task_aware``): each side normalised to mean 1, units whose sides differ most are
    exclusive to the dominant side and take its score, the rest the weighted sum; ablations as for weights."""
    general, task = general.double().clamp_min(EPS), task.double().clamp_min(EPS)
    if cfg.ablation == "general_only":
        return general / general.mean()
    if cfg.ablation == "task_only":
        return task / task.mean()
    g, t = general / general.mean(), task / task.mean()
    if cfg.ablation == "no_partition":
        task_exclusive = general_exclusive = torch.zeros_like(g, dtype=torch.bool)
    else:
        task_exclusive, general_exclusive = partition_channels(g, t, **exclusive_settings(cfg))
    return fuse_scores(g[None], t[None], task_exclusive, general_exclusive, cfg.alpha)[0]


def partition_channels(general: torch.Tensor, task: torch.Tensor, *, exclusive_fraction: float | None = None,
                       tau: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean masks (task-exclusive, general-exclusive) over input channels.

    ``general`` and ``task`` are normalised channel RMS values. Exactly one of
    ``exclusive_fraction`` (top fraction by |log ratio|) or ``tau`` (threshold on it) is used.
    """
    if (exclusive_fraction is None) == (tau is None):
        raise ValueError("give exactly one of exclusive_fraction or tau")
    ratio = torch.log((task.double() + EPS) / (general.double() + EPS))
    if tau is not None:
        exclusive = ratio.abs() > tau
    else:
        count = int(round(exclusive_fraction * ratio.numel()))
        exclusive = torch.zeros_like(ratio, dtype=torch.bool)
        if count:
            exclusive[torch.topk(ratio.abs(), count).indices] = True
    return exclusive & (ratio > 0), exclusive & (ratio < 0)


def fuse_scores(general_scores: torch.Tensor, task_scores: torch.Tensor, task_exclusive: torch.Tensor,
                general_exclusive: torch.Tensor, alpha: float) -> torch.Tensor:
    """Per-layer normalised fusion; columns are input channels."""
    s_g = general_scores / general_scores.mean().clamp_min(EPS)
    s_t = task_scores / task_scores.mean().clamp_min(EPS)
    fused = alpha * s_g + (1 - alpha) * s_t
    fused[:, task_exclusive] = s_t[:, task_exclusive]
    fused[:, general_exclusive] = s_g[:, general_exclusive]
    return fused


def _exclusive_channels(general: ChannelStats, task: ChannelStats, ablation: str,
                        exclusive_fraction: float | None, tau: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    g_hat, t_hat = general.normalised_rms(), task.normalised_rms()
    if ablation == "none":
        return partition_channels(g_hat, t_hat, exclusive_fraction=exclusive_fraction, tau=tau)
    if ablation in ("no_partition", "task_only", "general_only"):
        none = torch.zeros_like(g_hat, dtype=torch.bool)
        return none, none
    raise ValueError(f"unknown ablation {ablation!r}")


def task_aware_scores(weight: torch.Tensor, general: ChannelStats, task: ChannelStats, *, alpha: float,
                      exclusive_fraction: float | None = None, tau: float | None = None,
                      ablation: str = "none") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused Wanda scores for one linear, with the task- and general-exclusive channel masks."""
    g_hat, t_hat = general.normalised_rms(), task.normalised_rms()
    s_g = wanda_scores(weight, g_hat.float() ** 2)
    s_t = wanda_scores(weight, t_hat.float() ** 2)
    task_excl, general_excl = _exclusive_channels(general, task, ablation, exclusive_fraction, tau)
    if ablation == "general_only":
        return s_g / s_g.mean().clamp_min(EPS), task_excl, general_excl
    if ablation == "task_only":
        return s_t / s_t.mean().clamp_min(EPS), task_excl, general_excl
    return fuse_scores(s_g, s_t, task_excl, general_excl, alpha), task_excl, general_excl


def task_aware_sparsegpt(weight: torch.Tensor, general_hessian: torch.Tensor, task_hessian: torch.Tensor, *,
                         alpha: float, sparsity: float, n_m: tuple[int, int] | None = None,
                         exclusive_fraction: float | None = None, tau: float | None = None, ablation: str = "none",
                         blocksize: int = 128, damp: float = 0.01
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """SparseGPT with fused saliencies: (pruned weight, keep mask, task-exclusive, general-exclusive)."""
    h_g = general_hessian.double() / torch.diagonal(general_hessian).double().mean().clamp_min(EPS)
    h_t = task_hessian.double() / torch.diagonal(task_hessian).double().mean().clamp_min(EPS)
    task_excl, general_excl = _exclusive_channels(
        ChannelStats(torch.diagonal(h_g), 1), ChannelStats(torch.diagonal(h_t), 1), ablation, exclusive_fraction, tau)
    prune = dict(sparsity=sparsity, n_m=n_m, blocksize=blocksize, damp=damp)
    if ablation in ("general_only", "task_only"):
        w, keep = sparsegpt_prune(weight, h_g if ablation == "general_only" else h_t, **prune)
        return w, keep, task_excl, general_excl
    d_g = torch.diagonal(inverse_hessian_factor(h_g, damp)[0])
    d_t = torch.diagonal(inverse_hessian_factor(h_t, damp)[0])

    def fused(block: torch.Tensor, _diag: torch.Tensor, start: int) -> torch.Tensor:
        cols = slice(start, start + block.shape[1])
        return fuse_scores(obs_saliency(block, d_g[cols]), obs_saliency(block, d_t[cols]),
                           task_excl[cols], general_excl[cols], alpha)

    w, keep = sparsegpt_prune(weight, alpha * h_g + (1 - alpha) * h_t, **prune, block_scores=fused)
    return w, keep, task_excl, general_excl
