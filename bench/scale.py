"""How target mode's cost grows with model size: wall time and peak memory (RSS) of calibrate, score and the
frontier (the level search) at the SmolLM2 family's shapes (135M, 360M, 1.7B), random-initialised, on this CPU.

Each model is a random-initialised Llama of that family's config with SmolLM2's tokenizer, saved as the dense model
of a scratch project; each stage then runs in its own process (``taskprune stage NAME``), so its peak RSS
(``VmHWM`` of that child, since its exec) is the stage's own. Accuracy of a random model means nothing here: only time and
memory are measured. The model's own size in memory (fp32 parameters) is the yardstick for RSS; seconds are
the stage's own, without the process start and imports.

    .venv/bin/python bench/scale.py [--sizes 135M 360M 1.7B] [--samples 16] [--methods structured]
        [--frontier-rounds 1 0] [--out bench/results/scale.md]

Needs the dense model (its tokenizer): run `taskprune stage fetch_model` (or `taskprune run`) first.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from prune_matrix import write_report  # same directory

SHAPES = {  # SmolLM2 configs (HuggingFaceTB/SmolLM2-*): hidden, intermediate, layers, heads, kv heads
    "135M": (576, 1536, 30, 9, 3),
    "360M": (960, 2560, 32, 15, 5),
    "1.7B": (2048, 8192, 24, 32, 32),
}
STAGES = ("prepare_data", "calibrate", "frontier", "score")
ROUNDS_LABEL = "frontier, decode rounds {}"  # the frontier once per --frontier-rounds value


def make_model(size: str, tokenizer_dir: Path, out: Path) -> int:
    """A random-initialised SmolLM2-shaped Llama saved to ``out``; returns its parameter count."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    hidden, intermediate, layers, heads, kv = SHAPES[size]
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv, vocab_size=len(tokenizer),
                         max_position_embeddings=8192, rope_theta=100000.0, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return sum(p.numel() for p in model.parameters())


STAGE_CODE = """
import sys, time
from pathlib import Path
from taskprune import config, env
env.apply()
from taskprune.paths import Project
from taskprune.stages import run_stage
project = Project(Path(sys.argv[1]))
started = time.perf_counter()
run_stage(sys.argv[2], config.load(project.params_file), project)
# VmHWM: the peak resident set of this process's own memory since exec (ru_maxrss would carry over the peak
# of the process that started it, which made the model)
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print("MEASURED", time.perf_counter() - started, peak)
"""


def run_stage(project: Path, name: str) -> tuple[float, float]:
    """Seconds and peak RSS (GB) of stage ``name`` run alone in a fresh process."""
    done = subprocess.run([sys.executable, "-c", STAGE_CODE, str(project), name], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"stage {name} failed: {done.stderr[-2000:]}")
    line = next(line for line in done.stdout.splitlines() if line.startswith("MEASURED"))
    _, seconds, kilobytes = line.split()
    return float(seconds), float(kilobytes) / 1024 / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--samples", type=int, default=16, help="calibration.num_samples (blocks of 128 tokens)")
    parser.add_argument("--methods", nargs="+", default=["structured"])
    parser.add_argument("--skip", nargs="*", default=[], metavar="SIZE:STAGE",
                        help="stages not run at a size, e.g. 1.7B:frontier (one that would not fit in memory here)")
    parser.add_argument("--frontier-rounds", nargs="+", type=int, default=[1, 0],
                        help="target.decode_rounds of each frontier run (0: no timing, dense not kept beside)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/scale.md"))
    args = parser.parse_args()

    rows = []
    started = time.perf_counter()
    for size in args.sizes:  # each size in a fresh process (its model, its scratch project)
        with tempfile.TemporaryDirectory(prefix=f"taskprune-scale-{size}-") as tmp:
            skipped = ",".join(item.split(":", 1)[1] for item in args.skip if item.startswith(f"{size}:")) or "-"
            done = subprocess.run([sys.executable, __file__, "--one", size, tmp, str(args.samples),
                                   ",".join(args.methods), skipped, ",".join(map(str, args.frontier_rounds))],
                                  capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(done.stderr[-3000:])
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    lines = ["| model | parameters | fp32 size (GB) | stage | seconds | peak RSS (GB) | RSS x model size |",
             "|---|---|---|---|---|---|---|"]
    names = ["calibrate", *(ROUNDS_LABEL.format(r) for r in args.frontier_rounds), "score"]
    for r in rows:
        for name in names:
            if name not in r:
                lines.append(f"| SmolLM2-{r['size']} shape | {r['params'] / 1e6:.0f}M | {r['gb']:.2f} | {name} | "
                             "not run | - | - |")
                continue
            seconds, rss = r[name]
            lines.append(f"| SmolLM2-{r['size']} shape | {r['params'] / 1e6:.0f}M | {r['gb']:.2f} | {name} | "
                         f"{seconds:.0f} | {rss:.2f} | {rss / r['gb']:.2f} |")
    lines += ["", f"Random-initialised SmolLM2-shaped Llamas, CPU, {os.cpu_count()} cores; target mode with methods "
                  f"{args.methods}, calibration {args.samples} x 128 tokens per side, one level (0.1), no refinement, "
                  f"validation accuracy on a tenth of capital (47 questions); the frontier run with each "
                  f"`target.decode_rounds` of {args.frontier_rounds}. Each stage in its own "
                  f"process (`taskprune stage`); peak RSS is that process's VmHWM (its maximum resident set since exec). Whole benchmark: "
                  f"{time.perf_counter() - started:.0f} s."]
    write_report(args.out, lines)


def one(size: str, tmp: str, samples: str, methods: str, skipped: str, rounds: str) -> None:
    """One size in this (fresh) process: make the model, run the stages, print a dict literal of the results."""
    from taskprune import config
    from taskprune.paths import Project

    home = Project.find()
    root = Path(tmp) / "project"
    (root / "artifacts" / "model").mkdir(parents=True)
    shutil.copy(home.params_file, root / "params.yaml")
    params_count = make_model(size, home.dense_model, root / "artifacts" / "model" / "dense")
    config.write_overrides(root / "params.yaml", [
        f"calibration.num_samples={samples}", f"target.methods=[{methods}]", f"prune.method={methods.split(',')[0]}", "target.levels=[0.1]", "target.refine=0",
        "target.max_accuracy_drop=0.05", "task.validation_fraction=0.1", "task.calib_fraction=0.3"])
    result = {"size": size, "params": params_count, "gb": params_count * 4 / 1e9}
    for name in STAGES:
        if name in skipped.split(","):
            continue
        if name != "frontier":
            result[name] = run_stage(root, name)
            continue
        for count in rounds.split(","):
            config.write_overrides(root / "params.yaml", [f"target.decode_rounds={count}"])
            result[ROUNDS_LABEL.format(count)] = run_stage(root, name)
    print(json.dumps(result))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        one(*sys.argv[2:8])
    else:
        main()
