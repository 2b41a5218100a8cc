"""The `taskprune` command: the library's commands plus `run` and `stage`, which need Prefect."""

from __future__ import annotations

import sys
import time
from enum import Enum
from typing import Annotated, Optional

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

    from prefect_tasks.stages import StageFailed

    project = Project.find()
    params = preflight(project, list(overrides), services=service_check)  # bad input fails in seconds, first
    started = time.perf_counter()
    methods = params.target.methods if params.target.enabled else [params.prune.label]
    log = log_to_file(project)
    try:
        with tags("taskprune", f"task:{task_label(params)}", *(f"method:{m}" for m in methods)):
            result = pipeline(str(project.root), list(overrides), check_services=False)  # checked just now
    except StageFailed as failed:  # its message once, then what failed and how to go on; tracebacks in the log
        from taskprune.secrets import redact

        code = failed.code if failed.code > 0 else 128 - failed.code  # killed by signal N: 128 + N, as shells say
        print(f"error: {redact(failed.message)}", file=sys.stderr)
        print(f"stage {failed.stage} failed (exit {code}): fix the cause and run `taskprune run` again; it resumes at "
              f"{failed.stage}, the stages before it are kept. Full log: {log}", file=sys.stderr)
        raise typer.Exit(code) from None
    print_results(result["metrics"], compression_of(project))
    ran = [s for s, state in result["stages"].items() if state == "ran"]
    print(f"this invocation: {time.perf_counter() - started:.0f} s; stages run: {', '.join(ran) or 'none (all up to date)'}")


def log_to_file(project: Project):
    """Everything this run logs, tracebacks included, also goes to ``.taskprune/logs/run-<time>.log``; the
    console keeps the progress, one line per stage, and a failed stage's message, said once by ``run``."""
    import datetime as dt
    import logging

    from prefect.logging.handlers import PrefectConsoleHandler

    from taskprune.secrets import RedactingFilter

    logs = project.state / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    path = logs / f"run-{dt.datetime.now():%Y%m%d-%H%M%S}.log"
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    for name in ("", "taskprune.stage"):  # the root (Prefect's records propagate there) and the stages' output
        logging.getLogger(name).addHandler(handler)
    for console in logging.getLogger().handlers:
        if isinstance(console, PrefectConsoleHandler):
            console.addFilter(_not_a_run_failure)
    return path.relative_to(project.root)


def _not_a_run_failure(record) -> bool:
    """Prefect's reports of a failed task or flow run (with tracebacks) and of stopping its temporary server
    (after the run's last line) stay out of the console."""
    message = str(record.msg)
    if record.name.startswith(("prefect.flow_runs", "prefect.task_runs")):
        return record.levelno < 40 and not message.startswith("Finished in state Failed")
    return not (record.name == "prefect" and message.startswith("Stopping temporary server"))


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


