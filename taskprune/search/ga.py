"""The genetic search over per-matrix compression levels (pymoo), under a parameter budget.

A genome holds one level per matrix; ``LevelSpace.costs[i, level]`` is what matrix i
costs (parameters) at that level, non-increasing along the levels. The same search
drives LLM-Sieve ranks (level = share of the dense parameters kept) and per-matrix
sparsities for the unstructured scorers (EvoPress-style; level = a sparsity).

Two objectives:
- ``budget``: pymoo's GA maximises fitness with every genome at or under the budget; the
  budget repair and the level-swap mutation keep it there (and fill it up to the last
  level step that fits).
- ``pareto``: pymoo's NSGA-II over (fitness, cost); the front is returned and the caller
  picks the operating point.

The loop is pymoo's ask/tell: the fitness of a generation is computed by the caller's
``evaluate(genomes) -> fitnesses`` (serial, process pool or Ray), and after every
generation the algorithm (its population and random generator included) is pickled to
``checkpoint_dir``, so a killed search resumes at the next generation with the same result
as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cloudpickle
import numpy as np
from pymoo.core.mutation import Mutation
from pymoo.core.problem import Problem
from pymoo.core.repair import Repair
from tqdm.auto import tqdm

CHECKPOINT = "generation.pkl"


@dataclass
class LevelSpace:
    keys: list[str]              # matrix keys "<layer>.<linear>"
    costs: np.ndarray            # (matrices, levels) parameters per level, non-increasing
    budget: int                  # total cost allowed (budget objective)
    uniform: np.ndarray          # the uniform allocation's genome (baseline, first individual)
    dense_cost: int = 0          # the uncompressed total (size fractions are relative to it)

    @property
    def levels(self) -> int:
        return self.costs.shape[1]

    def cost(self, genome: np.ndarray) -> int:
        return int(self.costs[np.arange(len(genome)), genome].sum())

    def fingerprint(self) -> str:
        digest = hashlib.sha256(self.costs.tobytes())
        digest.update(f"{self.budget}|{self.keys}".encode())
        return digest.hexdigest()[:12]


def repair(space: LevelSpace, genome: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Bring ``genome`` within the budget (compress random matrices further), then spend what is
    left (relax random matrices while the total stays within budget): exact to one level step."""
    genome = np.clip(np.asarray(genome, dtype=np.int64), 0, space.levels - 1).copy()
    rows = np.arange(len(genome))
    total = space.cost(genome)
    while total > space.budget:
        movable = np.flatnonzero(genome < space.levels - 1)
        if not len(movable):
            raise ValueError(f"budget {space.budget:,} is below the smallest allocation {space.costs[:, -1].sum():,}")
        i = rng.choice(movable)
        total += space.costs[i, genome[i] + 1] - space.costs[i, genome[i]]
        genome[i] += 1
    for i in rng.permutation(rows):
        while genome[i] > 0 and total + space.costs[i, genome[i] - 1] - space.costs[i, genome[i]] <= space.budget:
            total += space.costs[i, genome[i] - 1] - space.costs[i, genome[i]]
            genome[i] -= 1
    return genome


def level_swap(space: LevelSpace, genome: np.ndarray, rng: np.random.Generator, swaps: int = 1) -> np.ndarray:
    """EvoPress's mutation: one matrix one level denser, another one level sparser, ``swaps`` times."""
    genome = genome.copy()
    for _ in range(swaps):
        up, down = np.flatnonzero(genome > 0), np.flatnonzero(genome < space.levels - 1)
        if not len(up) or not len(down):
            break
        genome[rng.choice(up)] -= 1
        genome[rng.choice(down)] += 1
    return genome


@dataclass
class SearchResult:
    best: np.ndarray                                  # budget: the fittest genome; pareto: see ``front``
    best_fitness: float
    history: list[dict] = field(default_factory=list)  # per generation: best, mean, evaluations
    front: list[dict] = field(default_factory=list)    # pareto: {"genome", "fitness", "cost"} by cost
    uniform_fitness: float | None = None
    resumed_from: int = 0


class LevelsProblem(Problem):
    """Integer levels per matrix; the fitness comes from the caller (ask/tell), not from ``_evaluate``."""

    def __init__(self, space: LevelSpace, objective: str):
        super().__init__(n_var=len(space.keys), n_obj=1 if objective == "budget" else 2, xl=0,
                         xu=space.levels - 1, vtype=int)


