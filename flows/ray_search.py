"""The search stage on a Ray cluster: a Prefect flow on Prefect's Ray task runner (prefect-ray).

``taskprune stage search`` (what dvc.yaml runs) comes here when the pipeline table says the stage is
orchestrated (``search.ray_address`` with ``prune.allocation: search``). The flow runs the one search
stage with an evaluator that submits each genome's fitness as a Prefect task, so every evaluation
shows in the Prefect UI.
"""

from __future__ import annotations

import sys
import time
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


RAY_INIT = {"include_dashboard": False, "log_to_driver": False}
CONNECT_ATTEMPTS = 3
CONNECT_PAUSE = 5.0  # seconds before the next attempt
# Ray's client proxy (ray://) starts a server process for each client it accepts; on a loaded head node that start
# can time out, and the proxy then refuses this one connection. A fresh connection usually succeeds.
PROXY_REFUSED = "Starting Ray client server failed"


def connect(address: str) -> None:
    """This process connected to the Ray cluster at ``address`` (ray://), the proxy's refusals above tried again
    (``CONNECT_ATTEMPTS`` in all, each said on stderr); any other failure is raised at once."""
    import ray

    for attempt in range(1, CONNECT_ATTEMPTS + 1):
        try:
            ray.init(address, **RAY_INIT)
            return
        except ConnectionError as error:  # Ray raises ConnectionAbortedError, carrying the head's message
            if PROXY_REFUSED not in str(error) or attempt == CONNECT_ATTEMPTS:
                raise
            print(f"retrying: the Ray cluster at {address} could not start a client server for this connection "
                  f"(attempt {attempt} of {CONNECT_ATTEMPTS}); again in {CONNECT_PAUSE:g} s", file=sys.stderr,
                  flush=True)
            time.sleep(CONNECT_PAUSE)


def ray_runner(address: str):
    from prefect_ray import RayTaskRunner

    # "local" reaches ray.init as is: a new Ray here, never a cluster `ray start` left running on this machine
    return RayTaskRunner(address=address, init_kwargs=RAY_INIT)


def search_through_prefect(params: Params, project: Project) -> None:
    """The search flow on Prefect's Ray task runner. A cluster (ray://) is connected here first, with retries;
    the runner then finds Ray connected and uses that connection, which this function closes."""
    import ray

    address = params.search.ray_address
    cluster = address.startswith("ray://")
    if cluster:
        connect(address)
    try:
        flow_run = search_on_ray.with_options(task_runner=ray_runner(address))
        flow_run(str(project.root), params.model_dump(mode="json"))
    finally:
        if cluster:
            ray.shutdown()