@app.command()
def ui(
    mlflow_port: Annotated[int, typer.Option(help="Port of the MLflow UI")] = 5000,
    prefect_port: Annotated[int, typer.Option(help="Port of the Prefect UI")] = 4200,
    host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
) -> None:
    """Open the MLflow UI and the Prefect UI on this project's own stores (until Ctrl-C).

    Local stores only: with tracking.uri or PREFECT_API_URL set, the servers you run are the UIs."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from taskprune.secrets import redact
    from taskprune.tracking import tracking_uri

    project, params = project_and_params()
    uri = tracking_uri(params, project.state)
    bin_dir = Path(sys.executable).parent
    servers, lines = [], []
    if uri.startswith("sqlite:"):
        command = [str(bin_dir / "mlflow"), "ui", "--backend-store-uri", uri, "--host", host, "--port", str(mlflow_port)]
        servers.append(("MLflow", f"http://{host}:{mlflow_port}", "/health", command,
                        {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}))
        lines.append(f"MLflow:  http://{host}:{mlflow_port}{{view}}  "
                     f"experiment '{params.tracking.experiment}' in the Model training view (runs, a child run per "
                     "stage and per point tried; Models: the registry, aliases champion and challenger)")
    else:
        lines.append(f"MLflow:  {redact(uri)} (tracking.uri: that server's own UI)")
    if os.environ.get("PREFECT_API_URL"):
        lines.append(f"Prefect: {os.environ['PREFECT_API_URL'].removesuffix('/api')} (PREFECT_API_URL: that server)")
    else:
        home = os.environ.get("PREFECT_HOME") or str(project.state / "prefect")
        api = f"http://{host}:{prefect_port}/api"
        servers.append(("Prefect", api.removesuffix("/api"), "/api/health",
                        [str(bin_dir / "prefect"), "server", "start", "--host", host, "--port", str(prefect_port)],
                        {"PREFECT_HOME": home, "PREFECT_UI_API_URL": api, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}))
        lines.append(f"Prefect: http://{host}:{prefect_port}/runs  flow runs of this project ({home}): each stage "
                     "a task run with its log, the results table as an artifact")
    started = []

    def stop(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    # Ctrl-C stops them even when this process was started with SIGINT ignored (a background job of a script,
    # some test runners' workers): Python leaves an inherited "ignore" in place
    signal.signal(signal.SIGINT, stop)
    try:
        for name, url, health, command, extra in servers:
            print(f"starting the {name} UI ...", flush=True)
            started.append(subprocess.Popen(command, env={**os.environ, **extra}, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL, start_new_session=True))
            _wait_until_up(f"{url}{health}", name, started[-1])
        view = _training_view(f"http://{host}:{mlflow_port}", params.tracking.experiment) \
            if uri.startswith("sqlite:") else ""
        print("\n".join(lines).replace("{view}", view) + ("\nCtrl-C stops them." if started else ""), flush=True)
        while started and all(process.poll() is None for process in started):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        _stop_groups(started, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for process in started:
            try:
                process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:  # a server slow to shut down (a loaded machine): stop waiting for it
                _stop_groups([process], signal.SIGKILL)
                process.wait()


def _stop_groups(processes, how) -> None:
    """Send ``how`` to each process's group (started with its own session); one already gone is fine."""
    import os

    for process in processes:
        try:
            os.killpg(process.pid, how)
        except ProcessLookupError:
            pass


def _training_view(server: str, experiment: str) -> str:
    """The path of the experiment's runs in MLflow 3's "Model training" view (its UI opens the GenAI view), asked
    of the running UI server (which owns the store); the experiments list if it cannot say."""
    import json
    import urllib.parse
    import urllib.request

    where = "/#/experiments"
    try:
        query = urllib.parse.urlencode({"experiment_name": experiment})
        with urllib.request.urlopen(f"{server}/api/2.0/mlflow/experiments/get-by-name?{query}", timeout=10) as answer:
            where = f"/#/experiments/{json.load(answer)['experiment']['experiment_id']}/runs"
    except (OSError, KeyError, ValueError):  # no such experiment yet (404), or no answer
        pass
    return f"{where}?workflowType=machine_learning"


def _wait_until_up(url: str, name: str, process, seconds: float = 120) -> None:
    import urllib.request

    from taskprune.errors import TaskPruneError

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise TaskPruneError(f"the {name} UI stopped at start (exit {process.returncode}): is the port in use?")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TaskPruneError(f"the {name} UI did not answer at {url} within {seconds:.0f} s")


@app.command()
def promote(
    version: Annotated[Optional[str], typer.Option(help="Model version to judge (default: the challenger)")] = None,
    name: Annotated[Optional[str], typer.Option(help="Registered model (default: this project's)")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the decision, change nothing")] = False,
) -> None:
    """Apply the promotion rule (params.yaml `promote`) and move the `champion` alias if it passes."""
    from prefect_tasks.locks import promotion_lock
    from taskprune.cli import registry_client_and_name
    from taskprune.promotion import promote as apply_rule
    from taskprune.promotion import promotion_line

    project, params, client, name = registry_client_and_name(name)
    version, decision = apply_rule(client, name, version, params.promote, project.state / "locks", dry_run,
                                   shared_lock=promotion_lock(name))  # serialised across machines on a server
    print(promotion_line(client, name, version, decision, dry_run))


# the help's order: running, then looking at results, then the registry, then the UIs
ORDER = ("run", "stage", "register", "init", "report", "show", "methods", "models", "promote", "ui")
app.registered_commands.sort(key=lambda command: ORDER.index(command.callback.__name__))


def main() -> None:
    library_main(app)
