"""Fitness of a level genome: the task's answer log-likelihood (or KL to the dense model) on the
calibration split, and the evaluators that compute it serially or in local processes (the Ray
evaluator is a Prefect task, in ``prefect_tasks/genomes.py``).

A ``FitnessWorker`` holds the model once with every searched matrix able to run at any
level (the method's level setter, ``taskprune.search.levels``). Evaluating a genome only sets levels and
runs batched forward passes over the calibration examples; matrices whose level did not
change since the previous genome are not touched.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from taskprune.data.answers import collate, encode
from taskprune.data.schema import Example, read_jsonl


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker (this process, a pool process or a Ray worker) needs to rebuild itself."""

    model_dir: str
    examples_file: str
    examples: int                 # at most this many calibration rows
    project_root: str             # the method reads its inputs (statistics, factors) from the project
    prune: dict                   # prune.* settings: the method and its configuration
    level_values: dict            # key -> [level value per level] (a rank or None, or a sparsity)
    fitness: str = "loglik"       # loglik | kl
    batch_size: int = 16
    max_len: int = 128
    threads: int | None = None


def worker_spec(params, project, values: dict) -> WorkerSpec:
    """The fitness workers' spec for a project's search: the dense model, the calibration rows, the method."""
    cfg = params.search
    return WorkerSpec(model_dir=str(project.dense_model), examples_file=str(project.data / "task_calib.jsonl"),
                      examples=cfg.examples, project_root=str(project.root), prune=params.prune.model_dump(),
                      level_values=values, fitness=cfg.fitness, batch_size=cfg.batch_size,
                      max_len=params.recover.max_len)


class FitnessWorker:
    def __init__(self, spec: WorkerSpec, inputs=None):
        """``inputs``: the method's inputs when they are held in memory (target mode's frontier); by default
        they are read from the project at ``spec.project_root``."""
        from taskprune.artifacts import Artifacts
        from taskprune.config import PruneConfig
        from taskprune.methods import get_method
        from taskprune.models.loading import load_local
        from taskprune.paths import Project

        if spec.threads:
            torch.set_num_threads(spec.threads)
        self.spec = spec
        model, tokenizer, arch = load_local(Path(spec.model_dir), "cpu", owned=True)  # levels set in place
        self.model, self.arch = model, arch
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.examples = read_jsonl(Path(spec.examples_file))[:spec.examples]
        self.tokenizer = tokenizer
        self.keys = list(spec.level_values)
        self.current: list[int | None] = [-1] * len(self.keys)  # -1: not set yet
        cfg = PruneConfig.model_validate(spec.prune)
        self.levels = get_method(cfg.method).level_setter(model, arch, self.keys, cfg,
                                                          inputs or Artifacts(Project(Path(spec.project_root))))
        self.batches = self._batches(self.examples)
        self.dense_logprobs = self._answer_logprobs() if spec.fitness == "kl" else None

    def set_levels(self, genome) -> None:
        """Put every matrix at its level in ``genome``; ``None`` = the dense model."""
        for i, key in enumerate(self.keys):
            level = None if genome is None else int(genome[i])
            if self.current[i] == level:
                continue
            self.levels.set(key, None if level is None else self.spec.level_values[key][level])
            self.current[i] = level

    # -- scoring ------------------------------------------------------------------------------
    def _batches(self, examples: list[Example]) -> list[dict]:
        rows = encode(self.tokenizer, examples, self.spec.max_len)
        size = self.spec.batch_size
        return [collate(rows[i:i + size], self.pad_id) for i in range(0, len(rows), size)]

    @torch.no_grad()
    def _answer_logprobs(self, batches: list[dict] | None = None) -> list[torch.Tensor]:
        """Per batch: log-probabilities over the vocabulary at the answer positions."""
        out = []
        for batch in batches or self.batches:
            logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                use_cache=False).logits[:, :-1]
            answer = batch["labels"][:, 1:] != -100
            out.append(F.log_softmax(logits[answer].float(), dim=-1))
        return out

    @torch.no_grad()
    def _row_logliks(self, batches: list[dict]) -> torch.Tensor:
        """Sum of the answer tokens' log-probabilities, per row."""
        totals = []
        for batch in batches:
            logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                use_cache=False).logits[:, :-1].float()
            labels = batch["labels"][:, 1:]
            logp = F.log_softmax(logits, dim=-1).gather(2, labels.clamp_min(0)[..., None])[..., 0]
            totals.append((logp * (labels != -100)).sum(dim=1))
        return torch.cat(totals)

    def fitness(self, genome) -> float:
        """Higher is better: mean answer log-likelihood, or minus the mean KL(dense || model) per answer token."""
        self.set_levels(genome)
        if self.spec.fitness == "loglik":
            return float(self._row_logliks(self.batches).mean())
        kl, count = 0.0, 0
        for dense, current in zip(self.dense_logprobs, self._answer_logprobs()):
            kl += float(F.kl_div(current, dense, log_target=True, reduction="sum"))
            count += dense.shape[0]
        return -kl / max(count, 1)

    def accuracy(self, genome) -> float:
        """Multiple-choice accuracy on the calibration rows (every choice scored, as the evaluation does)."""
        self.set_levels(genome)
        rows = [Example(id=f"{ex.id}/{c}", query=ex.query, choices=ex.choices, gold=c)
                for ex in self.examples for c in range(len(ex.choices))]
        lls = self._row_logliks(self._batches(rows)).tolist()
        correct, at = 0, 0
        for ex in self.examples:
            scores = lls[at:at + len(ex.choices)]
            correct += int(int(np.argmax(scores)) == ex.gold)
            at += len(ex.choices)
        return correct / max(len(self.examples), 1)


