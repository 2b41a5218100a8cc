"""The search stage on a Ray cluster: a Prefect flow on Prefect's Ray task runner (prefect-ray).

``taskprune stage search`` (what dvc.yaml runs) comes here when the pipeline table says the stage is
orchestrated (``search.ray_address`` with ``prune.allocation: search``). The flow runs the one search
stage with an evaluator that submits each genome's fitness as a Prefect task, so every evaluation
shows in the Prefect UI.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from prefect_tasks.genomes import TaskEvaluator
from taskprune.config import Params
from taskprune.paths import Project
from taskprune.stages import run_stage


@flow(name="taskprune-search")
def search_on_ray(project_root: str, params: dict) -> None:
    run_stage("search", Params.model_validate(params), Project(Path(project_root)), orchestrated=True,
              evaluator_factory=TaskEvaluator)


def ray_runner(address: str):
    from prefect_ray import RayTaskRunner

    # "local" reaches ray.init as is: a new Ray here, never a cluster `ray start` left running on this machine
    return RayTaskRunner(address=address,
                         init_kwargs={"include_dashboard": False, "log_to_driver": False})


def search_through_prefect(params: Params, project: Project) -> None:
    flow_run = search_on_ray.with_options(task_runner=ray_runner(params.search.ray_address))
    flow_run(str(project.root), params.model_dump(mode="json"))
