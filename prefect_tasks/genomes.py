"""Fitness evaluations as Prefect tasks, for the search on Prefect's Ray task runner (flows/ray_search.py).

Each Ray worker process builds a ``FitnessWorker`` (the model with every searched matrix at any
level) the first time it sees a spec and keeps it for the rest of the search, so a genome costs
only its forward passes, as in the local evaluators.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace

from prefect import task
from prefect.cache_policies import NONE
from prefect.futures import as_completed

from taskprune.search.fitness import Evaluator, FitnessWorker, WorkerSpec

_WORKERS: dict[str, FitnessWorker] = {}  # per Ray worker process: spec -> worker


@task(name="fitness", task_run_name="{method}", cache_policy=NONE, persist_result=False)
def evaluate_genome(spec: WorkerSpec, method: str, genome) -> float:
    key = json.dumps(asdict(spec), sort_keys=True, default=str)
    if key not in _WORKERS:
        _WORKERS.clear()  # one search at a time per process: drop a previous search's model
        _WORKERS[key] = FitnessWorker(spec)
    return getattr(_WORKERS[key], method)(genome)


class TaskEvaluator(Evaluator):
    """Submits one Prefect task per genome to the task runner of the flow it is used in (Ray in
    flows/ray_search.py); each task takes one CPU of the cluster and one torch thread."""

    def __init__(self, spec: WorkerSpec, workers: int = 1):
        self.spec = replace(spec, threads=1)

    def _map(self, method: str, genomes, progress=None) -> list[float]:
        futures = [evaluate_genome.submit(self.spec, method, None if g is None else [int(v) for v in g])
                   for g in genomes]
        for _ in as_completed(futures):
            if progress is not None:
                progress.update(1)
        return [future.result() for future in futures]
