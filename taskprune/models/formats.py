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


def _load_checkpoint(path: Path, owned: bool = False):
    """A transformers checkpoint. ``owned``: each weight in memory of its own (``read_weights``), for a model that
    is changed in place or consumed (pruning, the structured surgery, training); otherwise transformers' loading,
    whose weights are views of the file's memory mapping: pages count only once read, so a stage that reads few
    of them (score) stays small, but they stay resident until the last tensor of the file goes."""
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    if owned:
        config = AutoConfig.from_pretrained(path, trust_remote_code=False)
        model_class = MODEL_FOR_CAUSAL_LM_MAPPING.get(type(config), None)
        if model_class is not None and weight_files(path):  # a standard layout (else transformers' own loading)
            model = model_class.from_pretrained(None, config=config, state_dict=read_weights(path, torch.float32),
                                                dtype=torch.float32)
            model.config.name_or_path = model.name_or_path = str(path)  # as from_pretrained(path) records them
            if (path / "generation_config.json").is_file():
                model.generation_config = GenerationConfig.from_pretrained(path)
            return model
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, use_safetensors=True,
                                                trust_remote_code=False)


def _save_checkpoint(model, tokenizer, out: Path) -> None:
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def _load_factorized(path: Path, owned: bool = False):  # rebuilt module by module: always its own memory
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
    load: Callable[[Path, bool], object]      # load(dir, owned) -> model (float32, eval mode not set)


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
