"""Structured task-aware pruning on SmolLM2 next to sieve and unstructured task-aware SparseGPT, in one run.

For each task, in scratch projects that link the dense model, the real stages with params.yaml's defaults plus:

- ``structured``, general-only (``prune.task_aware.ablation: general_only``) and task-aware, at each level
  (share of the decoder-linear parameters removed), on two general-text samples (``calibration.seed`` 0 and 1:
  a different general calibration sample, the same task split) for the paired tests, and on the first sample
  with distillation recovery (``recover.loss: distill``);
- ``sieve`` with its genetic search at the same parameter count (``search.target_reduction``);
- ``task_aware`` on SparseGPT at the same non-zero count (``prune.sparsity`` = the level), which gives no speed.

Decode tokens/s and bytes on disk of every kept model are measured side by side at the end (all models in one
process, rounds interleaved, median), and the structured models once more as loaded by plain transformers.

    .venv/bin/python bench/structured.py [--tasks capital sentiment] [--levels 0.25 0.4] [--seeds 0 1]
        [--recover-steps 30] [--sieve-generations 5] [--limit N] [--out bench/results/structured.md]

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

VARIANTS = {"general-only": "general_only", "task-aware": "none"}
BASELINES = {"sieve": ("sieve + GA", ["prune.method=sieve", "prune.allocation=search"]),
             "sparsegpt": ("task-aware SparseGPT", ["prune.method=task_aware", "prune.base=sparsegpt"])}


def stage(name: str, params, project: Project) -> float:
    start = time.perf_counter()
    run_stage(name, params, project)
    return time.perf_counter() - start


def scratch(root: Path, home: Project) -> Project:
    (root / "artifacts" / "model").mkdir(parents=True)
    shutil.copy(home.params_file, root / "params.yaml")
    os.symlink(home.dense_model.resolve(), root / "artifacts" / "model" / "dense")
    return Project(root)


def decode_speeds(dirs: dict[str, Path], plain: dict[str, Path], new_tokens: int, rounds: int) -> dict[str, float]:
    """Median decode tokens/s of each model, rounds interleaved; ``plain``: loaded by transformers alone."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import taskprune
    from taskprune.evaluation import decode_tokens_per_s

    models = {label: taskprune.load(path) for label, path in dirs.items()}
    for label, path in plain.items():
        models[label] = (AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path))
    speeds: dict[str, list[float]] = {label: [] for label in models}
    for _ in range(rounds):
        for label, (model, tokenizer) in models.items():
            speeds[label].append(decode_tokens_per_s(model, tokenizer, new_tokens, "cpu", repeats=1))
    return {label: statistics.median(v) for label, v in speeds.items()}


def items(result: dict) -> dict[str, int]:
    return result["items"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["capital", "sentiment"])
    parser.add_argument("--levels", nargs="+", type=float, default=[0.25, 0.4])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--depth", type=float, default=0.0, help="prune.structured.depth")
    parser.add_argument("--recover-steps", type=int, default=30)
    parser.add_argument("--recover-lr", type=float, default=1e-4)
    parser.add_argument("--recover-batch", type=int, default=4)
    parser.add_argument("--recover-train", default="full", choices=["full", "lora"])
    parser.add_argument("--sieve-generations", type=int, default=5)
    parser.add_argument("--no-recover", action="store_true")
    parser.add_argument("--baselines", nargs="*", default=list(BASELINES), choices=list(BASELINES),
                        help="the other methods at the same level (none: structured only)")
    parser.add_argument("--decode-rounds", type=int, default=7)
    parser.add_argument("--limit", type=int, help="test examples per task (quick runs; default: all)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/structured.md"))
    args = parser.parse_args()

    home = Project.find()
    started = time.perf_counter()
    rows, speeds_by_task, seconds = [], {}, {}
    with tempfile.TemporaryDirectory(prefix="taskprune-structured-") as tmp:
        for task in args.tasks:
            keep: dict[str, Path] = {}
            base = [f"task.name={task}", "task.path=", "prune.method=structured",
                    f"prune.structured.depth={args.depth}", f"recover.steps={args.recover_steps}",
                    f"recover.learning_rate={args.recover_lr}", f"recover.train={args.recover_train}",
                    f"recover.batch_size={args.recover_batch}",
                    "recover.loss=distill"] + ([f"evaluate.limit={args.limit}"] if args.limit else [])
            results: dict[tuple, dict] = {}
            dense = None
            for seed in args.seeds:
                project = scratch(Path(tmp) / f"{task}-{seed}", home)
                params = config.load(project.params_file, base + [f"calibration.seed={seed}"])
                stage("prepare_data", params, project)
                seconds[(task, seed, "calibrate")] = stage("calibrate", params, project)
                if dense is None:
                    stage("evaluate_dense", params, project)
                    dense = read_json(project.eval_file("dense"))
                for level in args.levels:
                    for variant, ablation in VARIANTS.items():
                        run = params.model_copy(deep=True)
                        run.prune.structured.reduction = level
                        run.prune.task_aware.ablation = ablation
                        seconds[(task, seed, level, variant, "score")] = stage("score", run, project)
                        stage("prune", run, project)
                        stage("evaluate", run, project)
                        results[(seed, level, variant)] = read_json(project.eval_file("pruned"))
                        if seed != args.seeds[0]:
                            continue
                        keep[f"structured {variant} {level:.0%}"] = shutil.copytree(
                            project.pruned_model, Path(tmp) / f"{task}-{variant}-{level}")
                        if args.no_recover:
                            continue
                        run.recover.enabled = True
                        seconds[(task, level, variant, "recover")] = stage("recover", run, project)
                        stage("evaluate_recovered", run, project)
                        results[(seed, level, f"{variant} + distill")] = read_json(project.eval_file("recovered"))
                    print(json.dumps({"task": task, "seed": seed, "level": level, "dense": dense["task_accuracy"],
                                      **{k[2]: v["task_accuracy"] for k, v in results.items()
                                         if k[:2] == (seed, level)}}), flush=True)
            for name, extra in (BASELINES[b] for b in args.baselines):
                extra = extra + [f"search.generations={args.sieve_generations}"]
                project = scratch(Path(tmp) / f"{task}-{name.split()[0]}", home)
                params = config.load(project.params_file, base + extra)
                stage("prepare_data", params, project)
                stage("calibrate", params, project)
                if params.prune.method == "sieve":
                    stage("score", params, project)
                for level in args.levels:
                    run = params.model_copy(deep=True)
                    run.search.target_reduction = level
                    run.prune.sparsity = level
                    if run.prune.method != "sieve":
                        stage("score", run, project)
                    seconds[(task, level, name)] = stage("search", run, project)
                    stage("prune", run, project)
                    stage("evaluate", run, project)
                    results[(args.seeds[0], level, name)] = read_json(project.eval_file("pruned"))
                    keep[f"{name} {level:.0%}"] = shutil.copytree(project.pruned_model,
                                                                   Path(tmp) / f"{task}-{name[:5]}-{level}")
            structured = {k: v for k, v in keep.items() if k.startswith("structured")}
            speeds = decode_speeds({"dense": home.dense_model, **keep},
                                   {f"{k} (plain transformers)": v for k, v in structured.items()},
                                   config.Params().evaluate.decode_tokens, args.decode_rounds)
            speeds_by_task[task] = speeds
            rows.append(dict(task=task, dense=dense, results=results, speeds=speeds,
                             bytes={k: sum(f.stat().st_size for f in v.glob("*.safetensors")) for k, v in keep.items()}))
            print(json.dumps({"task": task, "speeds": {k: round(v, 2) for k, v in speeds.items()}}), flush=True)
            report(args, rows, seconds, started)  # after every task: a long run keeps what it measured


