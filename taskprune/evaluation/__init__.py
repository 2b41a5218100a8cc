"""Evaluation: task accuracy through lm-eval, general perplexity, size, decode speed.

lm-eval gets a ``multiple_choice`` task written from the test JSONL (acc,
acc_norm); the model is passed in memory (``HFLM(pretrained=model)``).
Perplexity is token-level over the held-out general text cut into fixed blocks
and batched: lm-eval's rolling log-likelihood pads every document to the longest
one and took about 50 s for 32 short documents on 2 cores, against a few seconds here.
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from taskprune.data.tokens import token_blocks

MC_TASK = "taskprune_mc"


def write_task_yaml(directory: Path, test_jsonl: Path) -> None:
    """An lm-eval task over the test JSONL: prompt ``query``, continuations ``choices``, answer ``gold``."""
    mc = {
        "task": MC_TASK,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(test_jsonl.resolve())}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "{{query}}",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{gold}}",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                        {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0},
    }
    (directory / f"{MC_TASK}.yaml").write_text(yaml.safe_dump(mc, sort_keys=False), encoding="utf-8")


def run_lm_eval(model, tokenizer, test_jsonl: Path, batch_size: int, limit: int | None, device: str) -> dict:
    """Task accuracy (acc, acc_norm) and per-item correctness, through lm-eval."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    with tempfile.TemporaryDirectory(prefix="taskprune-lmeval-") as tmp:
        write_task_yaml(Path(tmp), test_jsonl)
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)
        results = simple_evaluate(
            model=lm,
            tasks=[MC_TASK],
            task_manager=TaskManager(include_path=tmp, include_defaults=False),
            bootstrap_iters=0,
            limit=limit,
            log_samples=True,
            random_seed=0, numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0,
        )
    mc = results["results"][MC_TASK]
    scored = [(s["doc"]["choices"], [ll for ll, _ in s["filtered_resps"]], s["doc"]["gold"])
              for s in results["samples"][MC_TASK]]
    items = sorted(((s["doc"].get("id", str(s["doc_id"])), int(s["acc"])) for s in results["samples"][MC_TASK]))
    return {
        "task_accuracy": mc["acc,none"],
        "task_accuracy_norm": mc["acc_norm,none"],
        "task_accuracy_prior_corrected": prior_corrected_accuracy(scored),
        "test_examples": len(items),
        "items": {doc_id: correct for doc_id, correct in items},
    }


def prior_corrected_accuracy(scored: list[tuple[list[str], list[float], int]], min_share: float = 0.05) -> float | None:
    """Accuracy after removing each answer string's prior: from every choice's log-likelihood
    subtract the mean log-likelihood that string gets over the test set.

    A pruned model that leans toward one label (say "negative") gains nothing from the lean
    here, while raw accuracy can flatter or hide it. Defined for tasks whose choices come from
    a fixed label set (every choice string in at least ``min_share`` of the items); ``None`` otherwise.
    """
    totals: dict[str, list[float]] = {}
    for choices, lls, _ in scored:
        for choice, ll in zip(choices, lls):
            totals.setdefault(choice, []).append(ll)
    if not scored or min(len(v) for v in totals.values()) < min_share * len(scored):
        return None
    prior = {choice: sum(v) / len(v) for choice, v in totals.items()}
    correct = 0
    for choices, lls, gold in scored:
        corrected = [ll - prior[c] for c, ll in zip(choices, lls)]
        correct += int(max(range(len(choices)), key=corrected.__getitem__) == gold)
    return correct / len(scored)


@torch.no_grad()
def perplexity(model, tokenizer, texts: list[str], seq_len: int, batch_size: int, device: str) -> dict:
    """Token-level perplexity over ``texts`` cut into blocks of ``seq_len`` (every block scored in full)."""
    blocks = token_blocks(tokenizer, texts, seq_len, max_blocks=1_000_000)
    nll, count = 0.0, 0
    for start in range(0, len(blocks), batch_size):
        batch = blocks[start:start + batch_size].to(device)
        logits = model(batch, use_cache=False).logits[:, :-1].float()
        targets = batch[:, 1:]
        nll += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum").item()
        count += targets.numel()
    return {"perplexity": math.exp(nll / count), "perplexity_tokens": count}


def size_metrics(model, arch, model_dir: Path) -> dict:
    """Stored parameters (tied weights once), non-zeros, decoder-linear parameters, bytes on disk."""
    params = nonzero = 0
    for p in model.parameters():  # parameters() already skips tied duplicates
        params += p.numel()
        nonzero += int(torch.count_nonzero(p).item())
    # the matrices of every decoder linear (a factorized one has two: down and up; biases not counted)
    matrices = [p for m in arch.named_linears(model).values() for p in m.parameters() if p.dim() == 2]
    decoder_linear = sum(p.numel() for p in matrices)
    decoder_linear_nonzero = sum(int(torch.count_nonzero(p).item()) for p in matrices)
    return {
        "params": params,
        "nonzero_params": nonzero,
        "decoder_linear_params": decoder_linear,
        "decoder_linear_nonzero": decoder_linear_nonzero,
        "bytes_on_disk": sum(f.stat().st_size for f in model_dir.glob("*.safetensors")),
    }


@torch.no_grad()
def decode_tokens_per_s(model, tokenizer, new_tokens: int, device: str, repeats: int = 3) -> float:
    """Greedy CPU/GPU decode speed at batch 1 (median of ``repeats`` timed generate calls)."""
    inputs = tokenizer("The history of the old city begins", return_tensors="pt").to(device)
    settings = dict(do_sample=False, pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, **settings)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **settings)
        times.append(time.perf_counter() - start)
    return new_tokens / statistics.median(times)


def evaluate_loaded(model, tokenizer, test_jsonl: Path, held_out: list[str], cfg, device: str) -> dict:
    """Task accuracy, perplexity and decode speed of an in-memory model (``cfg``: EvaluateConfig)."""
    result = run_lm_eval(model, tokenizer, test_jsonl, cfg.batch_size, cfg.limit, device)
    result.update(perplexity(model, tokenizer, held_out, cfg.perplexity_seq_len, min(cfg.batch_size, 8), device))
    result["tokens_per_s"] = round(decode_tokens_per_s(model, tokenizer, cfg.decode_tokens, device), 2)
    return result
