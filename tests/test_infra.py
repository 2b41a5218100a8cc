"""Static checks of infra/ and prefect.yaml (Docker and Kubernetes are not available here; the same
configuration runs as local processes in test_servers.py and test_deployments.py)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from conftest import REPO

INFRA = REPO / "infra"


def compose() -> dict:
    return yaml.safe_load((INFRA / "docker-compose.yml").read_text())


def test_compose_has_every_service_and_takes_credentials_only_from_the_env_file():
    text = (INFRA / "docker-compose.yml").read_text()
    services = compose()["services"]
    assert set(services) == {"postgres", "minio", "minio-buckets", "mlflow", "prefect-server", "prefect-worker",
                             "ray-head", "ray-worker"}
    used = set(re.findall(r"\$\{(\w+)\}", text))
    defined = {line.split("=", 1)[0] for line in (INFRA / ".env.example").read_text().splitlines()
               if line and not line.startswith("#")}
    assert used == defined
    assert "change-me" not in text  # no literal credential in the compose file


def test_compose_wiring_bucket_code_path_and_shared_runs_volume():
    services = compose()["services"]
    bucket = re.search(r"mc mb --ignore-existing local/([\w-]+)", services["minio-buckets"]["entrypoint"])[1]
    assert f"--artifacts-destination s3://{bucket}/" in services["mlflow"]["command"]
    workdir = re.search(r"^WORKDIR (\S+)", (INFRA / "Dockerfile").read_text(), re.M)[1]
    worker = services["prefect-worker"]
    assert worker["environment"]["TASKPRUNE_CODE"] == workdir == worker["working_dir"]
    mounts = {name: services[name]["volumes"] for name in ("prefect-worker", "ray-head", "ray-worker")}
    assert all(m == [f"runs:{workdir}/runs"] for m in mounts.values()), mounts  # Ray reads projects by path
    assert worker["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert "-r requirements.lock" in (INFRA / "Dockerfile").read_text()


def test_kubernetes_manifests_parse_and_reference_existing_secrets():
    docs = [d for name in ("taskprune.yaml", "ray-cluster.yaml")
            for d in yaml.safe_load_all((INFRA / "k8s" / name).read_text()) if d]
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {("StatefulSet", "postgres"), ("StatefulSet", "minio"), ("Deployment", "mlflow"),
            ("Deployment", "prefect-server"), ("Deployment", "prefect-worker"), ("RayCluster", "taskprune-ray"),
            ("Job", "minio-buckets")} <= kinds
    secret = next(d for d in docs if d["kind"] == "Secret")
    refs = re.findall(r"secretKeyRef: \{name: taskprune-credentials, key: (\w+)\}",
                      (INFRA / "k8s" / "taskprune.yaml").read_text())
    assert refs and set(refs) <= set(secret["stringData"])
    assert all(d["metadata"].get("namespace") == "taskprune" for d in docs if d["kind"] != "Namespace")
    listed = yaml.safe_load((INFRA / "k8s" / "kustomization.yaml").read_text())["resources"]
    assert listed == ["taskprune.yaml", "ray-cluster.yaml"]


def test_prefect_yaml_deployments_point_at_the_recurring_flow_with_valid_settings():
    from flows.recurring import as_overrides, recurring
    from taskprune import config

    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    assert spec["pull"] == [{"prefect.deployments.steps.set_working_directory": {"directory": "{{ $TASKPRUNE_CODE }}"}}]
    for deployment in spec["deployments"]:
        path, _, name = deployment["entrypoint"].partition(":")
        assert (REPO / path).is_file() and name == recurring.fn.__name__
        assert deployment["schedules"][0]["cron"].count(" ") == 4
        config.load(REPO / "params.yaml", as_overrides(deployment["parameters"]["settings"]))  # typos fail here
        assert not Path(deployment["parameters"]["project_root"]).is_absolute()
