"""The Python API: load any model directory the pipeline writes."""

from __future__ import annotations


def load(path, device: str = "cpu"):
    """(model, tokenizer) from a TaskPrune model directory (dense, pruned, recovered, in any format the
    methods export), ready for ``generate``; safetensors only, no remote code."""
    from pathlib import Path

    from taskprune.models.loading import load_local

    model, tokenizer, _ = load_local(Path(path), device)
    return model, tokenizer
