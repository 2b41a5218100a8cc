"""Everything measured of one in-memory model: accuracy, perplexity, decode speed."""

from __future__ import annotations

from pathlib import Path

from taskprune.evaluation.accuracy import run_lm_eval
from taskprune.evaluation.perplexity import perplexity
from taskprune.evaluation.size import decode_tokens_per_s, paired_decode


def evaluate_loaded(model, tokenizer, test_jsonl: Path, held_out: list[str], cfg, device: str, dense=None) -> dict:
    """Task accuracy, perplexity and decode speed of an in-memory model (``cfg``: EvaluateConfig). With ``dense``,
    decode is timed side by side with it (``decode``: medians, ranges, the ratio, whether it is within noise)."""
    result = run_lm_eval(model, tokenizer, test_jsonl, cfg.batch_size, cfg.limit, device)
    result.update(perplexity(model, tokenizer, held_out, cfg.perplexity_seq_len, min(cfg.batch_size, 8), device))
    if dense is None:
        result["tokens_per_s"] = round(decode_tokens_per_s(model, tokenizer, cfg.decode_tokens, device), 2)
    else:
        result["decode"] = paired_decode(model, dense, tokenizer, cfg.decode_tokens, device, cfg.decode_rounds)
        result["tokens_per_s"] = result["decode"]["tokens_per_s"][1]
    return result
