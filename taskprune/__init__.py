"""TaskPrune: make a language model smaller for one task.

``taskprune.load(path)`` loads any model directory the pipeline writes (dense, pruned,
recovered, or a factorized LLM-Sieve export) with transformers, ready for ``generate``.
"""

from taskprune.api import load

__all__ = ["load"]
