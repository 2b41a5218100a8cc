"""GPT-2: fused QKV and ``Conv1D`` modules whose weight is stored (in, out)."""

import torch
from torch import nn

from taskprune.models.architectures.base import Architecture


class GPT2Architecture(Architecture):
    model_types = ("gpt2",)
    layers_path = "transformer.h"
    linear_names = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    weight_is_in_out = True

    def weight(self, module: nn.Module) -> torch.Tensor:
        return module.weight.data.T  # Conv1D keeps (in, out); the transpose is a view
