"""Cutting text into fixed-length token blocks (calibration and perplexity share this), each started the way
the model's tokenizer starts a text."""

from __future__ import annotations

import torch

from taskprune.errors import TaskPruneError


def text_prefix(tokenizer) -> list[int]:
    """The ids the tokenizer puts in front of every text: ``[BOS]`` for Gemma, Llama-3 and many others, none
    for tokenizers that add nothing (GPT-2, SmolLM2). Models trained with a BOS see one in use, so their
    calibration and perplexity blocks must start with it too."""
    probe = "a b"
    full = list(tokenizer(probe)["input_ids"])
    plain = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return full[:start]
    return []


def token_blocks(tokenizer, texts: list[str], seq_len: int, max_blocks: int) -> torch.Tensor:
    """Concatenate texts (blank-line separated), tokenize, and cut up to ``max_blocks`` blocks of ``seq_len``
    tokens, each the tokenizer's text prefix (its BOS, if it adds one) followed by text.

    Text is never repeated to fill blocks (repeats add compute, not information): a short
    text gives fewer blocks. Only a text shorter than one block is repeated to fill it.
    """
    prefix = text_prefix(tokenizer)
    body = seq_len - len(prefix)
    if body < 1:
        raise TaskPruneError(f"blocks of {seq_len} tokens leave no room for text after the tokenizer's prefix")
    need = body * max_blocks
    chosen, chars = [], 0
    for text in texts:  # tokenize only what can be used (a token is rarely under 1/6 of the characters)
        chosen.append(text)
        chars += len(text)
        if chars > need * 6:
            break
    ids = tokenizer("\n\n".join(chosen), add_special_tokens=False)["input_ids"]
    if not ids:
        raise TaskPruneError("calibration text is empty after tokenization")
    while len(ids) < body:
        ids = ids + ids
    blocks = min(max_blocks, len(ids) // body)
    text = torch.tensor(ids[: blocks * body], dtype=torch.long).view(blocks, body)
    return torch.cat([torch.tensor(prefix, dtype=torch.long).expand(blocks, len(prefix)), text], dim=1)
