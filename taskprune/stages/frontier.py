"""frontier: target mode (params: target). For each allowed method, the largest compression level whose validation
accuracy stays within the budget, found by a grid walked upwards and refined by bisection (taskprune/target.py);
the best point across methods is the choice the later stages run at.

Each point is made in memory from the calibration outputs: the method's score at that level (a score that does
not depend on the level, such as LLM-Sieve's factors, is computed once), its uniform allocation, the prune step
and, with ``recover.enabled``, recovery (so a point that meets the budget only after recovery counts). Its
validation accuracy (lm-eval on ``task_validation.jsonl``), parameters, bytes on disk (the model saved in its
export format) and decode speed next to dense (rounds interleaved) are recorded. Target mode off: a stage.json
saying so.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

from taskprune.artifacts import Artifacts, HeldArtifacts
from taskprune.calibration.blocks import calibration_blocks
from taskprune.config import Params
from taskprune.data.schema import read_jsonl
from taskprune.evaluation import size_metrics
from taskprune.evaluation.accuracy import run_lm_eval
from taskprune.evaluation.size import decode_tokens_per_s
from taskprune.methods import get_method
from taskprune.models.formats import FORMATS
from taskprune.models.loading import load_local, pick_device
from taskprune.paths import Project, StageTimer, atomic_dir, write_json
from taskprune.recovery import make_trainable, merge_keeping_masks, train_recovery
from taskprune.search.choice import uniform_allocation
from taskprune.target import Point, at_level, choose, judge, search_levels


class Frontier:
    """Measures points (method, level) against the dense model, reusing what does not change with the level."""

    def __init__(self, params: Params, project: Project):
        self.params, self.project = params, project
        self.device = pick_device(params.model.device)
        self.dense, self.tokenizer, self.arch = load_local(project.dense_model, self.device)
        self.validation = project.data / "task_validation.jsonl"
        self.dense_accuracy = self.accuracy(self.dense)
        self.dense_size = size_metrics(self.dense, self.arch, project.dense_model)
        self.scores: dict[str, object] = {}
        self.blocks = None

    def accuracy(self, model) -> float:
        return run_lm_eval(model, self.tokenizer, self.validation, self.params.evaluate.batch_size, None,
                           self.device)["task_accuracy"]

    def speedup(self, model) -> float | None:
        """Decode tokens/s of ``model`` over dense's, rounds interleaved (medians)."""
        rounds = self.params.target.decode_rounds
        if not rounds:
            return None
        tokens = self.params.evaluate.decode_tokens
        times: dict[str, list[float]] = {"dense": [], "point": []}
        for _ in range(rounds):
            for label, m in (("dense", self.dense), ("point", model)):
                times[label].append(decode_tokens_per_s(m, self.tokenizer, tokens, self.device, repeats=1))
        return round(statistics.median(times["point"]) / statistics.median(times["dense"]), 4)

    def fresh(self):
        return load_local(self.project.dense_model, self.device)[0]

    def score(self, params: Params):
        """The method's score at these settings, computed once per distinct prune section."""
        key = params.prune.model_dump_json()
        if key not in self.scores:
            self.scores = {key: params.prune.method_object.score(params, self.fresh(), self.tokenizer, self.arch,
                                                                 Artifacts(self.project))}
        return self.scores[key]

    def recover(self, params: Params, model, masks, label: str):
        cfg = params.recover
        teacher = blocks = None
        if cfg.loss == "distill":
            if self.blocks is None:
                parts = calibration_blocks(self.project, params.calibration, self.tokenizer)
                self.blocks = torch.cat([parts["task"], parts["general"]])
            teacher, blocks = self.dense, self.blocks
        made = make_trainable(model, self.arch, cfg, teacher, blocks)
        train = read_jsonl(self.project.data / "task_calib.jsonl")
        with tempfile.TemporaryDirectory(prefix=f"taskprune-frontier-{label}-") as checkpoints:
            train_recovery(made.model, self.tokenizer, train, cfg, Path(checkpoints), self.device,
                           distill=made.distill)
        return merge_keeping_masks(made.model, self.arch, masks)

    def measure(self, method_name: str, level: float) -> Point:
        started = time.perf_counter()
        params = at_level(self.params, method_name, level)
        method = params.prune.method_object
        plan = method.plan(params.prune)
        model = self.fresh()
        allocation = uniform_allocation(method, params, model, self.arch) if plan.always_allocates else None
        score = self.score(params)
        result = method.prune(params, model, self.arch, HeldArtifacts(self.project, params.prune, score, allocation))
        with tempfile.TemporaryDirectory(prefix="taskprune-frontier-") as tmp:
            FORMATS[plan.export].save(result.model, self.tokenizer, Path(tmp))
            size = size_metrics(result.model, self.arch, Path(tmp))
        model = result.model
        label = f"{method_name}-{level:g}"
        if params.recover.enabled:
            masks = score.masks.masks if score.masks is not None else None
            model = self.recover(params, model, masks, label)
        dense = self.dense_size
        point = Point(method=method_name, level=level, validation_accuracy=round(self.accuracy(model), 6),
                      reduction=round(1 - size["decoder_linear_nonzero"] / dense["decoder_linear_params"], 6),
                      bytes_on_disk=size["bytes_on_disk"],
                      bytes_fraction=round(size["bytes_on_disk"] / dense["bytes_on_disk"], 6),
                      speedup=self.speedup(model), recovered=params.recover.enabled)
        point.seconds = round(time.perf_counter() - started, 2)
        judge(point, self.params, self.dense_accuracy)
        speed = f", decode {point.speedup:.2f}x" if point.speedup is not None else ""
        print(f"frontier: {method_name} at {level:g}: validation accuracy {point.validation_accuracy:.3f} "
              f"(dense {self.dense_accuracy:.3f}), {point.reduction:.1%} fewer decoder-linear parameters, "
              f"{point.bytes_fraction:.2f}x bytes{speed}: "
              + ("within the budget" if point.within else "outside: " + "; ".join(point.reasons)), flush=True)
        return point


