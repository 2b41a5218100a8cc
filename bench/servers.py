"""What the server set-up of infra/ costs, measured side by side in one run on this machine, with every
service started from infra/docker-compose.yml as the server tests start it (tests/infra.py):

- MLflow server on SQLite vs on PostgreSQL: start-up (until /health answers) and one registration round as
  TaskPrune does it (a model version with its tags, the alias, the alias read back), median of ``--rounds``;
- Prefect server on SQLite vs on PostgreSQL: start-up and one trivial flow run against it (median);
- Ray: a cluster of separate processes (``ray start --head`` + the compose file's worker replicas) vs a Ray
  started in-process: start-up, and the overhead of one trivial task (mean over ``--tasks``); then the
  genetic search on a tiny model as ``taskprune stage search``: local worker processes
  (``search.workers`` = the cluster's worker count) vs the cluster (``search.ray_address``).

    .venv/bin/python bench/servers.py [--rounds 30] [--tasks 200] [--out bench/results/servers.md]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO)]  # the server tests' process-level services (and their helpers)

from infra import BIN, Infra, service  # noqa: E402
from pipeline_helpers import cli_env, wait_for  # noqa: E402
from prune_matrix import write_report  # noqa: E402  (same directory)

REGISTER_ROUND = """
import json, statistics, sys, time
from mlflow import MlflowClient
client = MlflowClient(sys.argv[1])
client.create_registered_model("bench")
run = client.create_run(client.create_experiment("bench")).info.run_id
tags = {"eval.task_accuracy": "0.5000", "eval.nonzero_params": "100", "dense.task_accuracy": "0.7000",
        "dense.nonzero_params": "200"}
seconds = []
for _ in range(int(sys.argv[2])):
    started = time.perf_counter()
    version = client.create_model_version("bench", source=f"runs:/{run}/model", run_id=run, tags=tags).version
    client.set_registered_model_alias("bench", "challenger", version)
    client.get_model_version_by_alias("bench", "challenger")
    seconds.append(time.perf_counter() - started)
print(json.dumps(seconds))
"""

FLOW_RUNS = """
import json, sys, time
from prefect import flow

@flow(name="bench")
def nothing():
    return 1

seconds = []
for _ in range(int(sys.argv[1])):
    started = time.perf_counter()
    nothing()
    seconds.append(time.perf_counter() - started)
print(json.dumps(seconds))
"""

RAY_TASKS = """
import json, sys, time
import ray
ray.init(sys.argv[1], include_dashboard=False, log_to_driver=False)

@ray.remote(num_cpus=1)
def nothing(i):
    return i

