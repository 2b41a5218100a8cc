"""Safetensors files with TaskPrune's metadata, byte-for-byte reproducible.

safetensors keeps a file's metadata in a hash map, so several keys come out in a different order
from one process to the next: the same tensors gave different bytes (and DVC hashes). All of
TaskPrune's metadata therefore goes into one key holding sorted JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

META_KEY = "taskprune"


def save(tensors: dict[str, torch.Tensor], path: Path | str, metadata: dict) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata={META_KEY: json.dumps(metadata, sort_keys=True)})


def read_metadata(path: Path | str) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        raw = fh.metadata() or {}
    return json.loads(raw[META_KEY]) if META_KEY in raw else dict(raw)
