"""LoRA recovery after Wanda pruning, at 50 % and 2:4 on each built-in task, in one run.

For each task and pattern: prune SmolLM2 with Wanda (general statistics, params.yaml
calibration), evaluate, run the recover stage's training (params.yaml `recover`
defaults) on the task's calibration split, merge with the mask re-applied, check the
sparsity is exactly the pruned model's, and evaluate again. Reports the accuracy
points recovered, the share of the pruning loss won back, and the minutes spent.

    .venv/bin/python bench/recovery.py [--tasks capital sentiment] [--out bench/results/recovery.md]

Needs the dense model: run `taskprune stage fetch_model` (or `taskprune run`) first.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from taskprune import env

env.apply()

from prune_matrix import evaluate, write_report  # noqa: E402  (same directory)

from taskprune.calibration import collect_input_square_sums  # noqa: E402
from taskprune.config import Params, PruneConfig  # noqa: E402
from taskprune.data import builtin, general  # noqa: E402
from taskprune.data.schema import split, write_jsonl  # noqa: E402
from taskprune.data.tokens import token_blocks  # noqa: E402
from taskprune.models.loading import load_local  # noqa: E402
from taskprune.paths import Project  # noqa: E402
from taskprune.pruning import SideStats, apply_masks, compute_masks  # noqa: E402
from taskprune.recovery import lora_model, merge_keeping_masks, train_recovery  # noqa: E402

PATTERNS = {"50%": {"sparsity": 0.5}, "2:4": {"sparsity": 0.5, "pattern": "2:4"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=sorted(builtin.BUILTIN))
    parser.add_argument("--patterns", nargs="+", default=list(PATTERNS), choices=list(PATTERNS))
    parser.add_argument("--out", type=Path, default=Path("bench/results/recovery.md"))
    parser.add_argument("--steps", type=int, help="LoRA steps (default: params.yaml's recover.steps)")
    parser.add_argument("--limit", type=int, help="test examples per task (quick runs; default: all)")
    args = parser.parse_args()

    project = Project.find()
    params = Params()
    params.evaluate.limit = args.limit
    if args.steps:
        params.recover.steps = args.steps
    cal, rec = params.calibration, params.recover
    passages = general.load_passages(cal.general, project.root, project.downloads)
    pool, held_out = general.split_general(passages, cal.seed, params.evaluate.perplexity_docs)
    rows, started = [], time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks:
            calib, test = split(builtin.generate(task, params.task.seed), params.task.calib_fraction, params.task.seed)
            test_jsonl = Path(tmp) / f"{task}.jsonl"
            write_jsonl(test_jsonl, test)
            dense_model, tokenizer, arch = load_local(project.dense_model)
            dense = evaluate(dense_model, tokenizer, test_jsonl, held_out, params)
            blocks = token_blocks(tokenizer, pool, cal.seq_len, cal.num_samples)
            stats = {"general": SideStats(collect_input_square_sums(dense_model, arch, blocks, cal.batch_size),
                                          blocks.numel())}
            del dense_model
            for label in args.patterns:
                model, tokenizer, arch = load_local(project.dense_model)
                masks = compute_masks(model, arch, PruneConfig.model_validate({"method": "wanda",
                                                                                   **PATTERNS[label]}), stats).masks
                pruned_sparsity = apply_masks(model, arch, masks)
                pruned = evaluate(model, tokenizer, test_jsonl, held_out, params)
                t0 = time.perf_counter()
                peft_model = lora_model(model, arch, rec)
                with tempfile.TemporaryDirectory() as checkpoints:
                    history = train_recovery(peft_model, tokenizer, calib, rec, Path(checkpoints), "cpu").history
                merged = merge_keeping_masks(peft_model, arch, masks)
                minutes = (time.perf_counter() - t0) / 60
                recovered_sparsity = apply_masks(merged, arch, masks)  # measures zeros (no change after merge)
                exact = all(torch.equal(arch.weight(m) != 0, masks[k])
                            for k, m in arch.named_linears(merged).items())
                recovered = evaluate(merged, tokenizer, test_jsonl, held_out, params)
                lost = dense["task_accuracy"] - pruned["task_accuracy"]
                won = recovered["task_accuracy"] - pruned["task_accuracy"]
                rows.append(dict(task=task, pattern=label, dense=dense, pruned=pruned, recovered=recovered,
                                 minutes=minutes, exact=exact, loss=(history[0]["loss"], history[-1]["loss"]),
                                 sparsity=(sum(pruned_sparsity.values()) / len(pruned_sparsity),
                                           sum(recovered_sparsity.values()) / len(recovered_sparsity)),
                                 share=won / lost if lost > 0 else None))
                print(json.dumps({"task": task, "pattern": label, "dense": dense["task_accuracy"],
                                  "pruned": pruned["task_accuracy"], "recovered": recovered["task_accuracy"],
                                  "minutes": round(minutes, 2), "exact_zeros": exact}), flush=True)

    lines = ["| task | sparsity | dense acc | pruned acc | recovered acc | points recovered | share of loss "
             "recovered | LoRA minutes | train loss | sparsity pruned / recovered | zeros identical | "
             "perplexity pruned / recovered |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        share = "-" if r["share"] is None else f"{r['share'] * 100:.0f} %"
        lines.append(
            f"| {r['task']} | {r['pattern']} | {r['dense']['task_accuracy']:.3f} | {r['pruned']['task_accuracy']:.3f} | "
            f"{r['recovered']['task_accuracy']:.3f} | "
            f"{(r['recovered']['task_accuracy'] - r['pruned']['task_accuracy']) * 100:+.1f} | {share} | "
            f"{r['minutes']:.1f} | {r['loss'][0]:.2f} -> {r['loss'][1]:.2f} | "
            f"{r['sparsity'][0]:.4f} / {r['sparsity'][1]:.4f} | {'yes' if r['exact'] else 'NO'} | "
            f"{r['pruned']['perplexity']:.1f} / {r['recovered']['perplexity']:.1f} |")
    lines += ["", f"SmolLM2-135M-Instruct, CPU, {torch.get_num_threads()} torch threads. Wanda with general statistics "
              f"({cal.num_samples} x {cal.seq_len} tokens). LoRA: rank {rec.rank}, alpha {rec.alpha}, dropout "
              f"{rec.dropout}, {rec.steps} steps of batch {rec.batch_size}, learning rate {rec.learning_rate}, on the "
              f"task's calibration split (answer-token loss); merged, mask re-applied. Whole benchmark: "
              f"{time.perf_counter() - started:.0f} s."]
    write_report(args.out, lines)


if __name__ == "__main__":
    main()