ray.get([nothing.remote(i) for i in range(8)])  # workers up
started = time.perf_counter()
ray.get([nothing.remote(i) for i in range(int(sys.argv[2]))])
print(json.dumps((time.perf_counter() - started) / int(sys.argv[2])))
"""


def python(script: str, *args: str, env: dict[str, str], timeout: int = 1800):
    done = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True,
                          timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def timed(start) -> float:
    began = time.perf_counter()
    start()
    return time.perf_counter() - began


def ms(values) -> str:
    return f"{statistics.median(values) * 1000:.0f} ms" if isinstance(values, list) else f"{values * 1000:.1f} ms"


def mlflow_rows(root: Path, rounds: int) -> list[tuple[str, str, str]]:
    rows = []
    for backend in ("sqlite", "postgres"):
        infra = Infra(root / f"mlflow-{backend}")
        try:
            if backend == "postgres":
                infra.start_postgres()
            infra.start_s3()
            command = infra.local.command("mlflow")
            if backend == "sqlite":
                at = command.index("--backend-store-uri") + 1
                command[at] = f"sqlite:///{infra.local.root / 'mlflow.db'}"
            began = time.perf_counter()
            infra.processes.start("mlflow", command, infra.local.environment("mlflow"))
            wait_for(f"{infra.local.url('mlflow')}/health", 300)
            startup = time.perf_counter() - began
            seconds = python(REGISTER_ROUND, infra.local.url("mlflow"), str(rounds), env=cli_env(root))
            rows.append((f"MLflow server on {backend}", f"{startup:.1f} s", f"{ms(seconds)} per registration round"))
        finally:
            infra.close()
    return rows


def prefect_rows(root: Path, rounds: int) -> list[tuple[str, str, str]]:
    rows = []
    for backend in ("sqlite", "postgres"):
        infra = Infra(root / f"prefect-{backend}")
        try:
            extra = {}
            if backend == "postgres":
                infra.start_postgres()
            else:
                extra["PREFECT_API_DATABASE_CONNECTION_URL"] = f"sqlite+aiosqlite:///{infra.local.root / 'prefect.db'}"
            environment = {**infra.local.environment("prefect-server", PREFECT_HOME=str(infra.local.root / "home")),
                           **extra}
            began = time.perf_counter()
            infra.processes.start("prefect-server", infra.local.command("prefect-server"), environment)
            url = f"{infra.local.url('prefect-server')}/api"
            wait_for(f"{url}/health", 300)
            startup = time.perf_counter() - began
            seconds = python(FLOW_RUNS, str(rounds), env=infra.client_environment(PREFECT_API_URL=url))
            rows.append((f"Prefect server on {backend}", f"{startup:.1f} s", f"{ms(seconds)} per trivial flow run"))
        finally:
            infra.close()
    return rows


def tiny_search_project(root: Path, name: str, **search) -> Path:
    """A project with a tiny Llama, its calibration and scores done, ready for `taskprune stage search`."""
    from ruamel.yaml import YAML

    from conftest import make_tiny_model, train_tokenizer
    from test_search import run_stages, tiny_project

    tokenizer = root / "tokenizer"
    if not tokenizer.exists():
        train_tokenizer(tokenizer)
    model = root / "tiny-llama"
    if not model.exists():
        make_tiny_model("llama", tokenizer, model)
    project, params = tiny_project(root / name, model, prune={"method": "sieve", "allocation": "search"},
                                   search={"population": 16, "generations": 4, "examples": 24, **search})
    run_stages(params, project, "prepare_data", "calibrate", "score")
    YAML().dump(params.model_dump(mode="json"), project.params_file)
    return project.root


def search_seconds(project: Path, env: dict[str, str]) -> float:
    began = time.perf_counter()
    done = subprocess.run([str(BIN / "taskprune"), "stage", "search"], cwd=project, env=env, capture_output=True,
                          text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(done.stdout[-2000:] + done.stderr[-2000:])
    return time.perf_counter() - began


def ray_rows(root: Path, tasks: int) -> list[tuple[str, str, str]]:
    replicas = service("ray-worker")["deploy"]["replicas"]
    local_env = {**cli_env(root), "RAY_USAGE_STATS_ENABLED": "0"}
    began = time.perf_counter()
    per_task_local = python(RAY_TASKS, "local", str(tasks), env=local_env)
    in_process = time.perf_counter() - began
    rows = [("Ray started in-process (`local`)", f"{in_process:.1f} s for start and all tasks",
             f"{ms(per_task_local)} per trivial task")]
    local_project = tiny_search_project(root, "local", workers=replicas)
    local_seconds = search_seconds(local_project, cli_env(local_project))
    infra = Infra(root / "ray")
    keep = Path(tempfile.mkdtemp(prefix="bench-ray-logs-"))  # Ray's logs outlive the cluster, for a failure
    try:
        began = time.perf_counter()
        head = infra.start_ray_head()
        for index in range(replicas):
            infra.start_ray_worker(index, head)
        startup = time.perf_counter() - began
        address = f"ray://127.0.0.1:{infra.local.ports[10001]}"
        token = {k: v for k, v in infra.client_environment().items() if k.startswith("RAY_AUTH")}
        cluster_project = tiny_search_project(root, "cluster", ray_address=address)
        cluster_seconds = search_seconds(cluster_project, {**cli_env(cluster_project), **token})  # the first client
        per_task = python(RAY_TASKS, address, str(tasks), env={**local_env, **token})
        rows.append((f"Ray cluster: head + {replicas} workers (`ray start`)", f"{startup:.1f} s",
                     f"{ms(per_task)} per trivial task through `ray://`"))
    finally:
        shutil.copytree(infra.ray_tmp, keep, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.sock", "sockets"))
        infra.close()
    rows.append((f"search, {replicas} local worker processes", f"{local_seconds:.1f} s",
                 "`taskprune stage search`, population 16, 4 generations"))
    rows.append((f"search on the cluster ({replicas} workers + head)", f"{cluster_seconds:.1f} s",
                 f"{cluster_seconds / local_seconds:.2f}x the local processes"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--only", nargs="+", choices=("mlflow", "prefect", "ray"), default=("mlflow", "prefect", "ray"))
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "servers.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-servers-") as scratch:
        root = Path(scratch)
        rows = []
        for part, measure, count in (("mlflow", mlflow_rows, args.rounds), ("prefect", prefect_rows, args.rounds),
                                     ("ray", ray_rows, args.tasks)):
            if part in args.only:
                try:
                    rows += measure(root, count)
                except Exception as exc:  # a part that failed is reported as such; the others still are
                    rows.append((f"{part}: failed", type(exc).__name__, str(exc).strip().splitlines()[-1][:200]))
    lines = ["# The server set-up: SQLite vs PostgreSQL, in-process Ray vs a Ray cluster", "",
             "| what | start-up / wall time | per operation |", "|---|---|---|",
             *[f"| {a} | {b} | {c} |" for a, b, c in rows], "",
             f"Every service started from infra/docker-compose.yml as the server tests start it, on this machine "
             f"({os.cpu_count()} cores), one after the other. Made with `.venv/bin/python bench/servers.py "
             f"--rounds {args.rounds} --tasks {args.tasks}`."]
    write_report(args.out, lines)


if __name__ == "__main__":
    main()
