"""frontier: target mode (params: target). For each allowed method, the largest compression level whose validation
accuracy stays within the budget, found by a grid walked upwards and refined by bisection (taskprune/target.py),
each point made and measured in memory (taskprune/frontier.py); the best point across methods is the choice the
later stages run at. Target mode off: a stage.json saying so.
"""

from __future__ import annotations

from taskprune.config import Params
from taskprune.data.schema import read_jsonl
from taskprune.frontier import Frontier
from taskprune.methods import get_method
from taskprune.paths import Project, StageTimer, atomic_dir, stage_off, write_json
from taskprune.target import at_level, choose, search_levels


def run(params: Params, project: Project) -> None:
    timer = StageTimer(project, "frontier")
    cfg = params.target
    if not cfg.enabled:
        stage_off(project.frontier, timer)
        return
    frontier = Frontier(params, project)
    floor = frontier.dense_accuracy * (1 - cfg.max_accuracy_drop)
    print(f"frontier: dense validation accuracy {frontier.dense_accuracy:.3f} on "
          f"{len(read_jsonl(frontier.validation))} validation examples; budget: at least {floor:.3f} "
          f"({cfg.max_accuracy_drop:.0%} drop); methods {', '.join(cfg.methods)}; levels "
          f"{', '.join(f'{v:g}' for v in cfg.levels)} (stop after {cfg.patience} outside in a row), {cfg.refine} "
          "bisection step(s)", flush=True)
    points = []
    for name in cfg.methods:
        frontier.scores = {}
        points += search_levels(lambda level, name=name: frontier.measure(name, level), cfg.levels, cfg.refine,
                                cfg.patience)
    chosen, inside = choose(points, cfg.objective)
    frontier.keep_only(at_level(params, chosen.method, chosen.level))
    best = {"method": chosen.method, "level": chosen.level, "within_budget": inside,
            "level_key": get_method(chosen.method).level_key, "validation_accuracy": chosen.validation_accuracy,
            "accuracy_bound": chosen.accuracy_bound, "reduction": chosen.reduction,
            "bytes_fraction": chosen.bytes_fraction, "speedup": chosen.speedup}
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
              f"({'; '.join(chosen.reasons)}); it is built and evaluated but not registered as a candidate for "
              "promotion")
