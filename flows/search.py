"""The search stage on a Ray cluster: a Prefect flow on Prefect's Ray task runner (prefect-ray).

``taskprune stage search`` (what dvc.yaml runs) comes here when ``search.ray_address`` is set
(see ``taskprune.stages.ROUTES``); otherwise the stage runs as it is, fitness here or in local
processes. The flow runs the one search stage function with an evaluator that submits each
genome's fitness as a Prefect task, so every evaluation shows in the Prefect UI.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from taskprune.config import Params
from taskprune.paths import Project
from prefect_tasks.genomes import TaskEvaluator


@flow(name="taskprune-search")
def search_on_ray(project_root: str, params: dict) -> None:
    from taskprune.stages import search

    search.run(Params.model_validate(params), Project(Path(project_root)), evaluator_factory=TaskEvaluator)


def ray_runner(address: str):
    from prefect_ray import RayTaskRunner

    return RayTaskRunner(address=None if address == "local" else address,
                         init_kwargs={"include_dashboard": False, "log_to_driver": False})


def route(params: Params, project: Project, run, **options) -> None:
    if not params.search.ray_address or params.prune.allocation != "search":
        run(params, project, **options)
        return
    flow_run = search_on_ray.with_options(task_runner=ray_runner(params.search.ray_address))
    flow_run(str(project.root), params.model_dump(mode="json"))
