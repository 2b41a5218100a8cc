"""The search's operating point and the record of the chosen allocation (allocation.json)."""

from __future__ import annotations

import numpy as np

from taskprune.search.ga import LevelSpace, SearchResult, run_search


def pick_point(result: SearchResult, space: LevelSpace, cfg, evaluator) -> tuple[np.ndarray, dict]:
    """The operating point (``cfg``: the search settings): budget -> the fittest genome; pareto -> by
    max_accuracy_drop, else the fittest front point within the budget. Returns (genome, facts about the choice)."""
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


def search_genome(space: LevelSpace, evaluator, cfg, checkpoint_dir=None) -> tuple[SearchResult, np.ndarray, dict]:
    """The genetic search over ``space`` (``cfg``: the search settings) and its operating point; closes the
    evaluator. Returns (the search's result, the chosen genome, facts about the choice)."""
    try:
        result = run_search(space, evaluator, objective=cfg.objective, population=cfg.population,
                            generations=cfg.generations, seed=cfg.seed, checkpoint_dir=checkpoint_dir)
        genome, choice = pick_point(result, space, cfg, evaluator)
    finally:
        evaluator.close()
    return result, genome, choice


def allocation_summary(space: LevelSpace, genome, values: dict, shapes: dict, kind: str, allocation_rule: str,
                       cfg, choice: dict, result: SearchResult | None) -> dict:
    """What allocation.json records: the level and value of every matrix, the size, and the search's history."""
    allocation = {key: values[key][int(level)] for key, level in zip(space.keys, genome)}
    cost = space.cost(np.asarray(genome))
    summary = {
        "enabled": True, "kind": kind, "allocation_rule": allocation_rule, "objective": cfg.objective,
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
    return summary


UNIFORM_RULE = {"rule": "uniform allocation (prune.allocation: uniform)"}


def level_space_of(method, params, model, arch) -> tuple[dict, LevelSpace, dict]:
    """The matrices' shapes, the method's level space over them and the value of every level."""
    shapes = {key: tuple(arch.weight(m).shape) for key, m in arch.named_linears(model).items()}
    space, values = method.level_space(params, shapes)
    return shapes, space, values


def uniform_allocation(method, params, model, arch) -> dict:
    """allocation.json for the uniform allocation (every matrix at the level the method's target gives)."""
    shapes, space, values = level_space_of(method, params, model, arch)
    return allocation_summary(space, space.uniform, values, shapes, method.plan(params.prune).levels,
                              params.prune.allocation, params.search, UNIFORM_RULE, None)
