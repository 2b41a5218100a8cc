"""Llama-style decoders: Llama (SmolLM2), Mistral, Qwen2, Qwen3 share these module and config names."""

from __future__ import annotations

import copy
import re

import torch
from torch import nn

from taskprune.models.architectures.base import Architecture, Keep, Units

# how each kept layer's tensors are sliced: (dimension, unit) per parameter name within the layer
_SLICES = {
    "mlp.gate_proj.weight": (0, "channel"), "mlp.gate_proj.bias": (0, "channel"),
    "mlp.up_proj.weight": (0, "channel"), "mlp.up_proj.bias": (0, "channel"),
    "mlp.down_proj.weight": (1, "channel"),
    "self_attn.q_proj.weight": (0, "query"), "self_attn.q_proj.bias": (0, "query"),
    "self_attn.k_proj.weight": (0, "kv"), "self_attn.k_proj.bias": (0, "kv"),
    "self_attn.v_proj.weight": (0, "kv"), "self_attn.v_proj.bias": (0, "kv"),
    "self_attn.o_proj.weight": (1, "query"),
}


class LlamaArchitecture(Architecture):
    model_types = ("llama", "mistral", "qwen2", "qwen3")
    layers_path = "model.layers"
    linear_names = (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
    )
    mlp_output = "mlp.down_proj"
    attention_output = "self_attn.o_proj"

    def units(self, config) -> Units:
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return Units(layers=config.num_hidden_layers, heads=heads,
                     kv_heads=getattr(config, "num_key_value_heads", None) or heads, head_dim=head_dim,
                     hidden=config.hidden_size, intermediate=config.intermediate_size)

    def shrunk_config(self, config, keep: Keep):
        units = self.units(config)
        groups = len(next(iter(keep.groups.values()))) if keep.groups else units.kv_heads
        new = copy.deepcopy(config)
        new.num_hidden_layers = len(keep.layers)
        new.intermediate_size = len(next(iter(keep.channels.values()))) if keep.channels else units.intermediate
        new.num_key_value_heads = groups
        new.num_attention_heads = groups * units.group_size
        new.head_dim = units.head_dim  # stays: heads are removed whole
        if getattr(new, "layer_types", None):  # Gemma-3, Qwen2: sliding or full attention per layer
            new.layer_types = [config.layer_types[i] for i in keep.layers]
        if getattr(new, "max_window_layers", None) is not None:  # Qwen2: layers below it use full attention
            new.max_window_layers = sum(1 for i in keep.layers if i < config.max_window_layers)
        return new

    def _rows(self, unit: str, units: Units, channels: list[int], groups: list[int]) -> torch.Tensor:
        if unit == "channel":
            return torch.tensor(channels)
        heads = [g * units.group_size + h for g in groups for h in range(units.group_size)] if unit == "query" \
            else groups
        return torch.tensor([head * units.head_dim + d for head in heads for d in range(units.head_dim)])

    @torch.no_grad()
    def shrink(self, model: nn.Module, keep: Keep) -> nn.Module:
        units = self.units(model.config)
        config = self.shrunk_config(model.config, keep)
        position = {old: new for new, old in enumerate(keep.layers)}
        pattern = re.compile(rf"{re.escape(self.layers_path)}\.(\d+)\.(.+)")
        state = {}
        for key, tensor in model.state_dict().items():
            match = pattern.fullmatch(key)
            if match is None:
                state[key] = tensor
                continue
            old, name = int(match[1]), match[2]
            if old not in position:
                continue
            if name in _SLICES:
                dim, unit = _SLICES[name]
                index = self._rows(unit, units, keep.channels.get(old, list(range(units.intermediate))),
                                   keep.groups.get(old, list(range(units.kv_heads))))
                tensor = tensor.index_select(dim, index)
            state[f"{self.layers_path}.{position[old]}.{name}"] = tensor.clone()
        smaller = type(model)(config).to(model.dtype)
        smaller.load_state_dict(state, strict=True)
        smaller.tie_weights()
        return smaller.eval()
