"""search: per-matrix compression levels by a genetic search (params: search; prune.allocation: search).

The method offers the space (``Plan.levels``: sparsities of the masking methods, ranks of LLM-Sieve)
and says what the chosen allocation makes (``Method.allocate``: masks at per-matrix sparsities,
which then supersede the score stage's). A method that always allocates (LLM-Sieve) gets the
uniform allocation without a search under ``prune.allocation: uniform``. Otherwise the stage writes
only a stage.json saying the search is off.

Generation checkpoints live in ``.taskprune/checkpoints/search-<fingerprint of the inputs>``
until the stage ends; a killed search resumes from the last generation. With ``search.ray_address``
the pipeline table marks this stage as orchestrated: `taskprune stage search` runs it as a Prefect
flow on Prefect's Ray task runner (flows/ray_search.py), which passes its own evaluator factory.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable

from taskprune.artifacts import Artifacts
from taskprune.config import Params
from taskprune.frontier import kept_for
from taskprune.masks import write_mask_files
from taskprune.methods import get_method
from taskprune.models.loading import load_local
from taskprune.paths import Project, StageTimer, atomic_dir, fingerprint, read_json, stage_off, write_json
from taskprune.search.choice import UNIFORM_RULE, allocation_summary, level_space_of, search_genome
from taskprune.search.fitness import make_evaluator, worker_spec


def run(params: Params, project: Project, evaluator_factory: Callable | None = None) -> None:
    """``evaluator_factory(spec, workers)`` decides where fitness runs; by default here or in local processes."""
    timer = StageTimer(project, "search")
    method = get_method(params.prune.method)
    plan = method.plan(params.prune)
    searching = params.prune.allocation == "search"
    if not (searching or plan.always_allocates):
        stage_off(project.search, timer)
        return
    cfg = params.search
    model, _, arch = load_local(project.dense_model, "cpu")
    shapes, space, values = level_space_of(method, params, model, arch)
    result, choice, genome, summary = None, UNIFORM_RULE, space.uniform, None
    found = kept_for(project, params, "search") if searching and params.target.enabled else None
    if found is not None and (found / "allocation.json").is_file():
        summary = read_json(found / "allocation.json")  # the frontier ran this very search
        print(f"search: the frontier searched this point with these settings; its allocation is reused "
              f"({summary['reduction']:.1%} of the decoder-linear size removed)")
    elif searching:
        checkpoints = project.state / "checkpoints" / "search-{}".format(fingerprint(
            params.prune.model_dump_json().encode(), cfg.model_dump_json(exclude={"workers", "ray_address"}).encode(),
            (project.data / "task_calib.jsonl").read_bytes(), (project.updates / "stage.json").read_bytes(),
            (project.stats / "stage.json").read_bytes(), space.fingerprint().encode()))
        where = f"Ray at {cfg.ray_address}" if cfg.ray_address else f"{cfg.workers} process(es)"
        print(f"search: {plan.levels} levels of {len(space.keys)} matrices, {cfg.objective} objective, population "
              f"{cfg.population}, {cfg.generations} generations, fitness {cfg.fitness} on {cfg.examples} "
              f"calibration rows ({where})")
        evaluator = (evaluator_factory or make_evaluator)(worker_spec(params, project, values), cfg.workers)
        result, genome, choice = search_genome(space, evaluator, cfg, checkpoints)
    if summary is None:
        summary = allocation_summary(space, genome, values, shapes, plan.levels, params.prune.allocation, cfg, choice,
                                     result)
    made = method.allocate(params, model, arch, Artifacts(project), summary["values"])
    with atomic_dir(project.search) as out:
        write_json(out / "allocation.json", summary)
        write_json(out / "stage.json", {"enabled": True, "kind": plan.levels})
        if made.masks is not None:
            write_mask_files(out, params.prune, made.masks)
    if result is not None:
        shutil.rmtree(checkpoints, ignore_errors=True)
        print(f"search: fitness uniform {result.uniform_fitness:.4f} -> best {result.best_fitness:.4f}; "
              f"{summary['reduction']:.1%} of the decoder-linear size removed ({choice['rule']})")
    if found is not None:
        shutil.rmtree(found, ignore_errors=True)
    timer.done(kind=plan.levels, objective=cfg.objective, generations=cfg.generations, population=cfg.population)
