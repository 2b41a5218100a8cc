"""Cutting text into fixed-length token blocks (calibration and perplexity share this)."""

from __future__ import annotations

import torch

from taskprune.errors import TaskPruneError


def token_blocks(tokenizer, texts: list[str], seq_len: int, max_blocks: int) -> torch.Tensor:
    """Concatenate texts (blank-line separated), tokenize, and cut up to ``max_blocks`` blocks of ``seq_len``.

    Text is never repeated to fill blocks (repeats add compute, not information): a short
    text gives fewer blocks. Only a text shorter than one block is repeated to fill it.
    """
    need = seq_len * max_blocks
    chosen, chars = [], 0
    for text in texts:  # tokenize only what can be used (a token is rarely under 1/6 of the characters)
        chosen.append(text)
        chars += len(text)
        if chars > need * 6:
            break
    ids = tokenizer("\n\n".join(chosen), add_special_tokens=False)["input_ids"]
    if not ids:
        raise TaskPruneError("calibration text is empty after tokenization")
    while len(ids) < seq_len:
        ids = ids + ids
    blocks = min(max_blocks, len(ids) // seq_len)
    return torch.tensor(ids[: blocks * seq_len], dtype=torch.long).view(blocks, seq_len)
