"""Size (stored and non-zero parameters, decoder-linear parameters, bytes on disk) and decode speed."""

from __future__ import annotations

import gc
import statistics
import time
from pathlib import Path

import torch


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



def decode_side_by_side(models: dict, tokenizer, new_tokens: int, device: str, rounds: int) -> dict[str, list[float]]:
    """Decode tokens/s of each model, timed in alternating rounds in this one process (after a warm-up of each),
    so that whatever else loads the machine meanwhile falls on all of them alike: ``rounds`` values per model.
    A value may be a loader (no arguments, returns the model) instead of a model: it is loaded for each of its
    timings and released after it, so the models need not be in memory together."""
    times: dict[str, list[float]] = {label: [] for label in models}
    for _ in range(rounds):
        for label, model in models.items():
            loaded = model if isinstance(model, torch.nn.Module) else model()
            times[label].append(decode_tokens_per_s(loaded, tokenizer, new_tokens, device, repeats=1))
            if loaded is not model:
                del loaded
                gc.collect()
    return times


def paired_decode(model, dense, tokenizer, new_tokens: int, device: str, rounds: int) -> dict:
    """``model`` against ``dense`` (models, or loaders: ``decode_side_by_side``), side by side: medians and ranges,
    the ratio of the medians, and whether the difference is within the noise (the two ranges overlap)."""
    times = decode_side_by_side({"model": model, "dense": dense}, tokenizer, new_tokens, device, rounds)
    spread = {label: [round(min(v), 2), round(statistics.median(v), 2), round(max(v), 2)] for label, v in times.items()}
    return {"rounds": rounds, "tokens_per_s": spread["model"], "dense_tokens_per_s": spread["dense"],
            "speedup": round(spread["model"][1] / spread["dense"][1], 4),
            "within_noise": spread["model"][0] <= spread["dense"][2] and spread["dense"][0] <= spread["model"][2]}
