"""Accuracy and perplexity of the scorers on every built-in task, in one run.

For each task: dense accuracy and chance level, then magnitude, Wanda with general
statistics, Wanda with task statistics, task-aware fusion (top 10 % channels
exclusive), the plain 50/50 average (no exclusive channels) and fusion with OWL,
at 50 % unstructured and at 2:4 (OWL: unstructured only). Each row against
Wanda-general gets an exact McNemar test over the same test items. Uses
the same library functions as the pipeline stages and the defaults of params.yaml
(calibration size, evaluation settings). Writes a markdown table.

    .venv/bin/python bench/prune_matrix.py [--tasks capital sentiment] [--out bench/results/prune_matrix.md]
    .venv/bin/python bench/prune_matrix.py --general-seed 1 --only "wanda (general stats)" "task-aware fusion" \
        --out bench/results/prune_matrix_seed1.md   # a second general-calibration sample

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

from taskprune.calibration import collect_input_square_sums  # noqa: E402
from taskprune.config import Params, PruneConfig  # noqa: E402
from taskprune.data import builtin, general  # noqa: E402
from taskprune.data.schema import split, write_jsonl  # noqa: E402
from taskprune.data.tokens import token_blocks  # noqa: E402
from taskprune.evaluation import perplexity, run_lm_eval  # noqa: E402
from taskprune.models.loading import load_local  # noqa: E402
from taskprune.paths import Project  # noqa: E402
from taskprune.pruning import SideStats, apply_masks, compute_masks  # noqa: E402

SCORERS = [  # (label, prune params)
    ("magnitude", {"method": "magnitude"}),
    ("wanda (general stats)", {"method": "wanda", "stats": "general"}),
    ("wanda (task stats)", {"method": "wanda", "stats": "task"}),
    ("task-aware fusion", {"method": "task_aware"}),
    ("50/50 average (no exclusive)", {"method": "task_aware", "task_aware": {"ablation": "no_partition"}}),
    ("task-aware fusion + OWL", {"method": "task_aware", "allocation": "owl"}),
]
PATTERNS = [("50%", {"sparsity": 0.5}), ("2:4", {"sparsity": 0.5, "pattern": "2:4"})]
BASELINE = "wanda (general stats)"


def mcnemar_p(a: dict[str, int], b: dict[str, int]) -> float:
    """Exact two-sided McNemar test on paired per-item correctness."""
    from math import comb

    only_a = sum(1 for k in a if a[k] and not b[k])
    only_b = sum(1 for k in a if b[k] and not a[k])
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def write_report(out: Path, lines: list[str]) -> None:
    """Write the markdown table (and its notes) and print it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


