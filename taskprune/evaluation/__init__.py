"""Evaluation: task accuracy and general perplexity through lm-eval, size, decode speed.

lm-eval gets two tasks written from the prepared data: a ``multiple_choice``
task over the test JSONL (acc, acc_norm) and a ``loglikelihood_rolling`` task
over the held-out general text (word perplexity). The model is passed in memory
(``HFLM(pretrained=model)``), so nothing is reloaded.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch
import yaml

MC_TASK = "taskprune_mc"
PPL_TASK = "taskprune_ppl"


def write_task_yamls(directory: Path, test_jsonl: Path, general_jsonl: Path) -> None:
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
    ppl = {
        "task": PPL_TASK,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(general_jsonl.resolve())}},
        "test_split": "test",
        "output_type": "loglikelihood_rolling",
        "doc_to_text": "",
        "doc_to_target": "{{text}}",
        "metric_list": [{"metric": "word_perplexity"}, {"metric": "byte_perplexity"}, {"metric": "bits_per_byte"}],
        "metadata": {"version": 1.0},
    }
    for spec in (mc, ppl):
        (directory / f"{spec['task']}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")


def run_lm_eval(model, tokenizer, test_jsonl: Path, general_jsonl: Path, batch_size: int,
                limit: int | None, device: str) -> dict:
    """Task accuracy (acc, acc_norm, per-item correctness) and word perplexity."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    with tempfile.TemporaryDirectory(prefix="taskprune-lmeval-") as tmp:
        write_task_yamls(Path(tmp), test_jsonl, general_jsonl)
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)
        results = simple_evaluate(
            model=lm,
            tasks=[MC_TASK, PPL_TASK],
            task_manager=TaskManager(include_path=tmp, include_defaults=False),
            bootstrap_iters=0,
            limit=limit,
            log_samples=True,
            random_seed=0, numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0,
        )
    mc, ppl = results["results"][MC_TASK], results["results"][PPL_TASK]
    items = sorted(((s["doc"].get("id", str(s["doc_id"])), int(s["acc"])) for s in results["samples"][MC_TASK]))
    return {
        "task_accuracy": mc["acc,none"],
        "task_accuracy_norm": mc["acc_norm,none"],
        "perplexity": ppl["word_perplexity,none"],
        "bits_per_byte": ppl["bits_per_byte,none"],
        "test_examples": len(items),
        "items": {doc_id: correct for doc_id, correct in items},
    }


def size_metrics(model, adapter, model_dir: Path) -> dict:
    """Stored parameters (tied weights once), non-zeros, decoder-linear parameters, bytes on disk."""
    params = nonzero = 0
    for p in model.parameters():  # parameters() already skips tied duplicates
        params += p.numel()
        nonzero += int(torch.count_nonzero(p).item())
    linears = adapter.named_linears(model).values()
    decoder_linear = sum(adapter.weight(m).numel() for m in linears)
    decoder_linear_nonzero = sum(int(torch.count_nonzero(adapter.weight(m)).item()) for m in linears)
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
