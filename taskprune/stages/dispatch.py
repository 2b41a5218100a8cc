"""The stage dispatcher: the one place that imports a stage module (by the pipeline table's name)."""

from __future__ import annotations

from importlib import import_module

from taskprune.config import Params
from taskprune.errors import TaskPruneError
from taskprune.paths import Project
from taskprune.pipeline import after_frontier, stage
from taskprune.target import resolved


def run_stage(name: str, params: Params, project: Project, *, orchestrated: bool = False, **options) -> None:
    """Run stage ``name`` of the pipeline table. A stage the table marks as orchestrated for these params
    (the search on Ray) runs only from the orchestrator (``orchestrated=True``, flows/)."""
    entry = stage(name)
    if after_frontier(name):  # target mode: the method and level the frontier stage chose
        params = resolved(params, project)
    if entry.orchestrated_when and entry.orchestrated_when(params) and not orchestrated:
        raise TaskPruneError(f"stage {name}: with these settings it runs through Prefect (search.ray_address: "
                             "Prefect's Ray task runner); run it with the `taskprune` command "
                             "(taskprune stage search / taskprune run)")
    module, _, function = entry.function.partition(":")
    getattr(import_module(module), function)(params, project, **{**entry.options, **options})
