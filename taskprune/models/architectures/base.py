"""The arch interface: everything architecture-specific that the algorithms need.

Algorithms ask the architecture for the decoder layers and for each layer's prunable
linear modules, always seeing weights as ``(out_features, in_features)``.
Adding an architecture means adding one arch file.
"""

from __future__ import annotations

import operator
from typing import ClassVar

import torch
from torch import nn


class Architecture:
    """Base architecture for models whose linears are ``nn.Linear`` (weight is out x in)."""

    model_types: ClassVar[tuple[str, ...]] = ()
    layers_path: ClassVar[str] = ""
    linear_names: ClassVar[tuple[str, ...]] = ()
    weight_is_in_out: ClassVar[bool] = False  # PEFT's fan_in_fan_out (GPT-2's Conv1D)

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

    def lora_targets(self) -> list[str]:
        """PEFT ``target_modules``: the prunable linears' names within a layer (PEFT matches them as suffixes)."""
        return list(self.linear_names)