# -- evaluators: genomes -> fitness, serially or in processes -------------------------------
class Evaluator:
    """Calls ``FitnessWorker`` methods on many genomes; subclasses decide where the workers live."""

    def _map(self, method: str, genomes, progress=None) -> list[float]:
        raise NotImplementedError

    def __call__(self, genomes, progress=None) -> np.ndarray:
        return np.array(self._map("fitness", genomes, progress))

    def accuracy(self, genomes) -> list[float]:
        return self._map("accuracy", genomes)

    def close(self) -> None:
        pass


class SerialEvaluator(Evaluator):
    def __init__(self, spec: WorkerSpec, inputs=None):
        self.worker = FitnessWorker(spec, inputs)

    def _map(self, method: str, genomes, progress=None) -> list[float]:
        out = []
        for genome in genomes:
            out.append(getattr(self.worker, method)(genome))
            if progress is not None:
                progress.update(1)
        return out


_WORKER: FitnessWorker | None = None


def _init_process(spec: WorkerSpec) -> None:
    global _WORKER
    _WORKER = FitnessWorker(spec)


def _process_call(method: str, genome) -> float:
    return getattr(_WORKER, method)(genome)


class ProcessEvaluator(Evaluator):
    """``workers`` local processes, each holding the model once; torch threads split between them."""

    def __init__(self, spec: WorkerSpec, workers: int):
        import multiprocessing

        threads = max(1, (os.cpu_count() or 1) // workers)
        spec = WorkerSpec(**{**spec.__dict__, "threads": threads})
        self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_init_process, initargs=(spec,))

    def _map(self, method: str, genomes, progress=None) -> list[float]:
        futures = [self.pool.submit(_process_call, method, g) for g in genomes]
        out = []
        for future in futures:
            out.append(future.result())
            if progress is not None:
                progress.update(1)
        return out

    def close(self) -> None:
        self.pool.shutdown()


def make_evaluator(spec: WorkerSpec, workers: int = 1) -> Evaluator:
    """Fitness here: in this process, or in ``workers`` local processes. (On a Ray cluster the
    search runs as a Prefect flow on Prefect's Ray task runner: ``prefect_tasks/genomes.py``.)"""
    if workers > 1:
        return ProcessEvaluator(spec, workers)
    return SerialEvaluator(spec)
