"""Everything measured of one in-memory model: accuracy, perplexity, decode speed."""

from __future__ import annotations

from pathlib import Path

from taskprune.evaluation.accuracy import run_lm_eval
from taskprune.evaluation.perplexity import perplexity
from taskprune.evaluation.size import decode_tokens_per_s


def evaluate_loaded(model, tokenizer, test_jsonl: Path, held_out: list[str], cfg, device: str,
                    time_decode: bool = True) -> dict:
    """Task accuracy, perplexity and (unless ``time_decode`` is false: the caller times it side by side with dense,
    ``paired_decode``) decode speed of an in-memory model (``cfg``: EvaluateConfig)."""
    result = run_lm_eval(model, tokenizer, test_jsonl, cfg.batch_size, cfg.limit, device)
    result.update(perplexity(model, tokenizer, held_out, cfg.perplexity_seq_len, min(cfg.batch_size, 8), device))
    if time_decode:
        result["tokens_per_s"] = round(decode_tokens_per_s(model, tokenizer, cfg.decode_tokens, device), 2)
    return result
