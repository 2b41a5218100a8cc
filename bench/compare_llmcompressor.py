"""TaskPrune's Wanda, SparseGPT and task-aware variants side by side with llm-compressor's, in one run.

Same model (the pipeline's dense SmolLM2), same general calibration tokens (params.yaml:
num_samples x seq_len, batch size), same sparsity, same torch thread count. For each
general-calibration sample (``--seeds``) and sparsity pattern it runs:

- TaskPrune Wanda and SparseGPT on general text; llm-compressor's WandaPruningModifier and
  SparseGPTModifier (in their own venv, created from bench/requirements-llmcompressor.lock);
- per task: task-aware fusion on Wanda and on SparseGPT, and the plain 50/50 average.

Every model is evaluated on each built-in task's test split (accuracy, prior-corrected
accuracy, exact McNemar p against TaskPrune Wanda-general over the same items) and on
held-out general text (perplexity). Wall time of calibration + pruning is reported as a
ratio to llm-compressor's same-class method and to one plain forward pass of the model
over the general calibration tokens. Writes a markdown table that the README includes.

    .venv/bin/python bench/compare_llmcompressor.py                     # seeds 0 and 1, both patterns
    .venv/bin/python bench/compare_llmcompressor.py --seeds 0 --patterns 50%   # quicker
    .venv/bin/python bench/compare_llmcompressor.py --timing-only --seeds 0 --patterns 50% 2:4 \
        --out bench/results/llmcompressor_timing.md   # times only, on a quiet machine

Needs the dense model: run `taskprune stage fetch_model` (or `taskprune run`) first.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from taskprune import env

env.apply()

from prune_matrix import evaluate, mcnemar_p, write_report  # noqa: E402  (same directory)
from safetensors.torch import save_file  # noqa: E402

from taskprune.calibration import collect_input_square_sums  # noqa: E402
from taskprune.config import Params, PruneConfig  # noqa: E402
from taskprune.data import builtin, general  # noqa: E402
from taskprune.data.schema import split, write_jsonl  # noqa: E402
from taskprune.data.tokens import token_blocks  # noqa: E402
from taskprune.models.loading import load_local  # noqa: E402
from taskprune.paths import Project  # noqa: E402
from taskprune.pruning import SideStats, apply_masks, compute_masks, layerwise_masks  # noqa: E402

HERE = Path(__file__).resolve().parent
LOCK = HERE / "requirements-llmcompressor.lock"
WORKER = HERE / "llmcompressor_worker.py"
PATTERNS = {"50%": {"sparsity": 0.5}, "2:4": {"sparsity": 0.5, "pattern": "2:4"}}
BASELINE = "TaskPrune Wanda (general)"


def llmcompressor_python(project: Project) -> Path:
    """The venv llm-compressor runs in (its transformers pin clashes with ours); created on first use."""
    venv = project.state / "bench" / "llmcompressor-venv"
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"creating llm-compressor's venv in {venv} (about a minute)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(LOCK)], check=True)
    return python


def run_llmcompressor(python: Path, dense: Path, tokens: Path, method: str, cfg: PruneConfig, batch_size: int,
                      out: Path) -> float:
    structure = cfg.pattern if cfg.n_m else "0:0"
    done = subprocess.run([str(python), str(WORKER), "--model", str(dense), "--tokens", str(tokens),
                           "--method", method, "--sparsity", str(cfg.sparsity), "--mask-structure", structure,
                           "--batch-size", str(batch_size), "--threads", str(torch.get_num_threads()),
                           "--out", str(out)], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"llm-compressor {method} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["seconds"]


@torch.no_grad()
def forward_seconds(model, blocks: torch.Tensor, batch_size: int) -> float:
    """One plain forward over the blocks; ``model`` is the causal LM or just its decoder stack (no lm_head)."""
    started = time.perf_counter()
    for start in range(0, blocks.shape[0], batch_size):
        model(blocks[start:start + batch_size], use_cache=False)
    return time.perf_counter() - started


def decoder_sparsity(model, arch) -> float:
    weights = [arch.weight(m) for m in arch.named_linears(model).values()]
    return 1 - sum(int(torch.count_nonzero(w)) for w in weights) / sum(w.numel() for w in weights)


class Bench:
    def __init__(self, args):
        self.args = args
        self.project = Project.find()
        self.params = Params()
        if args.num_samples:
            self.params.calibration.num_samples = args.num_samples
        self.params.evaluate.limit = args.limit
        torch.set_num_threads(args.threads)
        self.model, self.tokenizer, self.arch = load_local(self.project.dense_model)
        self.originals = {k: self.arch.weight(m).clone() for k, m in self.arch.named_linears(self.model).items()}
        self.rows: list[dict] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="taskprune-bench-"))
        self.tasks = {}
        cal = self.params.calibration
        for task in args.tasks:
            calib, test = split(builtin.generate(task, self.params.task.seed), self.params.task.calib_fraction,
                                self.params.task.seed)
            write_jsonl(self.tmp / f"{task}.jsonl", test)
            self.tasks[task] = {
                "test": self.tmp / f"{task}.jsonl", "n": len(test),
                "chance": sum(1 / len(ex.choices) for ex in test) / len(test),
                "blocks": token_blocks(self.tokenizer, [ex.calibration_text() for ex in calib], cal.seq_len,
                                       cal.num_samples)}

    def restore(self) -> None:
        with torch.no_grad():
            for key, module in self.arch.named_linears(self.model).items():
                self.arch.weight(module).copy_(self.originals[key])

    def record(self, model, seed, pattern, method, seconds, tasks, held_out, **extra) -> None:
        if self.args.timing_only:  # one row per method, no evaluation
            task = "-" if len(tasks) > 1 else next(iter(tasks))
            self.rows.append(dict(seed=seed, pattern=pattern, task=task, method=method, seconds=seconds, **extra))
            print(json.dumps({"seed": seed, "pattern": pattern, "task": task, "method": method,
                              "seconds": seconds}), flush=True)
            return
        for task in tasks:
            info = self.tasks[task]
            result = evaluate(model, self.tokenizer, info["test"], held_out, self.params)
            self.rows.append(dict(seed=seed, pattern=pattern, task=task, method=method, seconds=seconds,
                                  result=result, **extra))
            print(json.dumps({"seed": seed, "pattern": pattern, "task": task, "method": method,
                              "acc": result["task_accuracy"], "ppl": result["perplexity"],
                              "seconds": seconds}), flush=True)

    def stats(self, blocks: torch.Tensor) -> SideStats:
        cal = self.params.calibration
        return SideStats(collect_input_square_sums(self.model, self.arch, blocks, cal.batch_size), blocks.numel())

    def run_seed(self, seed: int, patterns: list[str], python: Path | None) -> dict:
        cal = self.params.calibration
        passages = general.load_passages(cal.general, self.project.root, self.project.downloads)
        pool, held_out = general.split_general(passages, seed, self.params.evaluate.perplexity_docs)
        blocks = token_blocks(self.tokenizer, pool, cal.seq_len, cal.num_samples)
        tokens = self.tmp / f"tokens-{seed}.safetensors"
        save_file({"input_ids": blocks.contiguous()}, str(tokens))
        forward = forward_seconds(self.model, blocks, cal.batch_size)
        decoder = forward_seconds(self.model.get_decoder(), blocks, cal.batch_size)
        timing = {"forward_s": round(forward, 1), "decoder_forward_s": round(decoder, 1),
                  "general_blocks": blocks.shape[0]}
        if not self.args.timing_only:
            self.record(self.model, seed, "-", "dense", None, self.tasks, held_out)
        for label in patterns:
            base = PATTERNS[label]
            cfg = lambda **kw: PruneConfig.model_validate({**base, **kw})  # noqa: E731
            started = time.perf_counter()
            general_stats = self.stats(blocks)
            apply_masks(self.model, self.arch, compute_masks(self.model, self.arch, cfg(method="wanda"),
                                                                {"general": general_stats}).masks)
            wanda_s = time.perf_counter() - started
            self.record(self.model, seed, label, BASELINE, wanda_s, self.tasks, held_out, kind="wanda")
            self.restore()
            started = time.perf_counter()
            layerwise_masks(self.model, self.arch, cfg(method="sparsegpt"), None, {"general": blocks},
                            cal.batch_size)
            self.record(self.model, seed, label, "TaskPrune SparseGPT (general)", time.perf_counter() - started,
                        self.tasks, held_out, kind="sparsegpt")
            self.restore()
            if python is not None:
                for method, kind in (("wanda", "wanda"), ("sparsegpt", "sparsegpt")):
                    out = self.tmp / f"llmc-{method}"
                    seconds = run_llmcompressor(python, self.project.dense_model, tokens, method, cfg(), cal.batch_size,
                                                out)
                    self.tokenizer.save_pretrained(out)  # the worker saves the model only
                    pruned, _, arch = load_local(out)
                    self.record(pruned, seed, label, f"llm-compressor {method.capitalize().replace('gpt', 'GPT')}",
                                seconds, self.tasks, held_out, kind=kind, reference=True,
                                achieved=round(decoder_sparsity(pruned, arch), 4))
                    del pruned
                    shutil.rmtree(out)
            for task, info in self.tasks.items():
                started = time.perf_counter()
                stats = {"general": self.stats(blocks), "task": self.stats(info["blocks"])}
                wanda_calibration = time.perf_counter() - started
                variants = [("task-aware fusion (Wanda)", {"method": "task_aware"}, "wanda"),
                            ("50/50 average (Wanda, no exclusive)",
                             {"method": "task_aware", "task_aware": {"ablation": "no_partition"}}, "wanda"),
                            ("task-aware fusion (SparseGPT)", {"method": "task_aware", "base": "sparsegpt"},
                             "sparsegpt")]
                for name, extra, kind in variants:
                    started = time.perf_counter()
                    if kind == "wanda":
                        result = compute_masks(self.model, self.arch, cfg(**extra), stats)
                        apply_masks(self.model, self.arch, result.masks)
                        seconds = wanda_calibration + time.perf_counter() - started
                    else:
                        layerwise_masks(self.model, self.arch, cfg(**extra), None,
                                        {"general": blocks, "task": info["blocks"]}, cal.batch_size)
                        seconds = time.perf_counter() - started
                    self.record(self.model, seed, label, name, seconds, [task], held_out, kind=kind)
                    self.restore()
        return timing


def fmt(value, spec=".3f", missing="-"):
    return missing if value is None else format(value, spec)


def table(bench: Bench, timings: dict) -> list[str]:
    rows = bench.rows
    baseline = {(r["seed"], r["pattern"], r["task"]): r["result"]["items"] for r in rows if r["method"] == BASELINE}
    reference = {(r["seed"], r["pattern"], r["kind"]): r["seconds"] for r in rows if r.get("reference")}
    lines = ["| seed | sparsity | task | method | task accuracy | prior-corrected | McNemar p vs TaskPrune "
             "Wanda-general | perplexity | calibrate+prune s | x llm-compressor (same class) | x one forward |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        res = r["result"]
        ref = baseline.get((r["seed"], r["pattern"], r["task"]))
        p = "-" if ref is None or r["method"] in (BASELINE, "dense") else f"{mcnemar_p(res['items'], ref):.3f}"
        seconds = r["seconds"]
        ref_s = reference.get((r["seed"], r["pattern"], r.get("kind")))
        vs_ref = "-" if seconds is None or ref_s is None or r.get("reference") else f"{seconds / ref_s:.2f}"
        vs_fwd = "-" if seconds is None else f"{seconds / timings[r['seed']]['forward_s']:.2f}"
        lines.append(f"| {r['seed']} | {r['pattern']} | {r['task']} | {r['method']} | {res['task_accuracy']:.3f} | "
                     f"{fmt(res['task_accuracy_prior_corrected'], missing='n/a')} | {p} | {res['perplexity']:.1f} | "
                     f"{fmt(seconds, '.1f')} | {vs_ref} | {vs_fwd} |")
    return lines


def timing_table(bench: Bench, timings: dict) -> list[str]:
    reference = {(r["seed"], r["pattern"], r["kind"]): r["seconds"] for r in bench.rows if r.get("reference")}
    lines = ["| seed | sparsity | calibration side(s) | method | calibrate+prune s | x llm-compressor (same class) "
             "| x one forward | x one forward without lm_head |", "|---|---|---|---|---|---|---|---|"]
    for r in bench.rows:
        if r["seconds"] is None:
            continue
        ref = reference.get((r["seed"], r["pattern"], r.get("kind")))
        forward = timings[r["seed"]]
        vs_ref = "-" if ref is None or r.get("reference") else f"{r['seconds'] / ref:.2f}"
        side = "general" if r["task"] == "-" else f"general + {r['task']}"
        lines.append(f"| {r['seed']} | {r['pattern']} | {side} | {r['method']} | {r['seconds']:.1f} | {vs_ref} | "
                     f"{r['seconds'] / forward['forward_s']:.2f} | {r['seconds'] / forward['decoder_forward_s']:.2f} |")
    return lines


def targets(bench: Bench) -> list[str]:
    """The issue's targets, checked on the measured rows (50 %, each seed and task)."""
    by = {(r["seed"], r["pattern"], r["task"], r["method"]): r for r in bench.rows}
    lines = []
    for (seed, pattern, task, method), r in sorted(by.items(), key=lambda kv: str(kv[0])):
        if method != "task-aware fusion (Wanda)" or pattern != "50%":
            continue
        base = by[(seed, pattern, task, BASELINE)]["result"]
        gain = (r["result"]["task_accuracy"] - base["task_accuracy"]) * 100
        ppl = r["result"]["perplexity"] / base["perplexity"] - 1
        met = gain >= 3 and ppl <= 0.10
        lines.append(f"- seed {seed}, {task}: task-aware fusion vs Wanda-general {gain:+.1f} points, perplexity "
                     f"{ppl * 100:+.1f} % -> {'met' if met else 'not met'} (target: >= +3 points, <= +10 %)")
    for (seed, pattern, task, method), r in sorted(by.items(), key=lambda kv: str(kv[0])):
        if not method.startswith("llm-compressor"):
            continue
        ours = by[(seed, pattern, task, BASELINE if "Wanda" in method else "TaskPrune SparseGPT (general)")]
        diff = (ours["result"]["task_accuracy"] - r["result"]["task_accuracy"]) * 100
        p = mcnemar_p(ours["result"]["items"], r["result"]["items"])
        lines.append(f"- seed {seed}, {pattern}, {task}: TaskPrune vs {method}: {diff:+.1f} points (McNemar p "
                     f"{p:.3f}), time x{ours['seconds'] / r['seconds']:.2f}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=sorted(builtin.BUILTIN))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="general-calibration samples")
    parser.add_argument("--patterns", nargs="+", default=list(PATTERNS), choices=list(PATTERNS))
    parser.add_argument("--later-seed-patterns", nargs="+", default=["50%"], choices=list(PATTERNS),
                        help="patterns run for every seed after the first")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no-llmcompressor", action="store_true", help="TaskPrune rows only")
    parser.add_argument("--timing-only", action="store_true",
                        help="time calibration + pruning only, no evaluation (run it on a quiet machine)")
    parser.add_argument("--num-samples", type=int, help="calibration blocks per side (default: params.yaml's)")
    parser.add_argument("--limit", type=int, help="test examples per task (quick runs; default: all)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/llmcompressor.md"))
    args = parser.parse_args()

    bench = Bench(args)
    python = None if args.no_llmcompressor else llmcompressor_python(bench.project)
    timings = {}
    started = time.perf_counter()
    try:
        for i, seed in enumerate(args.seeds):
            timings[seed] = bench.run_seed(seed, args.patterns if i == 0 else args.later_seed_patterns, python)
    finally:
        shutil.rmtree(bench.tmp, ignore_errors=True)
    cal = bench.params.calibration
    achieved = {r["method"] + " " + r["pattern"]: r["achieved"] for r in bench.rows if "achieved" in r}
    task_blocks = ", ".join(f"{task}: {len(info['blocks'])}" for task, info in bench.tasks.items())
    forwards = ", ".join(f"seed {seed}: {t['forward_s']} s ({t['decoder_forward_s']} s without the lm_head "
                         f"projection to the vocabulary)" for seed, t in timings.items())
    results = (timing_table(bench, timings) if args.timing_only
               else table(bench, timings) + ["", "Targets (50 %):", *targets(bench)])
    lines = results + ["",
        f"SmolLM2-135M-Instruct, CPU, {args.threads} torch threads, batch {cal.batch_size}. General calibration: "
        f"{cal.num_samples} x {cal.seq_len} tokens of fortunes per seed (shuffle seed = general sample); task-aware "
        f"rows add the task's calibration blocks ({task_blocks} x {cal.seq_len} tokens). Perplexity on "
        f"{bench.params.evaluate.perplexity_docs} held-out fortunes of the same seed. One plain forward pass over the "
        f"general tokens: {forwards}. Time of task-aware Wanda rows "
        f"includes calibrating both sides. llm-compressor 0.14.0.1 (own venv), default sequential pipeline, "
        f"lm_head excluded; decoder sparsity it reached: {json.dumps(achieved)}. "
        f"Whole benchmark: {time.perf_counter() - started:.0f} s."]
    write_report(args.out, lines)


if __name__ == "__main__":
    main()
