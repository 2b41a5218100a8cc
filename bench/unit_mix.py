"""Structured pruning's unit mix: at about the same share of decoder-linear parameters removed, which units to take
(MLP width, head groups, whole layers) and how the two calibration sides are fused, each point judged as target mode
judges it (validation accuracy and its paired lower bound against dense), optionally after recovery.

In a scratch project that links the dense model: the real prepare_data and calibrate stages, then one frontier
(``taskprune.frontier.Frontier``, the frontier stage's own code) that makes every point; each point is
``LABEL@LEVEL`` or ``LABEL@LEVEL:KEY=VALUE,KEY=VALUE`` (params.yaml overrides for that point).

    .venv/bin/python bench/unit_mix.py --task capital [--validation 0.4] [--recover] \\
        --points width@0.1 heads@0.1:prune.structured.keep_heads=6 ... [--out bench/results/unit_mix.md]

Needs the dense model: run `taskprune stage fetch_model` (or `taskprune run`) first.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from taskprune import env

env.apply()

from structured import scratch, stage  # noqa: E402  (same directory)
from target import task_overrides  # noqa: E402

from taskprune import config  # noqa: E402
from taskprune.paths import Project  # noqa: E402


def parse_point(text: str) -> tuple[str, float, list[str]]:
    label, _, rest = text.partition("@")
    level, _, settings = rest.partition(":")
    return label, float(level), [item for item in settings.split(",") if item]


def main() -> None:
    from taskprune.frontier import Frontier
    from taskprune.target import judge

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="capital", help="built-in name or file:PATH")
    parser.add_argument("--validation", type=float, default=0.4, help="task.validation_fraction")
    parser.add_argument("--budget", type=float, default=0.05, help="target.max_accuracy_drop the points are judged by")
    parser.add_argument("--recover", action="store_true", help="recovery in the loop (recover.* of params.yaml)")
    parser.add_argument("--points", nargs="+", required=True, help="LABEL@LEVEL[:KEY=VALUE,...]")
    parser.add_argument("--out", default="bench/results/unit_mix.md")
    args = parser.parse_args()
    points = [parse_point(text) for text in args.points]
    home = Project.find()
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="taskprune-unit-mix-") as tmp:
        project = scratch(Path(tmp) / "task", home)
        base = [*task_overrides(args.task), f"target.max_accuracy_drop={args.budget}",
                f"task.validation_fraction={args.validation}", "target.methods=[structured]",
                "target.decode_rounds=0", f"recover.enabled={str(args.recover).lower()}"]
        params = config.load(project.params_file, base)
        stage("prepare_data", params, project)
        stage("calibrate", params, project)
        frontier = Frontier(params, project)
        for label, level, settings in points:
            frontier.params = config.load(project.params_file, base + settings)
            point = judge(frontier.make("structured", level), frontier.params, frontier.dense_accuracy)
            structure = frontier.scores[next(iter(frontier.scores))].structure
            units = structure["units"]
            heads = structure["counts"]["groups_kept"] * units["heads"] // units["kv_heads"]
            rows.append((label, ", ".join(settings) or "(defaults)", level, point, len(structure["removed_layers"]),
                         structure["counts"]["channels_kept"], heads))
            print(f"{label} at {level:g}: validation {point.validation_accuracy:.3f} (dense "
                  f"{frontier.dense_accuracy:.3f}), bound {point.accuracy_bound:.3f}, {point.reduction:.1%} fewer",
                  flush=True)
        dense = frontier.dense_accuracy
    floor = dense * (1 - args.budget)
    lines = [f"| point | settings | level | layers removed | MLP width (of {units['intermediate']}) | query heads "
             f"(of {units['heads']}) | decoder-linear params removed | validation acc (dense {dense:.3f}) | "
             f"paired lower bound ({floor:.3f} allowed) | within |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for label, settings, level, point, layers, width, heads in rows:
        lines.append(f"| {label} | {settings} | {level:g} | {layers} | {width} | {heads} | {point.reduction:.1%} | "
                     f"{point.validation_accuracy:.3f} | {point.accuracy_bound:.3f} | "
                     f"{'yes' if point.within else 'no'} |")
    lines += ["", f"Task {args.task}, validation split {args.validation:g}, budget {args.budget:.0%} (judged as target "
                  f"mode judges: the paired lower bound at {params.target.confidence:.0%}); recovery in the loop: "
                  f"{'yes' if args.recover else 'no'}. Whole run: {time.perf_counter() - started:.0f} s."]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
