"""The library's commands (register, init, report, show, models, methods); `flows.app` adds `run`
and `stage` (which may run a stage through Prefect, as the pipeline table says)."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from taskprune import env
from taskprune.errors import TaskPruneError
from taskprune.paths import Project
from taskprune.retries import show_retries
from taskprune.secrets import install_log_filter, redact

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="TaskPrune: make a language model smaller for one task.")


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        print(f"taskprune {version('taskprune')}")
        raise typer.Exit()


@app.callback()
def _options(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                   help="Print the version and exit")] = False) -> None:
    """TaskPrune: make a language model smaller for one task."""


def project_and_params(overrides: list[str] | None = None):
    from taskprune import config

    project = Project.find()
    return project, config.load(project.params_file, overrides)


def require_results(project: Project) -> None:
    if not project.metrics.exists():
        raise TaskPruneError(f"{project.metrics}: no results yet; run `taskprune run` first")


@app.command()
def register() -> None:
    """Register the last run's result in MLflow (what the register stage does).

    Finishes a run whose registration failed; a result already registered is not registered again."""
    from taskprune.stages import run_stage

    project, params = project_and_params()
    require_results(project)
    run_stage("register", params, project)


@app.command()
def init(
    directory: Annotated[str, typer.Argument(help="New project directory")],
    overrides: Annotated[list[str], typer.Option("-S", "--set", metavar="KEY=VALUE", help="Set a params.yaml key, e.g. -S task.name=sentiment")] = [],  # noqa: B006
) -> None:
    """Create a project: params.yaml and dvc.yaml from this checkout, git and DVC initialised."""
    from pathlib import Path

    from taskprune.scaffold import init_project

    root = init_project(Path(directory).resolve(), list(overrides))
    print(f"project created at {root}; cd there and run `taskprune run`")


@app.command()
def report(
    out: Annotated[str, typer.Option(help="Where to write the page")] = "report.html",
    log: Annotated[bool, typer.Option(help="Also log it to the registered run in MLflow")] = True,
) -> None:
    """Write the last run's HTML report: results table, per-layer sparsity or rank, search and loss curves."""
    from pathlib import Path

    from taskprune.paths import read_json
    from taskprune.report import html_report
    from taskprune.results import load_result

    project, params = project_and_params()
    require_results(project)
    target = Path(out) if Path(out).is_absolute() else project.root / out
    registration = read_json(project.registration) if project.registration.is_file() else None
    target.write_text(html_report(**load_result(params, project), registration=registration), encoding="utf-8")
    print(f"report written to {target}")
    if log and project.registration.is_file():
        from mlflow import MlflowClient

        from taskprune.tracking import tracking_uri

        run_id = read_json(project.registration)["run_id"]
        MlflowClient(tracking_uri=tracking_uri(params, project.state)).log_artifact(run_id, str(target))
        print(f"logged to MLflow run {run_id} as {target.name}")


@app.command()
def show() -> None:
    """Print the results table of the last run (metrics.json)."""
    from taskprune.paths import read_json
    from taskprune.report import print_results
    from taskprune.results import compression_of

    project = Project.find()
    require_results(project)
    print_results(read_json(project.metrics), compression_of(project))


@app.command()
def methods() -> None:
    """List the compression methods (the registry: taskprune/methods, plus plug-ins)."""
    from rich.console import Console
    from rich.table import Table

    from taskprune.methods.catalogue import describe

    rows = describe()
    table = Table(title="compression methods (prune.method)")
    for column in rows[0]:
        table.add_column(column)
    for row in rows:
        table.add_row(*row.values())
    Console(width=None if sys.stdout.isatty() else 160).print(table)


def registry_client_and_name(name: str | None):
    from taskprune.promotion import project_registry

    project, params = project_and_params()
    return (project, params, *project_registry(project, params, name))


@app.command()
def models(name: Annotated[Optional[str], typer.Option(help="Registered model (default: this project's)")] = None) -> None:
    """List registered versions with accuracy, size, method and aliases."""
    from rich.console import Console
    from rich.table import Table

    from taskprune.promotion import list_versions

    _project, _params, client, name = registry_client_and_name(name)
    table = Table(title=f"registered model {name}")
    for column in ("version", "accuracy", "non-zero params", "method", "recovered from", "aliases", "promotion"):
        table.add_column(column)
    for row in list_versions(client, name):
        size = "" if row["nonzero_params"] is None else f"{int(row['nonzero_params']):,}"
        accuracy = "" if row["accuracy"] is None else f"{float(row['accuracy']):.4f}"
        table.add_row(row["version"], accuracy, size, row["method"], row["parent"], row["aliases"], row["promotion"])
    Console(width=None if sys.stdout.isatty() else 160).print(table)  # piped: do not cut the columns


def _no_type_for_flags() -> None:
    """typer 0.29 on click 8.5 shows ``<bool>`` beside every flag (``--dry-run``, ``--help``), which takes no value,
    and ``<str>``/``<int>`` beside options: no type for flags, and the option's own name (``VERSION``) for values."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich
    if getattr(shown, "taskprune", False):
        return

    def display_type_rich(self, ctx):
        if self.is_flag:
            return None
        return self.metavar or (self.name or "").upper() or shown(self, ctx)

    display_type_rich.taskprune = True
    TyperOption.display_type_rich = display_type_rich


def main(application: typer.Typer = app, argv: Optional[list[str]] = None) -> None:
    """Entry point: user errors print one clear message and exit 2 (no traceback)."""
    try:
        env.apply(Project.find().state)
    except TaskPruneError:
        env.apply()
    install_log_filter()
    show_retries()
    _no_type_for_flags()
    try:
        application(args=argv)
    except TaskPruneError as exc:
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        sys.exit(2)
