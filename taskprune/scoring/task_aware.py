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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

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


def task_aware_scores(weight: torch.Tensor, general: ChannelStats, task: ChannelStats, *, alpha: float,
                      exclusive_fraction: float | None = None, tau: float | None = None,
                      ablation: str = "none") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused Wanda scores for one linear, with the task- and general-exclusive channel masks."""
    g_hat, t_hat = general.normalised_rms(), task.normalised_rms()
    s_g = wanda_scores(weight, g_hat.float() ** 2)
    s_t = wanda_scores(weight, t_hat.float() ** 2)
    none = torch.zeros_like(g_hat, dtype=torch.bool)
    if ablation == "general_only":
        return s_g / s_g.mean().clamp_min(EPS), none, none
    if ablation == "task_only":
        return s_t / s_t.mean().clamp_min(EPS), none, none
    if ablation == "no_partition":
        task_excl, general_excl = none, none
    elif ablation == "none":
        task_excl, general_excl = partition_channels(g_hat, t_hat, exclusive_fraction=exclusive_fraction, tau=tau)
    else:
        raise ValueError(f"unknown ablation {ablation!r}")
    return fuse_scores(s_g, s_t, task_excl, general_excl, alpha), task_excl, general_excl
