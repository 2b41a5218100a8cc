"""TaskPrune: make a language model smaller for one task.

``taskprune.load(path)`` loads any model directory the pipeline writes (dense, pruned,
recovered, or a factorized LLM-Sieve export) with transformers, ready for ``generate``.
"""

from __future__ import annotations


def load(path, device: str = "cpu"):
    """(model, tokenizer) from a TaskPrune model directory; safetensors only, no remote code."""
    from pathlib import Path

    from taskprune.models.loading import load_local

    model, tokenizer, _ = load_local(Path(path), device)
    return model, tokenizer
