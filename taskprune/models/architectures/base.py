"""The arch interface: everything architecture-specific that the algorithms need.

Algorithms ask the architecture for the decoder layers and for each layer's prunable
linear modules, always seeing weights as ``(out_features, in_features)``.
Structured pruning also asks for the model's units (layers, head groups, MLP channels)
and for the surgery that removes some of them (``shrink``).
Adding an architecture means adding one arch file.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from taskprune.errors import TaskPruneError


@dataclass(frozen=True)
class Units:
    """The removable units of a decoder: layers, attention head groups (a KV head and the query heads sharing
    it) and MLP intermediate channels, with what one of each costs in decoder-linear parameters."""

    layers: int
    heads: int           # query heads per layer
    kv_heads: int        # key/value heads per layer (head groups)
    head_dim: int
    hidden: int
    intermediate: int

    @property
    def group_size(self) -> int:
        return self.heads // self.kv_heads

    @property
    def group_params(self) -> int:
        """q, k, v and o parameters of one head group."""
        return self.hidden * self.head_dim * 2 * (self.group_size + 1)

    @property
    def channel_params(self) -> int:
        """gate, up and down parameters of one MLP channel."""
        return 3 * self.hidden

    def layer_params(self, kv_heads: int | None = None, intermediate: int | None = None) -> int:
        kv = self.kv_heads if kv_heads is None else kv_heads
        return kv * self.group_params + (self.intermediate if intermediate is None else intermediate) * self.channel_params

    @property
    def decoder_linear_params(self) -> int:
        return self.layers * self.layer_params()


@dataclass(frozen=True)
class Keep:
    """What structured pruning keeps: decoder layers (original indices, in order) and, per kept layer, its MLP
    channels and head groups (the same count in every layer, so the config stays standard)."""

    layers: list[int]
    channels: dict[int, list[int]]
    groups: dict[int, list[int]]


class Architecture:
    """Base architecture for models whose linears are ``nn.Linear`` (weight is out x in)."""

    model_types: ClassVar[tuple[str, ...]] = ()
    layers_path: ClassVar[str] = ""
    linear_names: ClassVar[tuple[str, ...]] = ()
    weight_is_in_out: ClassVar[bool] = False  # PEFT's fan_in_fan_out (GPT-2's Conv1D)
    # structured pruning: the linear whose input is the MLP's intermediate channels, the one whose input is
    # the attention heads' concatenated outputs (empty: this architecture has no surgery)
    mlp_output: ClassVar[str] = ""
    attention_output: ClassVar[str] = ""

    def layers(self, model: nn.Module) -> nn.ModuleList:
        return operator.attrgetter(self.layers_path)(model)

    def linears(self, layer: nn.Module) -> dict[str, nn.Module]:
        return {name: layer.get_submodule(name) for name in self.linear_names}

    def named_linears(self, model: nn.Module) -> dict[str, nn.Module]:
        """All prunable linears, keyed ``"<layer index>.<name>"``."""
        return {f"{i}.{name}": module
                for i, layer in enumerate(self.layers(model))
                for name, module in self.linears(layer).items()}

    def weight(self, module: nn.Module) -> torch.Tensor:
        """The weight as (out_features, in_features); a view, so in-place edits reach the model."""
        return module.weight.data

    def in_features(self, module: nn.Module) -> int:
        return self.weight(module).shape[1]

    def output_norms(self, layer: nn.Module) -> dict[str, int | None]:
        """The linears of ``layer`` whose output an RMS norm divides, token by token, by its own size before it goes
        on (a post-norm, or Gemma-3's and Qwen3's per-head q/k norms): name -> the width of each normalized piece
        (a head's) or None for the whole output. What reaches the model from such a linear is its relative error per
        token, so calibration also collects their inputs' moments weighed accordingly (``RELATIVE``)."""
        return {}

    def lora_targets(self) -> list[str]:
        """PEFT ``target_modules``: the prunable linears' names within a layer (PEFT matches them as suffixes)."""
        return list(self.linear_names)

    # -- structured pruning ------------------------------------------------------------------------
    @property
    def shrinkable(self) -> bool:
        return bool(self.mlp_output)

    def units(self, config) -> Units:
        """The model's removable units, from its config."""
        raise TaskPruneError(
            f"architecture {getattr(config, 'model_type', '?')!r}: structured pruning (removing layers, heads or "
            "MLP channels) is not supported for it; supported: "
            "llama, mistral, qwen2, qwen3, gemma, gemma2, gemma3_text")

    def shrink(self, model: nn.Module, keep: Keep) -> nn.Module:
        """A new model of the same class with a smaller config, holding the kept units' weights."""
        raise TaskPruneError(f"architecture {getattr(model.config, 'model_type', '?')!r}: no structured surgery")
