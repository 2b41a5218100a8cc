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

    def output_norms(self, layer: nn.Module) -> dict[str, int | None]:
        attention = layer.self_attn  # Qwen3 and Gemma-3 normalize each head's query and key
        return {f"self_attn.{proj}": attention.head_dim for proj, norm in (("q_proj", "q_norm"), ("k_proj", "k_norm"))
                if hasattr(attention, norm)}

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
    def shrink(self, model: nn.Module, keep: Keep, consume: bool = False) -> nn.Module:
        """The smaller model, built on the meta device and given the kept tensors (no random init, no second copy).
        With ``consume`` the original model is used up: each of its tensors is released as soon as its kept part is
        copied, so the surgery needs about one model's memory rather than three (and nothing keeps the original's
        storage, such as a memory mapping of its weights file, alive)."""
        units = self.units(model.config)
        config = self.shrunk_config(model.config, keep)
        position = {old: new for new, old in enumerate(keep.layers)}
        pattern = re.compile(rf"{re.escape(self.layers_path)}\.(\d+)\.(.+)")
        state, made = {}, {}  # made: id of an original tensor -> its new value (tied weights appear twice)
        for key, tensor in model.state_dict(keep_vars=True).items():
            match = pattern.fullmatch(key)
            old, name = (int(match[1]), match[2]) if match else (None, key)
            if match and old not in position:
                _release(tensor, consume)
                continue
            if id(tensor) not in made:
                value = tensor.detach()
                if match and name in _SLICES:
                    dim, unit = _SLICES[name]
                    index = self._rows(unit, units, keep.channels.get(old, list(range(units.intermediate))),
                                       keep.groups.get(old, list(range(units.kv_heads))))
                    value = value.index_select(dim, index)
                else:  # a copy of its own: the original's storage (often one mapping of the whole file) can go
                    value = value.clone()
                made[id(tensor)] = value
                _release(tensor, consume)
            state[f"{self.layers_path}.{position[old]}.{name}" if match else key] = made[id(tensor)]
        with torch.device("meta"):
            smaller = type(model)(config)
        smaller.load_state_dict(state, strict=True, assign=True)
        for name, buffer in list(smaller.named_buffers()):  # non-persistent ones (rotary tables): the original's
            if buffer.is_meta:
                owner, _, attribute = name.rpartition(".")
                match = pattern.fullmatch(name)
                source = f"{self.layers_path}.{keep.layers[int(match[1])]}.{match[2]}" if match else name
                smaller.get_submodule(owner).register_buffer(attribute, model.get_buffer(source).clone(),
                                                             persistent=False)
        smaller.tie_weights()
        left = [name for name, tensor in [*smaller.named_parameters(), *smaller.named_buffers()] if tensor.is_meta]
        if left:
            raise RuntimeError(f"structured surgery left tensors without values: {left[:5]}")
        return smaller.eval()


def _release(tensor: torch.Tensor, consume: bool) -> None:
    """Free an original tensor's memory (when the caller hands the model over to the surgery)."""
    if consume:
        tensor.data = torch.empty(0, dtype=tensor.dtype)