def run(params: Params, project: Project) -> None:
    timer = StageTimer(project, "frontier")
    cfg = params.target
    if not cfg.enabled:
        with atomic_dir(project.frontier) as out:
            write_json(out / "stage.json", {"enabled": False})
        timer.done(enabled=False)
        return
    frontier = Frontier(params, project)
    floor = frontier.dense_accuracy * (1 - cfg.max_accuracy_drop)
    print(f"frontier: dense validation accuracy {frontier.dense_accuracy:.3f} on "
          f"{len(read_jsonl(frontier.validation))} validation examples; budget: at least {floor:.3f} "
          f"({cfg.max_accuracy_drop:.0%} drop); methods {', '.join(cfg.methods)}; levels "
          f"{', '.join(f'{v:g}' for v in cfg.levels)}, {cfg.refine} refinement step(s)", flush=True)
    points = []
    for name in cfg.methods:
        frontier.scores = {}
        points += search_levels(lambda level, name=name: frontier.measure(name, level), cfg.levels, cfg.refine)
    chosen, inside = choose(points, cfg.objective)
    best = {"method": chosen.method, "level": chosen.level, "within_budget": inside,
            "level_key": get_method(chosen.method).level_key, "validation_accuracy": chosen.validation_accuracy,
            "reduction": chosen.reduction, "bytes_fraction": chosen.bytes_fraction, "speedup": chosen.speedup}
    with atomic_dir(project.frontier) as out:
        write_json(out / "frontier.json", {
            "dense": {"validation_accuracy": frontier.dense_accuracy, "bytes_on_disk": frontier.dense_size[
                "bytes_on_disk"], "decoder_linear_params": frontier.dense_size["decoder_linear_params"]},
            "budget": {"max_accuracy_drop": cfg.max_accuracy_drop, "min_validation_accuracy": round(floor, 6),
                       "max_bytes_fraction": cfg.max_bytes_fraction, "min_decode_speedup": cfg.min_decode_speedup},
            "objective": cfg.objective, "validation_examples": len(read_jsonl(frontier.validation)),
            "points": [p.as_dict() for p in points], "choice": best})
        write_json(out / "points.json", [{k: v for k, v in p.as_dict().items() if k != "reasons"} for p in points])
        write_json(out / "stage.json", {"enabled": True, "points": len(points), "choice": best})
    timer.done(enabled=True, points=len(points), method=chosen.method, level=chosen.level, within_budget=inside)
    if inside:
        print(f"frontier: chose {chosen.method} at {chosen.level:g} ({chosen.reduction:.1%} fewer decoder-linear "
              f"parameters, validation accuracy {chosen.validation_accuracy:.3f}) of {len(points)} points tried")
    else:
        print(f"frontier: no point is within the budget; the closest is {chosen.method} at {chosen.level:g} "
              f"(validation accuracy {chosen.validation_accuracy:.3f} < {floor:.3f}); it is built and evaluated "
              "but not registered as a candidate for promotion")