class BudgetRepair(Repair):
    """budget: ``repair`` every genome (own seeded generator, pickled with the algorithm); pareto: clip."""

    def __init__(self, space: LevelSpace, objective: str, seed: int):
        super().__init__()
        self.space, self.objective, self.rng = space, objective, np.random.default_rng(seed + 1)

    def _do(self, problem, X, **kwargs):
        X = np.rint(X).astype(np.int64)
        if self.objective == "pareto":
            return np.clip(X, 0, self.space.levels - 1)
        return np.stack([repair(self.space, x, self.rng) for x in X])


class LevelMutation(Mutation):
    """budget: 1-3 level swaps (cost-neutral up to repair); pareto: also one single-level step."""

    def __init__(self, space: LevelSpace, objective: str):
        super().__init__()
        self.space, self.objective = space, objective

    def _do(self, problem, X, *args, random_state=None, **kwargs):
        out = []
        for x in np.rint(X).astype(np.int64):
            x = level_swap(self.space, x, random_state, swaps=int(random_state.integers(1, 4)))
            if self.objective == "pareto":
                i = random_state.integers(len(x))
                x[i] = np.clip(x[i] + random_state.choice([-1, 1]), 0, self.space.levels - 1)
            out.append(x)
        return np.stack(out)


def initial_population(space: LevelSpace, size: int, objective: str, seed: int) -> np.ndarray:
    """The uniform allocation and mutated copies of it (pareto: uniform allocations of every level too)."""
    rng = np.random.default_rng(seed)
    rows = [space.uniform.copy()]
    if objective == "pareto":
        rows += [np.full(len(space.keys), level) for level in range(space.levels) if level != space.uniform[0]]
    while len(rows) < size:
        x = level_swap(space, space.uniform, rng, swaps=int(rng.integers(1, 2 + len(space.keys) // 8)))
        rows.append(repair(space, x, rng) if objective == "budget" else x)
    return np.stack(rows[:size])


def make_algorithm(space: LevelSpace, objective: str, population: int, seed: int):
    from pymoo.algorithms.moo.nsga2 import NSGA2
    from pymoo.algorithms.soo.nonconvex.ga import GA
    from pymoo.operators.crossover.ux import UX

    cls = GA if objective == "budget" else NSGA2
    algorithm = cls(pop_size=population, sampling=initial_population(space, population, objective, seed),
                    crossover=UX(), mutation=LevelMutation(space, objective),
                    repair=BudgetRepair(space, objective, seed),
                    eliminate_duplicates=True)
    return LevelsProblem(space, objective), algorithm


def _objectives(space: LevelSpace, objective: str, genomes: np.ndarray, fitness: np.ndarray) -> np.ndarray:
    if objective == "budget":
        return -fitness[:, None]
    costs = np.array([space.cost(g) for g in genomes]) / space.dense_cost
    return np.stack([-fitness, costs], axis=1)


def _save(checkpoint_dir: Path, state: dict) -> None:
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    tmp = checkpoint_dir / (CHECKPOINT + ".tmp")
    with tmp.open("wb") as fh:
        cloudpickle.dump(state, fh)  # pymoo's operators hold closures plain pickle refuses
    tmp.replace(checkpoint_dir / CHECKPOINT)  # a kill mid-write leaves the previous generation intact


def _load(checkpoint_dir: Path) -> dict | None:
    path = checkpoint_dir / CHECKPOINT
    if not path.is_file():
        return None
    with path.open("rb") as fh:
        return pickle.load(fh)  # written by this function's twin above, in the project's own state dir


def run_search(space: LevelSpace, evaluate: Callable[[np.ndarray], np.ndarray], *, objective: str = "budget",
               population: int = 16, generations: int = 10, seed: int = 0, checkpoint_dir: Path | None = None,
               stop_after: int | None = None) -> SearchResult:
    """Run the GA; ``evaluate(genomes)`` returns one fitness (higher is better) per row.

    ``stop_after`` ends after that many generations in total, as a kill would (tests use it).
    """
    problem, algorithm = make_algorithm(space, objective, population, seed)
    state = _load(checkpoint_dir) if checkpoint_dir else None
    if state is not None:
        algorithm, history, uniform_fitness = state["algorithm"], state["history"], state["uniform_fitness"]
        print(f"search: resuming after generation {len(history)} of {generations}")
    else:
        algorithm.setup(problem, termination=("n_gen", generations), seed=seed, verbose=False)
        history, uniform_fitness = [], None
    resumed_from = len(history)
    end = generations if stop_after is None else min(generations, stop_after)
    while len(history) < end:
        pop = algorithm.ask()
        genomes = np.rint(pop.get("X")).astype(np.int64)
        bar = tqdm(total=len(genomes), desc=f"generation {len(history) + 1}/{generations}", unit="genome")
        fitness = np.asarray(evaluate(genomes, progress=bar), dtype=np.float64)
        if uniform_fitness is None:  # generation 1 holds the uniform allocation (the baseline)
            match = np.flatnonzero((genomes == space.uniform).all(axis=1))
            uniform_fitness = float(fitness[match[0]] if len(match) else evaluate(space.uniform[None])[0])
        pop.set("F", _objectives(space, objective, genomes, fitness))
        algorithm.tell(infills=pop)
        best = float(-algorithm.pop.get("F")[:, 0].min())
        evaluations = (history[-1]["evaluations"] if history else 0) + len(genomes)
        history.append({"generation": len(history) + 1, "best": best, "mean": float(fitness.mean()),
                        "evaluations": evaluations})
        bar.set_postfix(best=f"{best:.4f}")
        bar.close()
        if checkpoint_dir:
            _save(checkpoint_dir, {"algorithm": algorithm, "history": history, "uniform_fitness": uniform_fitness})
    return _result(space, objective, algorithm, history, uniform_fitness, resumed_from)


def _result(space, objective, algorithm, history, uniform_fitness, resumed_from) -> SearchResult:
    pop = algorithm.pop
    genomes = np.rint(pop.get("X")).astype(np.int64)
    fitness = -pop.get("F")[:, 0]
    order = np.argsort(-fitness, kind="stable")
    result = SearchResult(genomes[order[0]], float(fitness[order[0]]), history, uniform_fitness=uniform_fitness,
                          resumed_from=resumed_from)
    if objective == "pareto":
        opt = algorithm.opt
        points = {tuple(np.rint(ind.X).astype(int)): ind for ind in opt}
        result.front = sorted(({"genome": np.array(g), "fitness": float(-ind.F[0]), "cost": space.cost(np.array(g))}
                               for g, ind in points.items()), key=lambda p: p["cost"])
    return result


def lowrank_space(shapes: dict[str, tuple[int, int]], levels: int, target_reduction: float
                  ) -> tuple[LevelSpace, dict[str, list]]:
    """LLM-Sieve levels: per matrix, ranks at equal steps of its dense parameter count (level 0 = dense).
    The budget is the uniform allocation's cost: every matrix at ``1 - target_reduction``."""
    from taskprune.lowrank import level_fractions, params_at, rank_for_fraction

    fractions = level_fractions(levels, target_reduction)
    uniform_level = max(1, round(target_reduction * levels))
    values = {key: [rank_for_fraction(o, i, f) for f in fractions] for key, (o, i) in shapes.items()}
    costs = np.array([[params_at(*shapes[key], r) for r in values[key]] for key in shapes], dtype=np.int64)
    uniform = np.full(len(shapes), uniform_level)
    space = LevelSpace(list(shapes), costs, 0, uniform, dense_cost=int(costs[:, 0].sum()))
    space.budget = space.cost(uniform)
    return space, values


def sparsity_space(shapes: dict[str, tuple[int, int]], sparsity: float, levels: int, step: float
                   ) -> tuple[LevelSpace, dict[str, list]]:
    """EvoPress levels: per matrix, sparsities ``sparsity + (level - center) * step`` (clipped to [0, 0.99]);
    the budget is the non-zeros of the uniform allocation."""
    center = levels // 2
    grid = [min(0.99, max(0.0, sparsity + (level - center) * step)) for level in range(levels)]
    values = {key: list(grid) for key in shapes}
    costs = np.array([[o * (i - int(i * s)) for s in grid] for o, i in shapes.values()], dtype=np.int64)
    uniform = np.full(len(shapes), center)
    space = LevelSpace(list(shapes), costs, 0, uniform, dense_cost=sum(o * i for o, i in shapes.values()))
    space.budget = space.cost(uniform)
    return space, values