def report(args, rows: list[dict], seconds: dict, started: float) -> None:
    lines = ["| task | model | level | task acc | relative drop | decoder-linear params (x dense) | bytes on disk "
             "(x dense) | decode tokens/s (x dense) | perplexity |", "|---|---|---|---|---|---|---|---|---|"]
    checks = []
    first = args.seeds[0]
    for r in rows:
        dense, speeds = r["dense"], r["speeds"]
        lines.append(f"| {r['task']} | dense | - | {dense['task_accuracy']:.3f} | - | {dense['decoder_linear_params']:,} | "
                     f"{dense['bytes_on_disk']:,} | {speeds['dense']:.1f} | {dense['perplexity']:.1f} |")
        for (seed, level, name), result in sorted(r["results"].items(), key=lambda kv: (kv[0][1], kv[0][0], kv[0][2])):
            if seed != first:
                continue
            model_key = f"{'structured ' if name.split(' +')[0] in VARIANTS else ''}{name.split(' + distill')[0]} {level:.0%}"
            speed = speeds.get(model_key)
            size = r["bytes"].get(model_key)
            drop = (dense["task_accuracy"] - result["task_accuracy"]) / dense["task_accuracy"]
            params_ratio = result["decoder_linear_nonzero"] / dense["decoder_linear_params"]
            size_cell = "-" if size is None else f"{size / dense['bytes_on_disk']:.3f}"
            speed_cell = "-" if speed is None else f"{speed:.1f} ({speed / speeds['dense']:.2f})"
            lines.append(f"| {r['task']} | {name} | {level:.0%} | {result['task_accuracy']:.3f} | {drop:+.1%} | "
                         f"{params_ratio:.3f} | {size_cell} | {speed_cell} | {result['perplexity']:.1f} |")
        for level in args.levels:
            for seed in args.seeds:
                ta, go = r["results"].get((seed, level, "task-aware")), r["results"].get((seed, level, "general-only"))
                if ta and go:
                    gain = (ta["task_accuracy"] - go["task_accuracy"]) * 100
                    checks.append(f"{r['task']} {level:.0%}, general sample {seed}: task-aware vs general-only "
                                  f"{gain:+.1f} points, McNemar p {mcnemar_p(items(ta), items(go)):.3g}")
            key = f"structured task-aware {level:.0%}"
            if key in speeds:
                plain = speeds[f"{key} (plain transformers)"]
                checks.append(f"{r['task']} {level:.0%}: structured decode {speeds[key] / speeds['dense']:.2f}x dense "
                              f"(plain transformers {plain / speeds['dense']:.2f}x), bytes "
                              f"{r['bytes'][key] / dense['bytes_on_disk']:.3f}x dense")
    p = config.Params()
    lines += ["", *[f"- {c}" for c in checks], "",
              f"SmolLM2-135M-Instruct, CPU, {os.cpu_count()} cores. Calibration {p.calibration.num_samples} x "
              f"{p.calibration.seq_len} tokens per side; structured depth {args.depth} (share of the reduction from "
              f"whole layers), MLP width a multiple of {p.prune.structured.width_multiple}; recovery: "
              f"{args.recover_train}, distilled (answer loss + KL to the dense model), {args.recover_steps} steps of "
              f"batch {args.recover_batch}, "
              f"learning rate {args.recover_lr}; sieve: GA {args.sieve_generations} generations. Decode: "
              f"{p.evaluate.decode_tokens} new tokens at batch 1, median of {args.decode_rounds} interleaved rounds. "
              f"Stage seconds: " + ", ".join(f"{' '.join(map(str, k))} {v:.0f}" for k, v in seconds.items())
              + f". Whole benchmark: {time.perf_counter() - started:.0f} s."]
    write_report(args.out, lines)


if __name__ == "__main__":
    main()
