"""Llama-style decoders: Llama (SmolLM2), Mistral, Qwen2, Qwen3 share these module names."""

from taskprune.models.architectures.base import Architecture


class LlamaArchitecture(Architecture):
    model_types = ("llama", "mistral", "qwen2", "qwen3")
    layers_path = "model.layers"
    linear_names = (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
    )
