"""The `taskprune` command: the library's commands plus `run`, which needs Prefect."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from taskprune.cli import app
from taskprune.cli import main as library_main
from taskprune.paths import Project
from taskprune.report import print_results
from taskprune.stages import ROUTES, preflight

ROUTES["search"] = "flows.search:route"  # search.ray_address: fitness on Prefect's Ray task runner


@app.command()
def run(
    overrides: Annotated[list[str], typer.Option("-S", "--set", help="Override a params.yaml key, e.g. -S prune.sparsity=0.6 (written to params.yaml, like dvc exp run -S)")] = [],  # noqa: B006
) -> None:
    """Run the whole pipeline as a Prefect flow; finished, unchanged stages are skipped."""
    from flows.pipeline import pipeline
    from taskprune.secrets import install_log_filter

    install_log_filter()  # Prefect's handlers exist now

    project = Project.find()
    preflight(project, list(overrides))  # fail on bad input in seconds, before Prefect starts
    started = time.perf_counter()
    result = pipeline(str(project.root), list(overrides))
    print_results(result["metrics"])
    ran = [s for s, state in result["stages"].items() if state == "ran"]
    print(f"this invocation: {time.perf_counter() - started:.0f} s; stages run: {', '.join(ran) or 'none (all up to date)'}")


def main() -> None:
    library_main(app)
