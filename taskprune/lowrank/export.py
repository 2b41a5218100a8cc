"""Factorized checkpoints: safetensors weights plus lowrank.json (rank per module), rebuilt with transformers."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from taskprune.lowrank.modules import FactorizedLinear, module_bias, replace_module

LOWRANK_FILE = "lowrank.json"  # in an exported model directory: rank per factorized module


def save_factorized(model: nn.Module, tokenizer, ranks: dict[str, int], out_dir: Path) -> None:
    """A safetensors model directory plus ``lowrank.json`` (rank per factorized module path)."""
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    (out_dir / LOWRANK_FILE).write_text(json.dumps({"format": "taskprune-lowrank-v1", "ranks": ranks}, indent=2,
                                                   sort_keys=True) + "\n", encoding="utf-8")


def load_factorized(directory: Path, dtype: torch.dtype = torch.float32):
    """Rebuild an exported factorized model with transformers: config -> model -> FactorizedLinears -> weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from taskprune.models.weights import read_weights

    spec = json.loads((directory / LOWRANK_FILE).read_text(encoding="utf-8"))
    config = AutoConfig.from_pretrained(directory, trust_remote_code=False)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=False)
    for path, rank in spec["ranks"].items():
        old = model.get_submodule(path)
        out_features, in_features = (old.weight.shape[1], old.weight.shape[0]) if type(old).__name__ == "Conv1D" \
            else old.weight.shape
        replace_module(model, path, FactorizedLinear(in_features, out_features, rank, module_bias(old) is not None))
    missing, unexpected = model.load_state_dict(read_weights(directory), strict=False)
    model.tie_weights()
    tied = {name for name, _ in model.named_parameters(remove_duplicate=False)} - set(dict(model.named_parameters()))
    if getattr(config, "tie_word_embeddings", False):
        missing = [m for m in missing if m not in tied and not m.endswith("lm_head.weight")]
    if missing or unexpected:
        raise ValueError(f"{directory}: weights do not match {LOWRANK_FILE} "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.to(dtype).eval()

