"""Recurring runs against a real Prefect server: the deployments in prefect.yaml are created with their
cron schedules on a `prefect server` subprocess, and a triggered run of one is executed by a process
worker: the first run prunes, the second finds nothing changed. (Slow: about 4 minutes.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, write_general_text
from pipeline_helpers import free_port, tiny_settings, wait_for, write_task
from taskprune.data import builtin

pytestmark = pytest.mark.slow
PREFECT = str(Path(sys.executable).parent / "prefect")


@pytest.fixture
def prefect_server(tmp_path):
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    environment.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
                       DO_NOT_TRACK="true", PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
                       PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{tmp_path / 'prefect.db'}",
                       PREFECT_WORKER_QUERY_SECONDS="2", PREFECT_WORKER_PREFETCH_SECONDS="30",
                       TASKPRUNE_CODE=str(REPO),  # prefect.yaml's pull step, read by the worker
                       PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=environment, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(f"http://127.0.0.1:{port}/api/health")
        yield environment
    finally:
        server.terminate()
        server.wait(30)


def prefect(environment, *args, cwd=REPO, timeout=600) -> str:
    done = subprocess.run([PREFECT, *args], cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def api(environment, script: str) -> object:
    """Run ``script`` (which prints JSON) with a Prefect client against the test server."""
    code = "import asyncio, json\nfrom prefect.client.orchestration import get_client\n" + script
    done = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_once(environment, deployment: str, parameters: dict) -> dict:
    """Trigger a run now, let a process worker pick it up and finish it; returns the run's final state."""
    out = prefect(environment, "deployment", "run", deployment, "--params", json.dumps(parameters))
    run_id = next(line.split()[-1] for line in out.splitlines() if "UUID" in line)
    prefect(environment, "worker", "start", "--pool", "taskprune", "--type", "process", "--run-once", timeout=900)
    return api(environment, f"""
with get_client(sync_client=True) as c:
    r = c.read_flow_run("{run_id}")
    print(json.dumps({{"state": r.state.type.value, "message": r.state.message}}))""")


def test_deployments_have_schedules_and_a_triggered_run_reprunes_then_skips(prefect_server, tmp_path, tokenizer_dir):
    from conftest import make_tiny_model

    environment = prefect_server
    prefect(environment, "work-pool", "create", "taskprune", "--type", "process")
    prefect(environment, "deploy", "--all", "--no-prompt")
    deployments = api(environment, """
with get_client(sync_client=True) as c:
    print(json.dumps({d.name: [s.schedule.cron for s in d.schedules] for d in c.read_deployments()}))""")
    assert deployments == {"capital-wanda-nightly": ["0 2 * * *"], "sentiment-sieve-weekly": ["0 4 * * 0"]}

    model = make_tiny_model("llama", tokenizer_dir, tmp_path / "model")
    task = write_task(tmp_path / "task.jsonl", [ex.to_row() for ex in builtin.sentiment(0)[:60]])
    settings = {**tiny_settings(model, task, write_general_text(tmp_path / "general.txt")),
                "prune.method": "task_aware", "promote.max_accuracy_drop": 1.0}
    project = tmp_path / "recurring-project"
    parameters = {"project_root": str(project), "settings": settings}

    first = run_once(environment, "taskprune-recurring/capital-wanda-nightly", parameters)
    assert first["state"] == "COMPLETED", first
    runs = [json.loads(line) for line in (project / ".taskprune" / "recurring.jsonl").read_text().splitlines()]
    assert runs[-1]["outcome"] == "re-pruned" and runs[-1]["method"] == "task_aware+wanda"
    assert ": promoted (" in runs[-1]["promotion"]  # no champion yet and the rule allows any drop
    assert (project / "metrics.json").is_file() and (project / "artifacts" / "register.json").is_file()

    second = run_once(environment, "taskprune-recurring/capital-wanda-nightly", parameters)
    assert second["state"] == "COMPLETED", second
    runs = [json.loads(line) for line in (project / ".taskprune" / "recurring.jsonl").read_text().splitlines()]
    assert len(runs) == 2 and runs[-1] == {**runs[-1], "outcome": "nothing changed", "changed": []}

    write_task(task, [ex.to_row() for ex in builtin.sentiment(1)[:60]])  # new task data: a re-prune
    third = run_once(environment, "taskprune-recurring/capital-wanda-nightly", parameters)
    assert third["state"] == "COMPLETED", third
    last = json.loads((project / ".taskprune" / "recurring.jsonl").read_text().splitlines()[-1])
    assert last["outcome"] == "re-pruned" and last["changed"] == ["task data"]
