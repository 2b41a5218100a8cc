"""`taskprune stage NAME` and `taskprune show`; `flows.cli` adds `taskprune run` (Prefect lives there)."""

from __future__ import annotations

import sys
from enum import Enum
from typing import Annotated, Optional

import typer

from taskprune import env
from taskprune.errors import TaskPruneError
from taskprune.paths import Project
from taskprune.stages import STAGES

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="TaskPrune: make a language model smaller for one task.")


StageName = Enum("StageName", {name: name for name in STAGES}, type=str)  # one list: taskprune.stages


class Which(str, Enum):
    dense = "dense"
    pruned = "pruned"
    recovered = "recovered"


def project_and_params(overrides: list[str] | None = None):
    from taskprune import config

    project = Project.find()
    return project, config.load(project.params_file, overrides)


@app.command()
def stage(
    name: Annotated[StageName, typer.Argument(help="Stage to run")],
    model: Annotated[Which, typer.Option(help="For evaluate: which model")] = Which.pruned,
) -> None:
    """Run one stage with the project's params.yaml (this is what dvc.yaml calls)."""
    from taskprune.stages import run_stage

    project, params = project_and_params()
    options = {"which": model.value} if name is StageName.evaluate else {}
    run_stage(name.value, params, project, **options)


@app.command()
def show() -> None:
    """Print the results table of the last run (metrics.json)."""
    from taskprune.report import print_results
    from taskprune.paths import read_json

    project = Project.find()
    if not project.metrics.exists():
        raise TaskPruneError(f"{project.metrics}: no results yet; run `taskprune run` first")
    print_results(read_json(project.metrics))


def main(application: typer.Typer = app, argv: Optional[list[str]] = None) -> None:
    """Entry point: user errors print one clear message and exit 2 (no traceback)."""
    try:
        env.apply(Project.find().state)
    except TaskPruneError:
        env.apply()
    try:
        application(args=argv)
    except TaskPruneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
