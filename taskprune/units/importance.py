"""How much each removable unit matters, on one calibration side (general or task text).

- MLP channel j of a layer: the RMS of its activation (the down projection's input channel j, from the
  calibration square sums) times the norm of its column of the down projection: the size of what the channel
  adds to the residual stream (Minitron's activation importance, made output-aware as Wanda does for weights).
- Head group (a KV head and the query heads sharing it): the same over the group's channels of the attention
  output projection's input (the heads' concatenated outputs), summed in quadrature.
- Decoder layer: ``skip`` measures the loss with the layer skipped (answer negative log-likelihood on task
  rows, next-token loss on general text) minus the dense loss; ``influence`` is the block influence from the
  calibration walk (1 - cosine of the layer's input and output hidden states).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

from taskprune.calibration.stats_io import SideStats
from taskprune.calibration.walk import LayerStandIn, hidden_of
from taskprune.models.architectures import Architecture
from taskprune.models.architectures.base import Units


def channel_importance(stats: SideStats, key: str, down: torch.Tensor) -> torch.Tensor:
    """Per MLP channel of one layer: activation RMS x the norm of its column of the down projection."""
    rms = (stats.square_sums[key].double() / max(stats.tokens, 1)).sqrt()
    return rms * down.double().norm(dim=0)


def group_importance(stats: SideStats, key: str, out_proj: torch.Tensor, units: Units) -> torch.Tensor:
    """Per head group of one layer: sqrt of the sum over its channels of (mean square x squared column norm)."""
    per_channel = stats.square_sums[key].double() / max(stats.tokens, 1) * out_proj.double().pow(2).sum(dim=0)
    return per_channel.reshape(units.kv_heads, -1).sum(dim=1).sqrt()


def unit_importance(model: nn.Module, arch: Architecture, stats: SideStats) -> dict[str, list[torch.Tensor]]:
    """``{"channels": [per layer], "groups": [per layer]}`` of one side."""
    units = arch.units(model.config)
    out: dict[str, list[torch.Tensor]] = {"channels": [], "groups": []}
    for i, layer in enumerate(arch.layers(model)):
        linears = arch.linears(layer)
        out["channels"].append(channel_importance(stats, f"{i}.{arch.mlp_output}", arch.weight(linears[arch.mlp_output])))
        out["groups"].append(group_importance(stats, f"{i}.{arch.attention_output}",
                                              arch.weight(linears[arch.attention_output]), units))
    return out


class _Skipped(LayerStandIn):
    """Stands in for a decoder layer and returns its input hidden states: the layer is skipped."""

    def forward(self, *args, **kwargs):
        return hidden_of(args, kwargs)


@contextlib.contextmanager
def skipped(model: nn.Module, arch: Architecture, index: int) -> Iterator[None]:
    layers = arch.layers(model)
    original = layers[index]
    layers[index] = _Skipped(original)
    try:
        yield
    finally:
        layers[index] = original


@torch.no_grad()
def mean_loss(model: nn.Module, batches: list[dict]) -> float:
    """Token-weighted mean loss over ``batches`` (``labels`` -100 where a token is not scored)."""
    total, count = 0.0, 0
    for batch in batches:
        tokens = int((batch["labels"][:, 1:] != -100).sum())
        total += float(model(**batch, use_cache=False).loss) * tokens
        count += tokens
    return total / max(count, 1)


def skip_losses(model: nn.Module, arch: Architecture, batches: dict[str, list[dict]]) -> dict[str, torch.Tensor]:
    """Per side, per decoder layer: the loss with that layer skipped minus the dense model's loss."""
    dense = {side: mean_loss(model, b) for side, b in batches.items()}
    out = {side: [] for side in batches}
    for index in tqdm(range(len(arch.layers(model))), desc="layer skip losses", unit="layer"):
        with skipped(model, arch, index):
            for side, b in batches.items():
                out[side].append(mean_loss(model, b) - dense[side])
    return {side: torch.tensor(values, dtype=torch.float64) for side, values in out.items()}
