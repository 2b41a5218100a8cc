"""search: per-matrix compression levels by a genetic search (params: search; prune.allocation: search).

Sieve: the rank of every matrix (``allocation: uniform`` gives every matrix the rank of
``search.target_reduction`` without searching). Sparsity methods with ``allocation: search``:
the sparsity of every matrix, and the masks made with it (``artifacts/search/masks.*``,
which then supersede the score stage's uniform masks). Any other setting writes only a
stage.json saying the search is off.

Generation checkpoints live in ``.taskprune/checkpoints/search-<fingerprint of the inputs>``
until the stage ends; a killed search resumes from the last generation.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable

import numpy as np

from taskprune.config import Params
from taskprune.errors import TaskPruneError
from taskprune.models.loading import load_local
from taskprune.paths import Project, StageTimer, atomic_dir, write_json
from taskprune.recovery import run_fingerprint
from taskprune.search import LevelSpace, SearchResult, lowrank_space, run_search, sparsity_space
from taskprune.search.fitness import WorkerSpec, make_evaluator


def enabled(params: Params) -> bool:
    return params.prune.method == "sieve" or params.prune.allocation == "search"


def level_space(params: Params, shapes: dict) -> tuple[LevelSpace, dict, str]:
    if params.prune.method == "sieve":
        return (*lowrank_space(shapes, params.prune.sieve.levels, params.search.target_reduction), "lowrank")
    return (*sparsity_space(shapes, params.prune.sparsity, params.search.sparsity_levels,
                            params.search.sparsity_step), "sparsity")


def worker_spec(params: Params, project: Project, values: dict, kind: str) -> WorkerSpec:
    cfg = params.search
    return WorkerSpec(
        model_dir=str(project.dense_model), examples_file=str(project.data / "task_calib.jsonl"),
        examples=cfg.examples, kind=kind, level_values=values, fitness=cfg.fitness, batch_size=cfg.batch_size,
        max_len=params.recover.max_len,
        factors_file=str(project.updates / "factors.safetensors") if kind == "lowrank" else None,
        scores=(params.prune.model_dump(), str(project.stats)) if kind == "sparsity" else None)


def pick_point(result: SearchResult, space: LevelSpace, params: Params, evaluator) -> tuple[np.ndarray, dict]:
    """The operating point: budget -> the fittest genome; pareto -> by max_accuracy_drop, else the fittest
    front point within the budget. Returns (genome, facts about the choice)."""
    cfg = params.search
    if cfg.objective == "budget":
        return result.best, {"rule": "best fitness within the budget"}
    if cfg.max_accuracy_drop is None:
        within = [p for p in result.front if p["cost"] <= space.budget] or result.front[:1]
        point = max(within, key=lambda p: p["fitness"])
        return point["genome"], {"rule": "best fitness on the front within the budget"}
    dense = evaluator.accuracy([None])[0]
    accuracies = evaluator.accuracy([p["genome"] for p in result.front])
    for point, accuracy in zip(result.front, accuracies):
        point["calibration_accuracy"] = accuracy
    ok = [p for p in result.front if p["calibration_accuracy"] >= dense - cfg.max_accuracy_drop]
    point = ok[0] if ok else result.front[-1]  # front sorted by cost: the smallest that keeps accuracy
    return point["genome"], {"rule": f"smallest front point with calibration accuracy >= dense - "
                                     f"{cfg.max_accuracy_drop}", "dense_calibration_accuracy": dense,
                             "met": bool(ok)}


def run(params: Params, project: Project, evaluator_factory: Callable | None = None) -> None:
    """``evaluator_factory(spec, workers)`` decides where fitness runs; by default here or in local
    processes. With ``search.ray_address`` the `taskprune` command routes this stage through a Prefect
    flow on Prefect's Ray task runner (``flows/search.py``), which passes its own factory."""
    timer = StageTimer(project, "search")
    if not enabled(params):
        with atomic_dir(project.search) as out:
            write_json(out / "stage.json", {"enabled": False})
        timer.done(enabled=False)
        return
    cfg = params.search
    model, _, arch = load_local(project.dense_model, "cpu")
    shapes = {key: tuple(arch.weight(m).shape) for key, m in arch.named_linears(model).items()}
    space, values, kind = level_space(params, shapes)
    result, choice = None, {"rule": "uniform allocation (prune.allocation: uniform)"}
    genome = space.uniform
    if params.prune.allocation == "search":
        checkpoints = project.state / "checkpoints" / "search-{}".format(run_fingerprint(
            params.prune.model_dump_json().encode(), cfg.model_dump_json(exclude={"workers", "ray_address"}).encode(),
            (project.data / "task_calib.jsonl").read_bytes(), (project.updates / "stage.json").read_bytes(),
            (project.stats / "stage.json").read_bytes(), space.fingerprint().encode()))
        where = f"Ray at {cfg.ray_address}" if cfg.ray_address else f"{cfg.workers} process(es)"
        print(f"search: {kind} levels of {len(space.keys)} matrices, {cfg.objective} objective, population "
              f"{cfg.population}, {cfg.generations} generations, fitness {cfg.fitness} on {cfg.examples} "
              f"calibration rows ({where})")
        if cfg.ray_address and evaluator_factory is None:
            raise TaskPruneError("search.ray_address: the search runs on Ray through Prefect's Ray task runner; "
                                 "run it with the `taskprune` command (taskprune stage search / taskprune run)")
        evaluator = (evaluator_factory or make_evaluator)(worker_spec(params, project, values, kind), cfg.workers)
        try:
            result = run_search(space, evaluator, objective=cfg.objective, population=cfg.population,
                                generations=cfg.generations, seed=cfg.seed, checkpoint_dir=checkpoints)
            genome, choice = pick_point(result, space, params, evaluator)
        finally:
            evaluator.close()
    allocation = {key: values[key][int(level)] for key, level in zip(space.keys, genome)}
    cost = space.cost(np.asarray(genome))
    summary = {
        "enabled": True, "kind": kind, "allocation_rule": params.prune.allocation, "objective": cfg.objective,
        "dense_cost": space.dense_cost, "budget": space.budget, "cost": cost,
        "reduction": round(1 - cost / space.dense_cost, 6), "choice": choice,
        "levels": {key: int(level) for key, level in zip(space.keys, genome)}, "values": allocation,
        "matrix_reduction": {key: round(1 - int(space.costs[i, int(level)]) / (shapes[key][0] * shapes[key][1]), 6)
                             for i, (key, level) in enumerate(zip(space.keys, genome))},
        "fitness": cfg.fitness,
    }
    if result is not None:
        summary.update(history=result.history, best_fitness=result.best_fitness, uniform_fitness=result.uniform_fitness,
                       resumed_from=result.resumed_from,
                       front=[{"cost": p["cost"], "size_fraction": round(p["cost"] / space.dense_cost, 6),
                               "fitness": p["fitness"], **({"calibration_accuracy": p["calibration_accuracy"]}
                                                           if "calibration_accuracy" in p else {})}
                              for p in result.front])
    masks = search_masks(params, project, model, arch, allocation) if kind == "sparsity" else None
    with atomic_dir(project.search) as out:
        write_json(out / "allocation.json", summary)
        write_json(out / "stage.json", {"enabled": True, "kind": kind})
        if masks is not None:
            from taskprune.stages.score import write_masks

            write_masks(out, params.prune, masks)
    if result is not None:
        shutil.rmtree(checkpoints, ignore_errors=True)
        print(f"search: fitness uniform {result.uniform_fitness:.4f} -> best {result.best_fitness:.4f}; "
              f"{summary['reduction']:.1%} of the decoder-linear {'parameters' if kind == 'lowrank' else 'weights'} "
              f"removed ({choice['rule']})")
    timer.done(kind=kind, objective=cfg.objective, generations=cfg.generations, population=cfg.population)


def search_masks(params: Params, project: Project, model, arch, allocation: dict[str, float]):
    """Masks at the searched per-matrix sparsities (written next to allocation.json; they supersede artifacts/masks)."""
    from taskprune.pruning import compute_masks, load_stats

    return compute_masks(model, arch, params.prune, load_stats(project.stats, params.prune.method),
                         per_matrix=allocation)
