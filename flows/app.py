"""The `taskprune` command: the library's commands plus `run` and `stage`, which need Prefect."""

from __future__ import annotations

import time
from enum import Enum
from typing import Annotated

import typer

from taskprune.cli import app, project_and_params
from taskprune.cli import main as library_main
from taskprune.paths import Project
from taskprune.pipeline import NAMES, stage as pipeline_stage
from taskprune.preflight import preflight
from taskprune.report import print_results
from taskprune.results import compression_of

StageName = Enum("StageName", {name: name for name in NAMES}, type=str)  # one list: the pipeline table

# Stages the pipeline table marks as orchestrated (Stage.orchestrated_when): the flow that runs each.
ORCHESTRATED = {"search": "flows.ray_search:search_through_prefect"}


@app.command()
def run(
    overrides: Annotated[list[str], typer.Option("-S", "--set", metavar="KEY=VALUE", help="Override a params.yaml key, e.g. -S prune.sparsity=0.6 (written to params.yaml, like dvc exp run -S)")] = [],  # noqa: B006
    service_check: Annotated[bool, typer.Option(help="Check first that MLflow, S3, Ray and Prefect servers answer")] = True,
) -> None:
    """Run the whole pipeline as a Prefect flow; finished, unchanged stages are skipped."""
    from flows.pipeline_flow import pipeline
    from taskprune.secrets import install_log_filter

    install_log_filter()  # Prefect's handlers exist now

    from prefect import tags

    from taskprune.data.task import task_label

    project = Project.find()
    params = preflight(project, list(overrides), services=service_check)  # bad input fails in seconds, first
    started = time.perf_counter()
    methods = params.target.methods if params.target.enabled else [params.prune.label]
    with tags("taskprune", f"task:{task_label(params)}", *(f"method:{m}" for m in methods)):
        result = pipeline(str(project.root), list(overrides), check_services=False)  # checked just now
    print_results(result["metrics"], compression_of(project))
    ran = [s for s, state in result["stages"].items() if state == "ran"]
    print(f"this invocation: {time.perf_counter() - started:.0f} s; stages run: {', '.join(ran) or 'none (all up to date)'}")


@app.command()
def stage(name: Annotated[StageName, typer.Argument(help="Stage to run")]) -> None:
    """Run one stage with the project's params.yaml (this is what dvc.yaml calls)."""
    from importlib import import_module

    from taskprune.stages import run_stage

    project, params = project_and_params()
    entry = pipeline_stage(name.value)
    if entry.orchestrated_when and entry.orchestrated_when(params):
        module, _, function = ORCHESTRATED[entry.name].partition(":")
        getattr(import_module(module), function)(params, project)
    else:
        run_stage(name.value, params, project)


# `run` first in the help, then `stage`, then the library's commands
app.registered_commands.sort(key=lambda command: {"run": 0, "stage": 1}.get(command.callback.__name__, 2))


def main() -> None:
    library_main(app)
