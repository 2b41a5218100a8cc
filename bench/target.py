"""Target mode on the project's model (SmolLM2 by default; set ``model.name`` in its params.yaml for another): per
task, method and accuracy budget, the smallest model within the budget (chosen on the validation split, reported on
the test split), in one run.

For each task (built-in names, or ``file:PATH`` for a task given only as a JSONL file), in a scratch project that
links the dense model: the real prepare_data and calibrate stages with target mode on, then the frontier's points
(``taskprune.frontier.Frontier``, the frontier stage's own code) for each method. A point does not depend on the
budget, so each is made once and judged against every budget: the level search (``taskprune.target.search_levels``)
runs per budget over the same measured points. The chosen point of every (method, budget) is then built by the real
score, search, prune (and recover) stages at that level and evaluated on the test split; decode tokens/s of every
chosen model is timed next to dense at the end (all models in one process, rounds interleaved, median).

    .venv/bin/python bench/target.py [--tasks capital sentiment file:bench/tasks/topics.jsonl]
        [--methods structured sieve] [--budgets 0.02 0.05] [--levels ...] [--refine 2] [--recover] [--set KEY=VALUE ...]
        [--out bench/results/target.md]

Needs the dense model: run `taskprune stage fetch_model` (or `taskprune run`) first.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from taskprune import env

env.apply()

from prune_matrix import write_report  # noqa: E402  (same directory)
from structured import decode_speeds, scratch, stage  # noqa: E402

from taskprune import config  # noqa: E402
from taskprune.paths import Project, read_json  # noqa: E402


def wilson(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson interval of an accuracy."""
    if n == 0:
        return 0.0, 0.0
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def forward_seconds(project: Project, params) -> float:
    """One plain forward pass of the dense model over the calibration tokens (both sides), in seconds."""
    import torch

    from taskprune.calibration.blocks import calibration_blocks
    from taskprune.models.loading import load_local

    model, tokenizer, _ = load_local(project.dense_model, "cpu")
    blocks = torch.cat(list(calibration_blocks(project, params.calibration, tokenizer).values()))
    started = time.perf_counter()
    with torch.no_grad():
        for chunk in blocks.split(params.calibration.batch_size):
            model(input_ids=chunk, use_cache=False)
    return time.perf_counter() - started


def task_overrides(task: str) -> list[str]:
    if task.startswith("file:"):
        return [f"task.path={Path(task[5:]).resolve()}"]
    return [f"task.name={task}", "task.path="]


