"""The services a run will need, checked before the first stage: each in a second or two, none retried.

A typo in ``tracking.uri`` used to cost a whole pipeline and then minutes of retries at ``register``;
now `taskprune run` stops at once with one line per unreachable service, naming the parameter, the
address (credentials masked) and the cause. ``taskprune run --no-service-check`` skips this, for a
scheduled run whose services come up after it starts.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from taskprune.config import Params
from taskprune.errors import TaskPruneError
from taskprune.paths import Project
from taskprune.pipeline import ray_search
from taskprune.secrets import redact
from taskprune.sources import S3_REASONS, s3_client

CONNECT_SECONDS = 3.0


@dataclass(frozen=True)
class Problem:
    parameter: str
    address: str
    cause: str

    def line(self) -> str:
        return f"  {self.parameter} ({redact(self.address)}): {self.cause}"


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    for marker in ("Connection refused", "Name or service not known", "timed out", "No route to host",
                   "Temporary failure in name resolution", "Failed to establish a new connection"):
        if marker in str(exc):
            return f"{type(exc).__name__}: {marker}"
    return f"{type(exc).__name__}: {text[:160]}" if text else type(exc).__name__


def check_mlflow(uri: str) -> Problem | None:
    """An authenticated no-op call (list one experiment) on an MLflow server; local stores are not checked."""
    if urlparse(uri).scheme not in ("http", "https"):
        return None
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    try:
        response = http_request(get_default_host_creds(uri), "/api/2.0/mlflow/experiments/search", "POST",
                                max_retries=0, timeout=CONNECT_SECONDS, raise_on_status=False,
                                json={"max_results": 1})
    except Exception as exc:  # connection refused, DNS, timeout, TLS: all say the same to the user
        return Problem("tracking.uri", uri, _short(exc))
    if response.status_code in (401, 403):
        return Problem("tracking.uri", uri, f"refused: HTTP {response.status_code} (check MLFLOW_TRACKING_USERNAME/"
                                            "MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN)")
    if response.status_code != 200:
        return Problem("tracking.uri", uri, f"not an MLflow server? HTTP {response.status_code}")
    return None


def check_bucket(parameter: str, location: str, endpoint: str | None = None, **credentials) -> Problem | None:
    """The bucket of ``location`` (s3://bucket/...) exists and answers, on ``endpoint`` (else the AWS default)."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket = urlparse(location).netloc
    shown = f"{location} at {endpoint or os.environ.get('AWS_ENDPOINT_URL_S3') or os.environ.get('AWS_ENDPOINT_URL') or 'AWS'}"
    try:
        s3_client(endpoint, probe_seconds=CONNECT_SECONDS, **credentials).head_bucket(Bucket=bucket)
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        # a bucket answers HEAD with a bare 404 when it does not exist
        cause = "bucket does not exist" if code == "404" else S3_REASONS.get(code, f"S3 error {code}")
        return Problem(parameter, shown, cause)
    except (BotoCoreError, OSError) as exc:
        return Problem(parameter, shown, _short(exc))
    return None


def dvc_remote(root: Path) -> tuple[str, dict] | None:
    """The project's default DVC remote: (url, its settings), or None."""
    if not (root / ".dvc").is_dir():
        return None
    from dvc.config import Config

    config = Config(dvc_dir=str(root / ".dvc"))
    name = config.get("core", {}).get("remote")
    if not name:
        return None
    remote = dict(config.get("remote", {}).get(name, {}))
    return remote.get("url", ""), remote


def check_tcp(parameter: str, address: str) -> Problem | None:
    parsed = urlparse(address)
    try:
        with socket.create_connection((parsed.hostname, parsed.port or 10001), timeout=CONNECT_SECONDS):
            return None
    except OSError as exc:
        return Problem(parameter, address, _short(exc))


def check_services(params: Params, project: Project) -> None:
    """Every service this run will need answers; otherwise one message listing what does not (exit 2)."""
    from taskprune.tracking import tracking_uri

    problems = [check_mlflow(tracking_uri(params, project.state))]
    if params.task.path and params.task.path.startswith("s3://"):
        problems.append(check_bucket("task.path", params.task.path))
    remote = dvc_remote(project.root)
    if remote and remote[0].startswith("s3://"):
        url, settings = remote
        credentials = {key: settings[name] for key, name in (("aws_access_key_id", "access_key_id"),
                                                             ("aws_secret_access_key", "secret_access_key"))
                       if settings.get(name)}
        problems.append(check_bucket("DVC remote (.dvc/config)", url, settings.get("endpointurl"), **credentials))
    if ray_search(params) and params.search.ray_address.startswith("ray://"):  # 'local' and 'auto' start or find one here
        problems.append(check_tcp("search.ray_address", params.search.ray_address))
    api = os.environ.get("PREFECT_API_URL")
    if api:
        problems.append(check_http("PREFECT_API_URL", api.rstrip("/") + "/health"))
    found = [p for p in problems if p is not None]
    if found:
        raise TaskPruneError("cannot reach the services this run needs (nothing was run or changed; "
                             "`taskprune run --no-service-check` skips this check):\n"
                             + "\n".join(p.line() for p in found))


def check_http(parameter: str, url: str) -> Problem | None:
    import requests

    try:
        response = requests.get(url, timeout=CONNECT_SECONDS)
    except requests.RequestException as exc:
        return Problem(parameter, url, _short(exc))
    return None if response.status_code == 200 else Problem(parameter, url, f"HTTP {response.status_code}")
