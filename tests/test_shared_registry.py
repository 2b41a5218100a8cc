"""Promotions from several machines into one registry: two promotion processes that share no file system
state (their own working directories and lock files, as on two hosts) against one MLflow server on
PostgreSQL and one Prefect server, both started from infra/docker-compose.yml. Round after round each
gets a new version that beats the champion, both are told to promote at the same moment: the champion
must always end on the better one. Without a lock both read the same champion and the one that writes
last wins; the Prefect global concurrency limit makes the second re-read the rule after the first moved
the alias. (Slow: about 1.5 minutes.)"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from infra import Infra

pytestmark = pytest.mark.slow
ROUNDS = 25
NAME = "taskprune-shared"

# One "host": reads "<version>" lines, promotes that version, answers with the decision as JSON. Its lock
# directory is its own; only the MLflow and Prefect servers are shared.
PROMOTER = """
import json, sys
from pathlib import Path
from mlflow import MlflowClient
from prefect_tasks.locks import promotion_lock, server_configured
from taskprune.config import PromoteConfig
from taskprune.promotion import promote

assert server_configured()
client = MlflowClient()
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    version, decision = promote(client, sys.argv[1], line.strip(), PromoteConfig(max_accuracy_drop=1.0),
                                Path("locks"), shared_lock=promotion_lock(sys.argv[1]))
    print(json.dumps({"version": version, "promoted": decision.promote, "reason": decision.reason}), flush=True)
"""


@pytest.fixture(scope="module")
def shared_servers(tmp_path_factory):
    infra = Infra(tmp_path_factory.mktemp("shared") / "infra")
    try:
        infra.start_postgres()
        infra.start_s3()
        infra.start_mlflow()
        infra.start_prefect_server()
        yield infra
    finally:
        infra.close()


def promoter(infra: Infra, home: Path) -> subprocess.Popen:
    home.mkdir(parents=True)
    environment = infra.client_environment(PREFECT_HOME=str(home / "prefect"))
    process = subprocess.Popen([sys.executable, "-c", PROMOTER, NAME], cwd=home, env=environment, text=True,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=(home / "err.log").open("w"))
    assert json.loads(process.stdout.readline()) == {"ready": True}, (home / "err.log").read_text()[-3000:]
    return process


def test_two_hosts_promoting_at_once_always_leave_the_better_champion(shared_servers, tmp_path):
    from mlflow import MlflowClient

    from taskprune.promotion import CHAMPION

    client = MlflowClient(tracking_uri=shared_servers.local.url("mlflow"))
    client.create_registered_model(NAME)
    run_id = client.create_run(client.create_experiment("shared-registry")).info.run_id

    def register(accuracy: float) -> str:
        tags = {"eval.task_accuracy": f"{accuracy:.4f}", "eval.nonzero_params": "500",
                "dense.task_accuracy": "0.7000", "dense.nonzero_params": "1000"}
        return str(client.create_model_version(NAME, source=f"runs:/{run_id}/model", run_id=run_id,
                                               tags=tags).version)

    hosts = [promoter(shared_servers, tmp_path / name) for name in ("host-a", "host-b")]
    rng = random.Random(0)
    accuracy, decisions = 0.30, []
    try:
        for _ in range(ROUNDS):
            good, better = register(accuracy + 0.01), register(accuracy + 0.02)  # both beat the champion
            order = [good, better] if rng.random() < 0.5 else [better, good]
            for host, version in zip(hosts, order):
                host.stdin.write(version + "\n")
            for host in hosts:
                host.stdin.flush()  # both start together
            answers = [json.loads(host.stdout.readline()) for host in hosts]
            decisions.append(answers)
            champion = str(client.get_model_version_by_alias(NAME, CHAMPION).version)
            assert champion == better, (answers, decisions)
            promoted = [a["version"] for a in answers if a["promoted"]]
            assert better in promoted and all(v in (good, better) for v in promoted)
            accuracy += 0.02
    finally:
        for host in hosts:
            host.stdin.close()
            host.wait(60)
    assert all(host.returncode == 0 for host in hosts)
    aliases = client.get_registered_model(NAME).aliases
    assert list(aliases) == [CHAMPION]  # exactly one champion