def main() -> None:
    from taskprune.frontier import Frontier
    from taskprune.target import at_level, choose, judge, search_levels

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["capital", "sentiment", "file:bench/tasks/topics.jsonl"])
    parser.add_argument("--methods", nargs="+", default=["structured", "sieve"])
    parser.add_argument("--budgets", nargs="+", type=float, default=[0.02, 0.05])
    parser.add_argument("--levels", nargs="+", type=float, default=[0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    parser.add_argument("--refine", type=int, default=2)
    parser.add_argument("--patience", type=int, default=2, help="target.patience")
    parser.add_argument("--validation", type=float, default=0.2, help="task.validation_fraction")
    parser.add_argument("--recover", action="store_true", help="recovery in the loop (recover.* of params.yaml)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="more params.yaml overrides for every task, e.g. recover.steps=300")
    parser.add_argument("--decode-rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench/results/target.md"))
    parser.add_argument("--compare-search", type=int, default=0, metavar="STEPS",
                        help="sieve's genetic search (prune.allocation: search) against its uniform ranks: per budget, "
                             "the GA at the level uniform chose, then up the grid while it stays within (at most "
                             "STEPS levels); table in --search-out")
    parser.add_argument("--search-out", type=Path, default=Path("bench/results/target_search.md"))
    args = parser.parse_args()

    home = Project.find()
    started = time.perf_counter()
    rows, notes, compared = [], [], []
    with tempfile.TemporaryDirectory(prefix="taskprune-target-") as tmp:
        for task in args.tasks:
            name = Path(task[5:]).stem if task.startswith("file:") else task
            project = scratch(Path(tmp) / name, home)
            base = task_overrides(task) + [
                "target.max_accuracy_drop=0.05", f"task.validation_fraction={args.validation}", f"target.methods=[{', '.join(args.methods)}]",
                f"target.levels=[{', '.join(map(str, args.levels))}]", f"target.refine={args.refine}", f"target.patience={args.patience}",
                "target.decode_rounds=0", f"recover.enabled={str(args.recover).lower()}", *args.set]
            params = config.load(project.params_file, base)
            stage("prepare_data", params, project)
            calibrate = stage("calibrate", params, project)
            forward = forward_seconds(project, params)
            stage("evaluate_dense", params, project)
            dense = read_json(project.eval_file("dense"))
            frontier = Frontier(params, project)
            made: dict[tuple[str, float], object] = {}
            chosen_models: dict[str, Path] = {}
            for method in args.methods:
                frontier.scores = {}
                for budget in args.budgets:
                    budgeted = params.model_copy(update={"target": params.target.model_copy(
                        update={"max_accuracy_drop": budget})})

                    def measure(level, method=method, budgeted=budgeted):
                        if (method, level) not in made:
                            made[(method, level)] = frontier.make(method, level)
                        point = judge(made[(method, level)], budgeted, frontier.dense_accuracy)
                        print(json.dumps({"task": name, "method": method, "budget": budget, "point": level,
                                          "reduction": point.reduction, "validation": point.validation_accuracy,
                                          "bound": point.accuracy_bound, "within": point.within}), flush=True)
                        return type(point)(**{**point.as_dict(), "reasons": list(point.reasons)})

                    points = search_levels(measure, params.target.levels, params.target.refine,
                                           params.target.patience)
                    best, inside = choose(points, "parameters")
                    print(json.dumps({"task": name, "method": method, "budget": budget, "level": best.level,
                                      "inside": inside, "validation": best.validation_accuracy}), flush=True)
                    row = dict(task=name, method=method, budget=budget, inside=inside, point=best.as_dict(),
                               dense=dense, dense_validation=frontier.dense_accuracy, tried=len(points))
                    if inside:
                        run = at_level(params, method, best.level)
                        run.target.max_accuracy_drop = None  # the fixed-level stages at the chosen point
                        for s in ("score", "search", "prune", "evaluate", "recover", "evaluate_recovered"):
                            stage(s, run, project)
                        which = "recovered" if args.recover else "pruned"
                        result = read_json(project.eval_file(which))
                        directory = project.recovered_model if args.recover else project.pruned_model
                        key = f"{name} {method} {budget:.0%}"
                        chosen_models[key] = shutil.copytree(directory, Path(tmp) / key.replace(" ", "-"))
                        row.update(test=result, model=key)
                    rows.append(row)
                search_seconds = sum(point.seconds for (m, _), point in made.items() if m == method)
                for row in rows:
                    if row["task"] == name and row["method"] == method:
                        row["search_seconds"], row["forward_seconds"] = search_seconds, forward
                        row["calibrate_seconds"] = calibrate
            if args.compare_search:
                compared += compare_search(config.load(project.params_file, base + ["prune.allocation=search"]),
                                           project, name, made, frontier, args, rows)
                report_search(args, compared)
            # decode of every chosen model next to dense, in one process
            kept = {k: v for k, v in chosen_models.items() if (v / "config.json").is_file()}
            speeds = decode_speeds({"dense": home.dense_model, **kept}, {}, config.Params().evaluate.decode_tokens,
                                   args.decode_rounds) if kept else {"dense": 1.0}
            for row in rows:
                if row["task"] == name and row.get("model") in speeds:
                    row["speedup"] = speeds[row["model"]] / speeds["dense"]
            report(args, rows, notes, started, config.load(home.params_file).model.name)


def compare_search(params, project, name: str, made: dict, frontier, args, rows: list[dict]) -> list[dict]:
    """Per budget: sieve with the genetic search's ranks at the level its uniform ranks reached (or the closest
    level tried when none was within), then at the next grid levels while the searched point stays within (at
    most ``args.compare_search`` of them); uniform is measured at the same levels. Both judged on the validation
    split by the same paired bound, so "within" means the same for both."""
    from taskprune.frontier import Frontier
    from taskprune.target import judge

    searched, ga = Frontier(params, project), {}
    out = []
    for row in rows:
        if row["task"] != name or row["method"] != "sieve":
            continue
        budgeted = params.model_copy(update={"target": params.target.model_copy(
            update={"max_accuracy_drop": row["budget"]})})
        level = row["point"]["level"]
        above = [v for v in sorted(args.levels) if v > level][:args.compare_search]
        for at in [level, *above]:
            if at not in ga:
                ga[at] = searched.make("sieve", at)
            if ("sieve", at) not in made:
                made[("sieve", at)] = frontier.make("sieve", at)
            pair = {kind: judge(type(p)(**p.as_dict()), budgeted, frontier.dense_accuracy)
                    for kind, p in (("uniform", made[("sieve", at)]), ("search", ga[at]))}
            out.append(dict(task=name, budget=row["budget"], level=at, dense=frontier.dense_accuracy,
                            search_settings=params.search.model_dump(),
                            **{kind: p.as_dict() for kind, p in pair.items()}))
            print(json.dumps({"task": name, "budget": row["budget"], "level": at,
                              **{k: [p.validation_accuracy, p.within] for k, p in pair.items()}}), flush=True)
            if not pair["search"].within:
                break
    return out


def report_search(args, compared: list[dict]) -> None:
    lines = ["| task | budget | level | uniform: validation acc (bound) | uniform within | search: validation acc "
             "(bound) | search within | search time | dense validation acc |", "|---|---|---|---|---|---|---|---|---|"]
    for c in compared:
        u, g = c["uniform"], c["search"]
        lines.append(f"| {c['task']} | {c['budget']:.0%} | {c['level']:g} | {u['validation_accuracy']:.3f} "
                     f"({u['accuracy_bound']:.3f}) | {'yes' if u['within'] else 'no'} | {g['validation_accuracy']:.3f} "
                     f"({g['accuracy_bound']:.3f}) | {'yes' if g['within'] else 'no'} | {g['seconds']:.0f} s vs "
                     f"{u['seconds']:.0f} s | {c['dense']:.3f} |")
    cfg = compared[0]["search_settings"] if compared else config.Params().search.model_dump()
    lines += ["", f"Genetic search: population {cfg['population']}, {cfg['generations']} generations, fitness "
                  f"{cfg['fitness']} on {cfg['examples']} calibration rows, in the frontier's process. Bound: the "
                  f"paired one-sided lower confidence bound target mode judges by (confidence "
                  f"{config.Params().target.confidence:g}). Search time: the point's whole making (search, prune, "
                  f"validation), searched vs uniform."]
    write_report(args.search_out, lines)


def report(args, rows: list[dict], notes: list[str], started: float, model: str) -> None:
    lines = ["| task | method | budget | level chosen (validation) | validation acc (dense) | decoder-linear params "
             "removed | bytes x dense | decode x dense | test acc [95 % CI] | dense test acc | test drop | within on "
             "test | search time x one forward pass |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    cells = within = 0
    for r in rows:
        point, dense = r["point"], r["dense"]
        ratio = r.get("search_seconds", 0) / r["forward_seconds"] if r.get("forward_seconds") else 0
        if "test" not in r:
            lines.append(f"| {r['task']} | {r['method']} | {r['budget']:.0%} | none within ({r['tried']} tried; "
                         f"closest {point['level']:g}) | {point['validation_accuracy']:.3f} ({r['dense_validation']:.3f}) "
                         f"| - | - | - | - | {dense['task_accuracy']:.3f} | - | - | {ratio:.0f} |")
            continue
        test = r["test"]
        correct, n = sum(test["items"].values()), len(test["items"])
        low, high = wilson(correct, n)
        drop = (dense["task_accuracy"] - test["task_accuracy"]) / dense["task_accuracy"]
        ok = drop <= r["budget"] + 1e-9
        cells, within = cells + 1, within + ok
        speed = f"{r['speedup']:.2f}" if "speedup" in r else "-"
        lines.append(f"| {r['task']} | {r['method']} | {r['budget']:.0%} | {point['level']:g} | "
                     f"{point['validation_accuracy']:.3f} ({r['dense_validation']:.3f}) | "
                     f"{1 - test['decoder_linear_nonzero'] / dense['decoder_linear_nonzero']:.1%} | "
                     f"{test['bytes_on_disk'] / dense['bytes_on_disk']:.3f} | {speed} | {test['task_accuracy']:.3f} "
                     f"[{low:.3f}, {high:.3f}] | {dense['task_accuracy']:.3f} | {drop:+.1%} | {'yes' if ok else 'no'} | "
                     f"{ratio:.0f} |")
    p = config.Params()
    lines += ["", f"- validation-chosen point within the budget on the test split: {within} of {cells} cells "
                  "that found a point", *[f"- {n}" for n in notes], "",
              f"{model}, CPU, {os.cpu_count()} cores. Validation split {args.validation:g} "
              f"of each task; levels {args.levels}, walk stopped after {args.patience} outside in a row, {args.refine} "
              f"bisection steps; recovery in the loop: "
              f"{'yes' if args.recover else 'no'}{''.join(f', {o}' for o in args.set)}. Search time: the frontier's points of one method for all budgets "
              f"(each point made once: its score, prune and validation accuracy), divided by one forward pass of the dense model over the calibration tokens "
              f"of both sides. Decode: {p.evaluate.decode_tokens} new tokens at batch 1, median of "
              f"{args.decode_rounds} interleaved rounds. Whole benchmark: {time.perf_counter() - started:.0f} s "
              f"(calibrate {statistics.mean(r.get('calibrate_seconds', 0) for r in rows):.0f} s per task)."]
    write_report(args.out, lines)


if __name__ == "__main__":
    main()
