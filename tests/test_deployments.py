"""Recurring runs against a real Prefect server on PostgreSQL, both started from infra/docker-compose.yml
(tests/infra.py): the deployments in prefect.yaml are created with their cron schedules, and a triggered run
of one is executed by the compose file's process worker: the first run prunes, the second finds nothing
changed. (Slow: about 4 minutes.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, write_general_text
from infra import Infra
from pipeline_helpers import tiny_settings, write_task
from taskprune.data import builtin

pytestmark = pytest.mark.slow
PREFECT = str(Path(sys.executable).parent / "prefect")


@pytest.fixture
def prefect_server(tmp_path):
    infra = Infra(tmp_path / "infra")
    try:
        infra.start_postgres()
        infra.start_prefect_server()
        yield infra
    finally:
        infra.close()


def worker_environment(infra: Infra) -> dict[str, str]:
    """The prefect-worker service's environment, with a worker that polls often (the test waits on it)."""
    environment = infra.client_environment(PREFECT_WORKER_QUERY_SECONDS="2", PREFECT_WORKER_PREFETCH_SECONDS="30")
    environment.pop("MLFLOW_TRACKING_URI")  # the project's own SQLite store: no MLflow server in this test
    return environment


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


def run_once(environment, worker: list[str], deployment: str, parameters: dict) -> dict:
    """Trigger a run now, let the process worker pick it up and finish it; returns the run's final state."""
    out = prefect(environment, "deployment", "run", deployment, "--params", json.dumps(parameters))
    run_id = next(line.split()[-1] for line in out.splitlines() if "UUID" in line)
    prefect(environment, *worker[1:], "--run-once", timeout=900)
    return api(environment, f"""
with get_client(sync_client=True) as c:
    r = c.read_flow_run("{run_id}")
    print(json.dumps({{"state": r.state.type.value, "message": r.state.message}}))""")


def test_deployments_have_schedules_and_a_triggered_run_reprunes_then_skips(prefect_server, tmp_path, tokenizer_dir):
    from conftest import make_tiny_model

    environment = worker_environment(prefect_server)
    create_pool, worker = prefect_server.worker_commands()  # as the compose file's worker runs them
    assert worker[1:3] == ["worker", "start"]
    prefect(environment, *create_pool[1:])
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

    first = run_once(environment, worker, "taskprune-recurring/capital-wanda-nightly", parameters)
    assert first["state"] == "COMPLETED", first
    runs = [json.loads(line) for line in (project / ".taskprune" / "recurring.jsonl").read_text().splitlines()]
    assert runs[-1]["outcome"] == "re-pruned" and runs[-1]["method"] == "task_aware+wanda"
    assert ": promoted (" in runs[-1]["promotion"]  # no champion yet and the rule allows any drop
    assert (project / "metrics.json").is_file() and (project / "artifacts" / "register.json").is_file()

    second = run_once(environment, worker, "taskprune-recurring/capital-wanda-nightly", parameters)
    assert second["state"] == "COMPLETED", second
    runs = [json.loads(line) for line in (project / ".taskprune" / "recurring.jsonl").read_text().splitlines()]
    assert len(runs) == 2 and runs[-1] == {**runs[-1], "outcome": "nothing changed", "changed": []}

    write_task(task, [ex.to_row() for ex in builtin.sentiment(1)[:60]])  # new task data: a re-prune
    third = run_once(environment, worker, "taskprune-recurring/capital-wanda-nightly", parameters)
    assert third["state"] == "COMPLETED", third
    last = json.loads((project / ".taskprune" / "recurring.jsonl").read_text().splitlines()[-1])
    assert last["outcome"] == "re-pruned" and last["changed"] == ["task data"]
