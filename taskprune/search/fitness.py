"""Fitness of a level genome: the task's answer log-likelihood (or KL to the dense model) on the
calibration split, and the evaluators that compute it serially or in local processes (the Ray
evaluator is a Prefect task, in ``tasks/fitness.py``).

A ``FitnessWorker`` holds the model once with every searched matrix able to run at any
level (low-rank: a rank slice of precomputed factors; sparsity: the dense weight masked
by a precomputed per-row rank of its scores). Evaluating a genome only sets levels and
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

from taskprune.data.schema import Example, read_jsonl
from taskprune.lowrank import LevelLinear, linear_paths, load_factors, module_bias, replace_module
from taskprune.recovery import collate, encode


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker (this process, a pool process or a Ray worker) needs to rebuild itself."""

    model_dir: str
    examples_file: str
    examples: int                 # at most this many calibration rows
    kind: str                     # "lowrank" | "sparsity"
    level_values: dict            # key -> [rank or None per level] | [sparsity per level]
    factors_file: str | None = None          # lowrank: full-depth factors (safetensors)
    scores: tuple | None = None              # sparsity: (params dict of prune config, stats dir)
    fitness: str = "loglik"                  # loglik | kl
    batch_size: int = 16
    max_len: int = 128
    threads: int | None = None


def row_ranks(scores: torch.Tensor) -> torch.Tensor:
    """Position of every weight in its row's ascending score order (0 = pruned first)."""
    order = scores.argsort(dim=1, stable=True)
    ranks = torch.empty_like(order, dtype=torch.int32)
    ranks.scatter_(1, order, torch.arange(scores.shape[1], dtype=torch.int32).expand_as(order).contiguous())
    return ranks


class FitnessWorker:
    def __init__(self, spec: WorkerSpec):
        from taskprune.models.loading import load_local

        if spec.threads:
            torch.set_num_threads(spec.threads)
        self.spec = spec
        model, tokenizer, arch = load_local(Path(spec.model_dir), "cpu")
        self.model, self.arch = model, arch
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.examples = read_jsonl(Path(spec.examples_file))[:spec.examples]
        self.tokenizer = tokenizer
        self.keys = list(spec.level_values)
        self.current: list[int | None] = [-1] * len(self.keys)  # -1: not set yet
        self._setup_levels(spec)
        self.batches = self._batches(self.examples)
        self.dense_logprobs = self._answer_logprobs() if spec.fitness == "kl" else None

    # -- levels ------------------------------------------------------------------------------
    def _setup_levels(self, spec: WorkerSpec) -> None:
        linears = self.arch.named_linears(self.model)
        if spec.kind == "lowrank":
            factors = load_factors(Path(spec.factors_file))
            paths = linear_paths(self.model, self.arch)
            self.modules = {}
            for key in self.keys:
                module = linears[key]
                level = LevelLinear(self.arch.weight(module), module_bias(module), factors[key])
                replace_module(self.model, paths[key], level)
                self.modules[key] = level
        else:
            from taskprune.config import PruneConfig
            from taskprune.pruning import load_stats, make_scorer

            prune_cfg, stats_dir = spec.scores
            cfg = PruneConfig.model_validate(prune_cfg)
            score = make_scorer(cfg, load_stats(stats_dir, cfg.method))
            self.weights = {key: self.arch.weight(linears[key]) for key in self.keys}
            self.dense = {key: w.clone() for key, w in self.weights.items()}
            self.ranks = {key: row_ranks(score(key, self.dense[key])[0]) for key in self.keys}

    def set_levels(self, genome) -> None:
        """Put every matrix at its level in ``genome``; ``None`` = the dense model."""
        for i, key in enumerate(self.keys):
            level = None if genome is None else int(genome[i])
            if self.current[i] == level:
                continue
            value = None if level is None else self.spec.level_values[key][level]
            if self.spec.kind == "lowrank":
                self.modules[key].rank = value
            else:
                dense = self.dense[key]
                kept = None if value is None else self.ranks[key] >= int(dense.shape[1] * value)
                self.weights[key].copy_(dense if kept is None else dense * kept)
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
    def __init__(self, spec: WorkerSpec):
        self.worker = FitnessWorker(spec)

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
    search runs as a Prefect flow on Prefect's Ray task runner: ``tasks/fitness.py``.)"""
    if workers > 1:
        return ProcessEvaluator(spec, workers)
    return SerialEvaluator(spec)
