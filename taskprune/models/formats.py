"""How a model directory is stored: a plain transformers checkpoint, or a factorized one (low-rank linears,
rebuilt by TaskPrune). A method declares the format of its result (``Plan.export``); loading, evaluation
and tracking ask the directory's format, never the method.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from taskprune.lowrank.export import LOWRANK_FILE
from taskprune.models.weights import read_weights, weight_files


def _load_checkpoint(path: Path):
    """A transformers checkpoint, its weights in memory of their own (``read_weights``: not views of a file
    mapping, so a model changed in place or consumed by the structured surgery frees what it no longer needs)."""
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    model_class = MODEL_FOR_CAUSAL_LM_MAPPING.get(type(config), None)
    if model_class is None or not weight_files(path):  # not a standard layout: transformers' own loading
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, use_safetensors=True,
                                                    trust_remote_code=False)
    model = model_class.from_pretrained(None, config=config, state_dict=read_weights(path, torch.float32),
                                        dtype=torch.float32)
    model.config.name_or_path = model.name_or_path = str(path)  # as from_pretrained(path) records them
    if (path / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(path)
    return model


def _save_checkpoint(model, tokenizer, out: Path) -> None:
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def _load_factorized(path: Path):
    from taskprune.lowrank import load_factorized

    return load_factorized(path)


def _save_factorized(model, tokenizer, out: Path) -> None:
    from taskprune.lowrank import factorized_ranks, save_factorized

    save_factorized(model, tokenizer, factorized_ranks(model), out)


@dataclass(frozen=True)
class ModelFormat:
    name: str
    marker: str | None                        # a file that only this format writes into the directory
    mlflow_flavour: str                       # "transformers": mlflow.transformers; "files": logged as files
    save: Callable[..., None]                 # save(model, tokenizer, out_dir)
    load: Callable[[Path], object]            # load(dir) -> model (float32, eval mode not set)


FORMATS = {
    "checkpoint": ModelFormat("checkpoint", None, "transformers", _save_checkpoint, _load_checkpoint),
    "factorized": ModelFormat("factorized", LOWRANK_FILE, "files", _save_factorized, _load_factorized),
}


def format_of(directory: Path) -> ModelFormat:
    """The format a model directory was saved in (its marker file; otherwise a plain checkpoint)."""
    for fmt in FORMATS.values():
        if fmt.marker and (directory / fmt.marker).is_file():
            return fmt
    return FORMATS["checkpoint"]
