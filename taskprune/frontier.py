"""Target mode's measurements: points (method, compression level) made in memory from the calibration outputs
and measured against the dense model (the frontier stage and bench/target.py use it).

A point: the method's score at that level (a score that does not depend on the level, such as LLM-Sieve's
factors, is computed once), its uniform allocation (with ``prune.allocation: search``, the genetic search's at that
level, fitness in this process), the prune step and, with ``recover.enabled``, recovery (so a
point that meets the budget only after recovery counts); then its validation accuracy (lm-eval on
``task_validation.jsonl``), parameters, bytes on disk (the model saved in its export format) and decode speed next
to dense (rounds interleaved; the point and dense are loaded from disk for each of their timings, one at a time, so
timing holds one model in memory, not two).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from taskprune.artifacts import Artifacts, HeldArtifacts
from taskprune.calibration.blocks import calibration_blocks
from taskprune.config import Params
from taskprune.data.schema import read_jsonl
from taskprune.evaluation import size_metrics
from taskprune.evaluation.accuracy import run_lm_eval
from taskprune.evaluation.size import paired_decode
from taskprune.models.formats import FORMATS
from taskprune.models.loading import load_local, pick_device
from taskprune.paths import Project, fingerprint, write_json
from taskprune.recovery import make_trainable, merge_keeping_masks, train_recovery
from taskprune.search.choice import allocation_summary, level_space_of, search_genome, uniform_allocation
from taskprune.search.fitness import SerialEvaluator, worker_spec
from taskprune.target import Point, accuracy_bound, at_level, judge


def kept_for(project: Project, params: Params, what: str) -> Path:
    """Where the frontier keeps what it made for a point that a later stage would make again when that point is
    chosen (``what``: ``search``, the genetic search's allocation; ``recover``, the LoRA recovery's last
    checkpoint); named after everything that makes the point, so a stage finds it only for the same pruned
    model, settings and calibration rows."""
    return project.state / "checkpoints" / "frontier-{}-{}".format(what, fingerprint(
        params.prune.model_dump_json().encode(), params.search.model_dump_json(exclude={"workers", "ray_address"})
        .encode(), params.recover.model_dump_json().encode(), params.calibration.model_dump_json().encode(),
        (project.data / "task_calib.jsonl").read_bytes(), (project.stats / "stage.json").read_bytes()))


class Frontier:
    """Measures points (method, level) against the dense model, reusing what does not change with the level."""

    def __init__(self, params: Params, project: Project):
        self.params, self.project = params, project
        self.device = pick_device(params.model.device)
        self.dense, self.tokenizer, self.arch = load_local(project.dense_model, self.device)
        self.validation = project.data / "task_validation.jsonl"
        dense = self.evaluate(self.dense)
        self.dense_accuracy, self.dense_items = dense["task_accuracy"], dense["items"]
        self.dense_size = size_metrics(self.dense, self.arch, project.dense_model)
        if not self.needs_dense(params):  # memory: one model at a time (a point is made from a fresh copy)
            self.dense = None
        self.scores: dict[str, object] = {}
        self.inputs = Artifacts(project)  # one for every point: what a method keeps across levels stays
        self.blocks = None
        self.kept: list[Path] = []  # what later stages may reuse (kept_for)

    @staticmethod
    def needs_dense(params: Params) -> bool:
        """Whether the dense model stays in memory beside each point: only as the teacher of distillation (decode
        timing loads each model from disk for its rounds); otherwise the frontier holds one model."""
        return params.recover.enabled and params.recover.loss == "distill"

    def evaluate(self, model) -> dict:
        """Validation accuracy and per-item correctness (lm-eval)."""
        return run_lm_eval(model, self.tokenizer, self.validation, self.params.evaluate.batch_size, None, self.device)

    def speedup(self, saved: Path) -> float | None:
        """Decode tokens/s of the point saved at ``saved`` over dense's, rounds interleaved (medians). Each is
        loaded from disk for each of its timings (both the same way: weights in memory of their own), so only one
        is in memory at a time."""
        rounds = self.params.target.decode_rounds
        if not rounds:
            return None
        return paired_decode(lambda: load_local(saved, self.device, owned=True)[0], self.fresh, self.tokenizer,
                             self.params.evaluate.decode_tokens, self.device, rounds)["speedup"]

    def fresh(self):
        """A copy of the dense model to prune (consumed by the surgery, changed in place by masks)."""
        return load_local(self.project.dense_model, self.device, owned=True)[0]

    def score(self, params: Params):
        """The method's score at these settings, computed once per distinct prune section."""
        key = params.prune.model_dump_json()
        if key not in self.scores:
            self.scores = {key: params.prune.method_object.score(params, self.fresh(), self.tokenizer, self.arch,
                                                                 self.inputs)}
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
        if cfg.train == "lora":  # an adapter is small: kept, so the recover stage need not train the chosen again
            kept = kept_for(self.project, params, "recover")
            shutil.rmtree(kept, ignore_errors=True)  # a point is trained from its start, never resumed here
            self.kept.append(kept)
            train_recovery(made.model, self.tokenizer, train, cfg, kept, self.device, distill=made.distill)
        else:
            with tempfile.TemporaryDirectory(prefix=f"taskprune-frontier-{label}-") as checkpoints:
                train_recovery(made.model, self.tokenizer, train, cfg, Path(checkpoints), self.device,
                               distill=made.distill)
        return merge_keeping_masks(made.model, self.arch, masks)

    def keep_only(self, chosen: Params) -> None:
        """Remove what was kept for every point but ``chosen`` (the parameters of the point chosen)."""
        keep = {kept_for(self.project, chosen, what) for what in ("search", "recover")}
        for path in self.kept:
            if path not in keep:
                shutil.rmtree(path, ignore_errors=True)

    def searched(self, method, params: Params, model, score) -> tuple[dict, object]:
        """``prune.allocation: search`` at this level: the genetic search's per-matrix levels (allocation.json's
        record) within the level's budget, fitness computed in this process on the held score; and the score
        with the masks that allocation makes (the masking methods), as the search stage does."""
        cfg = params.search
        shapes, space, values = level_space_of(method, params, model, self.arch)
        held = HeldArtifacts(self.project, params.prune, score)
        result, genome, choice = search_genome(space, SerialEvaluator(worker_spec(params, self.project, values), held),
                                               cfg)
        summary = allocation_summary(space, genome, values, shapes, method.plan(params.prune).levels, "search", cfg,
                                     choice, result)
        kept = kept_for(self.project, params, "search")
        kept.mkdir(parents=True, exist_ok=True)
        write_json(kept / "allocation.json", summary)  # the search stage's record, for it to reuse
        self.kept.append(kept)
        made = method.allocate(params, model, self.arch, held, summary["values"])
        return summary, (replace(score, masks=made.masks) if made.masks is not None else score)

    def make(self, method_name: str, level: float) -> Point:
        """Point (``method_name``, ``level``) made and measured; not yet judged against a budget."""
        started = time.perf_counter()
        params = at_level(self.params, method_name, level)
        method = params.prune.method_object
        plan = method.plan(params.prune)
        score = self.score(params)  # before the point's copy: a score that walks a model loads its own
        model = self.fresh()
        allocation = None
        if params.prune.allocation == "search":
            allocation, score = self.searched(method, params, model, score)
        elif plan.always_allocates:
            allocation = uniform_allocation(method, params, model, self.arch)
        result = method.prune(params, model, self.arch, HeldArtifacts(self.project, params.prune, score, allocation))
        model = result.model
        del result
        with tempfile.TemporaryDirectory(prefix="taskprune-frontier-") as tmp:
            saved = Path(tmp) / "pruned"
            FORMATS[plan.export].save(model, self.tokenizer, saved)
            size = size_metrics(model, self.arch, saved)
            if params.recover.enabled:
                masks = score.masks.masks if score.masks is not None else None
                model = self.recover(params, model, masks, f"{method_name}-{level:g}")
                if self.params.target.decode_rounds:  # what is timed: the recovered model (same shapes, same bytes)
                    saved = Path(tmp) / "recovered"
                    FORMATS[plan.export].save(model, self.tokenizer, saved)
            measured = self.evaluate(model)
            del model  # decode timing loads the point from disk, one model in memory at a time
            speedup = self.speedup(saved)
        dense = self.dense_size
        bound = accuracy_bound(measured["items"], self.dense_items, self.params.target.confidence)
        point = Point(method=method_name, level=level, validation_accuracy=round(measured["task_accuracy"], 6),
                      accuracy_bound=round(bound, 6),
                      reduction=round(1 - size["decoder_linear_nonzero"] / dense["decoder_linear_nonzero"], 6),
                      bytes_on_disk=size["bytes_on_disk"],
                      bytes_fraction=round(size["bytes_on_disk"] / dense["bytes_on_disk"], 6),
                      speedup=speedup, recovered=params.recover.enabled, allocation=params.prune.allocation)
        point.seconds = round(time.perf_counter() - started, 2)
        return point

    def measure(self, method_name: str, level: float, params: Params | None = None) -> Point:
        """Point made, judged against the budget of ``params`` (default: this run's) and printed."""
        point = judge(self.make(method_name, level), params or self.params, self.dense_accuracy)
        speed = f", decode {point.speedup:.2f}x" if point.speedup is not None else ""
        searched = " (searched allocation)" if point.allocation == "search" else ""
        print(f"frontier: {method_name} at {level:g}{searched}: validation accuracy {point.validation_accuracy:.3f} "
              f"(dense {self.dense_accuracy:.3f}), {point.reduction:.1%} fewer decoder-linear parameters, "
              f"{point.bytes_fraction:.2f}x bytes{speed}: "
              + ("within the budget" if point.within else "outside: " + "; ".join(point.reasons)), flush=True)
        return point
