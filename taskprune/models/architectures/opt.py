"""OPT decoders."""

from taskprune.models.architectures.base import Architecture


class OPTArchitecture(Architecture):
    model_types = ("opt",)
    layers_path = "model.decoder.layers"
    linear_names = (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "fc1", "fc2",
    )
