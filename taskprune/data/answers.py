"""Multiple-choice rows as training/scoring batches: the query, then the right answer, with the loss
(or the log-likelihood) on the answer tokens only. LoRA recovery and the search's fitness share this."""

from __future__ import annotations

import torch

from taskprune.data.schema import Example
from taskprune.data.tokens import text_prefix


def encode(tokenizer, examples: list[Example], max_len: int) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels) per example: the tokenizer's text prefix (BOS) and the query, labelled -100, then the
    answer's ids. Long rows lose their start, never the answer."""
    prefix = text_prefix(tokenizer)
    encoded = []
    for ex in examples:
        query = prefix + tokenizer(ex.query, add_special_tokens=False)["input_ids"]
        answer = tokenizer(" " + ex.choices[ex.gold], add_special_tokens=False)["input_ids"]
        ids = (query + answer)[-max_len:]
        labels = ([-100] * len(query) + answer)[-max_len:]
        encoded.append((ids, labels))
    return encoded


def collate(rows: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (row_ids, row_labels) in enumerate(rows):  # right padding
        ids[i, :len(row_ids)] = torch.tensor(row_ids)
        labels[i, :len(row_labels)] = torch.tensor(row_labels)
        attention[i, :len(row_ids)] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": attention}