def evaluate(model, tokenizer, test_jsonl: Path, held_out: list[str], params: Params) -> dict:
    cfg = params.evaluate
    result = run_lm_eval(model, tokenizer, test_jsonl, cfg.batch_size, cfg.limit, "cpu")
    result.update(perplexity(model, tokenizer, held_out, cfg.perplexity_seq_len, 8, "cpu"))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=sorted(builtin.BUILTIN))
    parser.add_argument("--out", type=Path, default=Path("bench/results/prune_matrix.md"))
    parser.add_argument("--general-seed", type=int, default=None,
                        help="shuffle seed of the general text (another calibration sample and held-out set)")
    parser.add_argument("--only", nargs="+", default=None, help="scorer labels to run (default: all)")
    args = parser.parse_args()

    project = Project.find()
    params = Params()
    if args.general_seed is not None:
        params.calibration.seed = args.general_seed
    model, tokenizer, arch = load_local(project.dense_model)
    originals = {k: arch.weight(m).clone() for k, m in arch.named_linears(model).items()}
    passages = general.load_passages(params.calibration.general, project.root, project.downloads)
    pool, held_out = general.split_general(passages, params.calibration.seed, params.evaluate.perplexity_docs)
    cal = params.calibration
    rows, timings = [], {"torch_threads": torch.get_num_threads()}
    started = time.perf_counter()
    general_blocks = token_blocks(tokenizer, pool, cal.seq_len, cal.num_samples)
    t0 = time.perf_counter()
    general_stats = SideStats(collect_input_square_sums(model, arch, general_blocks, cal.batch_size,
                                                        desc="general"), general_blocks.numel())
    timings["calibrate_general_s"] = round(time.perf_counter() - t0, 1)
    for task in args.tasks:
        calib, test = split(builtin.generate(task, params.task.seed), params.task.calib_fraction, params.task.seed)
        with tempfile.TemporaryDirectory() as tmp:
            test_jsonl = Path(tmp) / "test.jsonl"
            write_jsonl(test_jsonl, test)
            task_blocks = token_blocks(tokenizer, [ex.calibration_text() for ex in calib], cal.seq_len, cal.num_samples)
            t0 = time.perf_counter()
            stats = {"general": general_stats,
                     "task": SideStats(collect_input_square_sums(model, arch, task_blocks, cal.batch_size,
                                                                 desc=task), task_blocks.numel())}
            timings[f"calibrate_{task}_s"] = round(time.perf_counter() - t0, 1)
            dense = evaluate(model, tokenizer, test_jsonl, held_out, params)
            chance = sum(1 / len(ex.choices) for ex in test) / len(test)
            rows.append((task, "dense", "-", dense, chance, len(test), task_blocks.shape[0]))
            for name, scorer in [(n, c) for n, c in SCORERS if args.only is None or n in args.only]:
                for label, pattern in PATTERNS:
                    cfg = {**scorer, **pattern}
                    if cfg.get("allocation") == "owl" and "pattern" in cfg:
                        continue  # OWL varies sparsity per layer: unstructured only
                    result = compute_masks(model, arch, PruneConfig.model_validate(cfg), stats)
                    apply_masks(model, arch, result.masks)
                    rows.append((task, name, label, evaluate(model, tokenizer, test_jsonl, held_out, params), chance,
                                 len(test), task_blocks.shape[0]))
                    with torch.no_grad():
                        for key, module in arch.named_linears(model).items():
                            arch.weight(module).copy_(originals[key])
                    print(json.dumps({"task": task, "method": rows[-1][1], "pattern": label,
                                      "acc": rows[-1][3]["task_accuracy"], "ppl": rows[-1][3]["perplexity"]}), flush=True)
    timings["total_s"] = round(time.perf_counter() - started, 1)

    lines = ["| task | scorer | sparsity | task accuracy | prior-corrected | McNemar p vs Wanda-general | acc_norm "
             "| perplexity | test examples | chance |", "|---|---|---|---|---|---|---|---|---|---|"]
    baseline = {(t, lab): res["items"] for t, name, lab, res, *_ in rows if name == BASELINE}
    for task, name, label, res, chance, n_test, _ in rows:
        ref = baseline.get((task, label))
        p = "-" if ref is None or name in (BASELINE, "dense") else f"{mcnemar_p(res['items'], ref):.3f}"
        corrected = res["task_accuracy_prior_corrected"]
        corrected = "n/a" if corrected is None else f"{corrected:.3f}"
        lines.append(f"| {task} | {name} | {label} | {res['task_accuracy']:.3f} | {corrected} | {p} | "
                     f"{res['task_accuracy_norm']:.3f} | {res['perplexity']:.1f} | {n_test} | {chance:.3f} |")
    blocks = ", ".join(f"{task}: {b} blocks" for task, name, _, _, _, _, b in rows if name == "dense")
    lines += ["", f"SmolLM2-135M-Instruct, CPU, {timings['torch_threads']} torch threads. General text seed "
              f"{params.calibration.seed}. Calibration: "
              f"{general_blocks.shape[0]} x {cal.seq_len} general tokens (fortunes), task text {blocks} "
              f"of {cal.seq_len} tokens. Perplexity: token-level on {params.evaluate.perplexity_docs} held-out "
              f"fortune documents. Timings: {json.dumps(timings)}"]
    write_report(args.out, lines)


if __name__ == "__main__":
    main()
