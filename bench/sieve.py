"""LLM-Sieve on SmolLM2: uniform ranks vs the genetic search at the same budget, and with LoRA, in one run.

For each built-in task, in a scratch project that links the dense model: the real stages
(prepare_data, calibrate with second moments, score = factors, search, prune, evaluate,
recover) with params.yaml's defaults plus ``prune.method: sieve``. Rows: the dense model,
every matrix at the uniform rank (``allocation: uniform``), the GA allocation at the same
budget (``allocation: search``), and the GA model after LoRA recovery on the factors.
Decode speed is timed side by side at the end (dense and factorized models alternating in
one process, median of rounds), so the ratio does not depend on when each ran.

    .venv/bin/python bench/sieve.py [--tasks capital sentiment] [--generations 15] [--population 16]
                                    [--target-reduction 0.4] [--out bench/results/sieve.md]

Needs the dense model: run `taskprune stage fetch_model` (or `taskprune run`) first.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from taskprune import env

env.apply()

from prune_matrix import mcnemar_p, write_report  # noqa: E402  (same directory)

from taskprune import config  # noqa: E402
from taskprune.paths import Project, read_json  # noqa: E402
from taskprune.stages import run_stage  # noqa: E402


def stage(name: str, params, project: Project, **options) -> float:
    start = time.perf_counter()
    run_stage(name, params, project, **options)
    return time.perf_counter() - start


def decode_ratio(dirs: dict[str, Path], new_tokens: int, rounds: int) -> dict[str, float]:
    """Median decode tokens/s of each model, rounds interleaved (dense, a, b, dense, a, b, ...)."""
    import taskprune
    from taskprune.evaluation import decode_tokens_per_s

    models = {label: taskprune.load(path) for label, path in dirs.items()}
    speeds: dict[str, list[float]] = {label: [] for label in dirs}
    for _ in range(rounds):
        for label, (model, tokenizer) in models.items():
            speeds[label].append(decode_tokens_per_s(model, tokenizer, new_tokens, "cpu", repeats=1))
    return {label: statistics.median(v) for label, v in speeds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["capital", "sentiment"])
    parser.add_argument("--generations", type=int, default=15)
    parser.add_argument("--population", type=int, default=16)
    parser.add_argument("--target-reduction", type=float, default=0.4)
    parser.add_argument("--decode-rounds", type=int, default=7)
    parser.add_argument("--limit", type=int, help="test examples per task (quick runs; default: all)")
    parser.add_argument("--no-recover", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("bench/results/sieve.md"))
    args = parser.parse_args()

    home = Project.find()
    rows, started = [], time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="taskprune-sieve-") as tmp:
        for task in args.tasks:
            root = Path(tmp) / task
            (root / "artifacts" / "model").mkdir(parents=True)
            shutil.copy(home.params_file, root / "params.yaml")
            os.symlink(home.dense_model.resolve(), root / "artifacts" / "model" / "dense")
            project = Project(root)
            overrides = [f"task.name={task}", "task.path=", "prune.method=sieve",
                         f"search.target_reduction={args.target_reduction}", f"search.generations={args.generations}",
                         f"search.population={args.population}", "recover.enabled=true"]
            if args.limit:
                overrides.append(f"evaluate.limit={args.limit}")
            params = config.load(project.params_file, overrides)
            seconds = {name: stage(name, params, project) for name in ("prepare_data", "calibrate", "score")}
            stage("evaluate_dense", params, project)
            dense = read_json(project.eval_dir / "dense.json")
            results, keep = {}, {}
            for allocation in ("uniform", "search"):
                run_params = params.model_copy(deep=True)
                run_params.prune.allocation = allocation
                seconds[f"search ({allocation})"] = stage("search", run_params, project)
                stage("prune", run_params, project)
                stage("evaluate", run_params, project)
                results[allocation] = read_json(project.eval_dir / "pruned.json")
                results[allocation]["search"] = read_json(project.search / "allocation.json")
                keep[allocation] = root / f"model-{allocation}"
                shutil.copytree(project.pruned_model, keep[allocation])
            if not args.no_recover:  # LoRA on the GA model's factors
                run_params.prune.allocation = "search"
                seconds["recover"] = stage("recover", run_params, project)
                stage("evaluate_recovered", run_params, project)
                results["search+lora"] = read_json(project.eval_dir / "recovered.json")
                keep["search+lora"] = project.recovered_model
            speeds = decode_ratio({"dense": home.dense_model, **keep}, params.evaluate.decode_tokens,
                                  args.decode_rounds)
            rows.append(dict(task=task, dense=dense, results=results, speeds=speeds, seconds=seconds,
                             p=mcnemar_p(results["uniform"]["items"], results["search"]["items"])))
            print(json.dumps({"task": task, "dense": dense["task_accuracy"],
                              **{k: v["task_accuracy"] for k, v in results.items()},
                              "speed": {k: round(v, 2) for k, v in speeds.items()}}), flush=True)

    lines = ["| task | model | task acc | relative drop | decoder-linear params | reduction | bytes on disk | "
             "decode tokens/s (x dense) | perplexity |", "|---|---|---|---|---|---|---|---|---|"]
    checks = []
    for r in rows:
        dense = r["dense"]
        lines.append(f"| {r['task']} | dense | {dense['task_accuracy']:.3f} | - | {dense['decoder_linear_params']:,} | - | "
                     f"{dense['bytes_on_disk']:,} | {r['speeds']['dense']:.1f} (1.00) | {dense['perplexity']:.1f} |")
        for label, result in r["results"].items():
            drop = (dense["task_accuracy"] - result["task_accuracy"]) / dense["task_accuracy"]
            reduction = 1 - result["decoder_linear_params"] / dense["decoder_linear_params"]
            speed = r["speeds"][label]
            name = {"uniform": "sieve, uniform ranks", "search": "sieve, GA ranks",
                    "search+lora": "sieve, GA ranks + LoRA"}[label]
            lines.append(f"| {r['task']} | {name} | {result['task_accuracy']:.3f} | {drop:+.1%} | "
                         f"{result['decoder_linear_params']:,} | {reduction:.1%} | {result['bytes_on_disk']:,} | "
                         f"{speed:.1f} ({speed / r['speeds']['dense']:.2f}) | {result['perplexity']:.1f} |")
            if label != "uniform":
                checks.append(f"{r['task']}, {name}: accuracy drop {drop:.1%} (target <= 5 %): "
                              f"{'met' if drop <= 0.05 else 'NOT met'}; decoder-linear parameters -{reduction:.1%} "
                              f"(target >= 40 %): {'met' if reduction >= 0.4 - 0.005 else 'NOT met'}; decode "
                              f"{speed / r['speeds']['dense']:.2f}x dense (target >= 1.3x): "
                              f"{'met' if speed / r['speeds']['dense'] >= 1.3 else 'NOT met'}")
        ga, uni = r["results"]["search"], r["results"]["uniform"]
        gain = (ga["task_accuracy"] - uni["task_accuracy"]) * 100
        fit = ga["search"]
        checks.append(f"{r['task']}: GA vs uniform at the same budget: {gain:+.1f} points (McNemar p {r['p']:.3g}; "
                      f"target >= +2): {'met' if gain >= 2 else 'NOT met'}; calibration fitness "
                      f"{fit['uniform_fitness']:.4f} -> {fit['best_fitness']:.4f}; stage seconds "
                      + ", ".join(f"{k} {v:.0f}" for k, v in r["seconds"].items()))
    p = config.Params()
    lines += ["", *[f"- {c}" for c in checks], "",
              f"SmolLM2-135M-Instruct, CPU. Sieve factors from calibration second moments (general_weight "
              f"{p.prune.sieve.general_weight}, {p.calibration.num_samples} x {p.calibration.seq_len} tokens per side, "
              f"{p.prune.sieve.levels} levels); GA: pymoo, population {args.population}, {args.generations} "
              f"generations, fitness {p.search.fitness} on {p.search.examples} calibration rows, budget = the uniform "
              f"allocation at {args.target_reduction:.0%}; LoRA: params.yaml recover defaults on the factors. "
              f"Decode: {p.evaluate.decode_tokens} new tokens at batch 1, median of {args.decode_rounds} interleaved "
              f"rounds. Whole benchmark: {time.perf_counter() - started:.0f} s."]
    write_report(args.out, lines)


if __name__ == "__main__":
    main()
