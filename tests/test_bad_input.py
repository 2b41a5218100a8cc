"""The bad-input catalogue (README "Bad input and faults"): every case goes through `taskprune run`,
which must exit 2 with one message naming the file and line, or the parameter, and what was expected,
before anything runs, leaving every existing output byte for byte as it was."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from conftest import make_project

GOOD = {"query": "2+2 =", "choices": ["3", "4"], "gold": 1}


def jsonl(*rows) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()


def task_file(data: bytes):
    def setup(project: Path) -> list[str]:
        (project / "data").mkdir(exist_ok=True)
        (project / "data" / "task.jsonl").write_bytes(data)
        return ["task.path=data/task.jsonl"]
    return setup


def params_file(text: str):
    def setup(project: Path) -> list[str]:
        (project / "params.yaml").write_text((project / "params.yaml").read_text() + text)
        return []
    return setup


def params_edit(old: str, new: str):
    def setup(project: Path) -> list[str]:
        text = (project / "params.yaml").read_text()
        assert old in text
        (project / "params.yaml").write_text(text.replace(old, new, 1))
        return []
    return setup


def model_dir(files: dict[str, bytes]):
    def setup(project: Path) -> list[str]:
        folder = project / "my-model"
        folder.mkdir()
        for name, data in files.items():
            (folder / name).write_bytes(data)
        return ["model.name=my-model"]
    return setup


def gguf_file(architecture: str | None):
    """A GGUF file whose header names ``architecture`` (None: not a GGUF file at all)."""
    import struct

    def setup(project: Path) -> list[str]:
        key, value = b"general.architecture", architecture.encode() if architecture else b""
        data = (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", len(key)) + key + struct.pack("<I", 8)
                + struct.pack("<Q", len(value)) + value) if architecture else b"not a gguf file"
        (project / "m.gguf").write_bytes(data)
        return ["model.name=m.gguf"]
    return setup


def overrides(*items: str):
    return lambda project: list(items)


LLAMA_CONFIG = json.dumps({"model_type": "llama"}).encode()
SMOLLM2_SHAPE = json.dumps({"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                            "num_attention_heads": 9, "num_key_value_heads": 3}).encode()


def structured(config: bytes, *settings: str):
    """A model directory of ``config`` (weights and tokenizer files present, never read) and the structured method."""
    def setup(project: Path) -> list[str]:
        return model_dir({"config.json": config, "model.safetensors": b"", "tokenizer.json": b"{}"})(project) + \
            ["prune.method=structured", "target.max_accuracy_drop=", *settings]  # a fixed level
    return setup

CASES = {
    # task files
    "task: not JSON": (task_file(jsonl(GOOD, "query: q")), r"data/task\.jsonl:2: not valid JSON"),
    "task: truncated last line": (task_file(jsonl(GOOD)[:-1] + b"\n" + b'{"query": "q", "choi'),
                                  r"data/task\.jsonl:2: not valid JSON.*truncated"),
    "task: wrong type of gold": (task_file(jsonl(GOOD, {**GOOD, "gold": "1"})),
                                 r"data/task\.jsonl:2: field 'gold' must be an integer"),
    "task: wrong type of choices": (task_file(jsonl({**GOOD, "choices": "34"})),
                                    r"data/task\.jsonl:1: field 'choices' must be a list"),
    "task: missing field": (task_file(jsonl({"query": "q", "choices": ["a", "b"]})),
                            r"data/task\.jsonl:1: missing field\(s\) gold"),
    "task: gold out of range": (task_file(jsonl(GOOD, GOOD, {**GOOD, "gold": 2})),
                                r"data/task\.jsonl:3: field 'gold' is 2, out of range for 2 choices"),
    "task: one choice": (task_file(jsonl({**GOOD, "choices": ["4"], "gold": 0})),
                         r"data/task\.jsonl:1: field 'choices' needs at least 2 options, got 1"),
    "task: duplicated choices": (task_file(jsonl({**GOOD, "choices": ["4", "4"]})),
                                 r"data/task\.jsonl:1: field 'choices' has duplicates"),
    "task: empty file": (task_file(b""), r"data/task\.jsonl: file is empty"),
    "task: huge line": (task_file(jsonl({**GOOD, "query": "x" * 1_100_000})), r"data/task\.jsonl:1: .*longer than"),
    "task: non-UTF-8 bytes": (task_file(jsonl(GOOD).replace(b"2+2", b"\xff\xfe")), r"data/task\.jsonl:1: not UTF-8"),
    "task: path does not exist": (overrides("task.path=data/nope.jsonl"), r"data/nope\.jsonl: file not found"),
    "task: path is a directory": (overrides("task.path=."), r"is a directory, expected a file"),
    "task: S3 key does not exist": (overrides("task.path=s3://tasks/missing.jsonl"),
                                    r"s3://tasks/missing\.jsonl: cannot read S3 object: object does not exist"),
    "task: S3 access denied": (overrides("task.path=s3://tasks/forbidden.jsonl"),
                               r"s3://tasks/forbidden\.jsonl: cannot read S3 object: access denied"),
    "task: unknown built-in task": (overrides("task.name=capitals"), r"capitals.*(capital|sentiment)"),
    "task: too few rows to split": (task_file(jsonl(GOOD)),
                                    r"data/task\.jsonl: task has 1 examples: too few to split .*calib_fraction"),
    # params
    "params: unknown key (typo) in an override": (overrides("prune.sparsty=0.5"), r"prune\.sparsty: unknown parameter"),
    "params: unknown key (typo) in params.yaml": (params_file("\nrecovr:\n  steps: 3\n"),
                                                  r"params\.yaml.*recovr: unknown parameter"),
    "params: wrong type": (overrides("prune.sparsity=half"), r"prune\.sparsity: Input should be a valid number"),
    "params: wrong type in params.yaml": (params_edit("  steps: 150", "  steps: many"),
                                          r"params\.yaml.*recover\.steps: Input should be a valid integer"),
    "params: sparsity out of range": (overrides("prune.sparsity=1.5"), r"prune\.sparsity: Input should be less than 1"),
    "params: budget out of range": (overrides("search.target_reduction=1.2"), r"search\.target_reduction: Input should be less than 1"),
    "params: rank out of range": (overrides("recover.rank=0"), r"recover\.rank: Input should be greater than 0"),
    "params: N:M with N >= M": (overrides("prune.pattern=4:2"), r"N:M needs 0 < N < M"),
    "params: sparsity the N:M structure cannot reach": (overrides("prune.pattern=2:4", "prune.sparsity=0.6"),
                                                        r"2:4.*sparsity.*0\.5"),
    "params: conflicting options (OWL with N:M)": (overrides("prune.pattern=2:4", "prune.allocation=owl"), r"prune: allocation 'owl' varies sparsity per layer; it needs pattern 'unstructured'\n$"),
    "params: conflicting options (sieve with N:M)": (overrides("prune.method=sieve", "prune.pattern=2:4"), r"sieve.*unstructured"),
    "params: unsafe registry name": (overrides("tracking.registered_model=x'{task.__class__}"),
                                     r"tracking\.registered_model: letters, digits"),
    "params: override without =": (overrides("prune.sparsity"), r"override 'prune\.sparsity': expected KEY=VALUE"),
    # models
    "model: unknown architecture": (model_dir({"config.json": json.dumps({"model_type": "mamba"}).encode(),
                                               "model.safetensors": b""}), r"unknown architecture 'mamba'"),
    "model: only pickle weights": (model_dir({"config.json": LLAMA_CONFIG, "pytorch_model.bin": b"\x80\x04."}),
                                   r"my-model: only pickle weights .*safetensors only"),
    "model: directory without a config": (model_dir({"model.safetensors": b""}), r"my-model: no config\.json"),
    "model: directory without weights": (model_dir({"config.json": LLAMA_CONFIG}), r"my-model: no \*\.safetensors"),
    "model: path that does not exist": (overrides("model.name=./models/none"), r"model\.name: directory .*models/none not found"),
    "model: directory without a tokenizer": (model_dir({"config.json": LLAMA_CONFIG, "model.safetensors": b""}),
                                             r"model\.name 'my-model': no tokenizer"),
    "model: GGUF of an unknown architecture": (gguf_file("mamba"),
                                               r"model\.name 'm\.gguf'.*unknown architecture 'mamba'"),
    "model: a .gguf file that is not GGUF": (gguf_file(None), r"m\.gguf: not a GGUF file"),
    # structured pruning, checked against the model's config
    "structured: architecture without surgery": (structured(json.dumps({"model_type": "gpt2"}).encode()),
                                                 r"architecture 'gpt2': structured pruning .* not supported"),
    "structured: heads not a whole number of groups": (structured(SMOLLM2_SHAPE, "prune.structured.keep_heads=4"),
                                                       r"prune\.structured\.keep_heads: 4 query heads is not a whole "
                                                       r"number of head groups"),
    "structured: every layer removed": (structured(SMOLLM2_SHAPE, "prune.structured.reduction=0.99",
                                                   "prune.structured.depth=1"),
                                        r"prune\.structured: .*would remove every one of the 30 decoder layers"),
    "structured: every MLP channel removed": (structured(SMOLLM2_SHAPE, "prune.structured.reduction=0.9"),
                                              r"prune\.structured\.reduction 0\.9 would remove every MLP channel"),
    "structured: with N:M": (overrides("prune.method=structured", "prune.pattern=2:4", "prune.sparsity=0.5",
                                       "target.max_accuracy_drop="), r"structured.*unstructured"),
    # target mode (the accuracy budget)
    "target: no validation split": (overrides("task.validation_fraction=0"),
                                    r"target\.max_accuracy_drop chooses the level on a validation split: set "
                                    r"task\.validation_fraction"),
    "target: unknown method": (overrides("target.methods=[structurd]"), r"target\.methods: .*unknown method"),
    "target: a level that removes every MLP channel": (
        structured(SMOLLM2_SHAPE, "target.max_accuracy_drop=0.05", "target.levels=[0.3, 0.95]"),
        r"target mode: method structured at its highest level 0\.95 \(target\.levels\): .*every MLP channel"),
    "target: a method that refuses the prune settings": (
        overrides("prune.pattern=2:4"), r"target mode tries method 'structured' \(target\.methods\): .*unstructured"),
}


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project with outputs of an earlier run, which a rejected run must not touch."""
    moto = pytest.importorskip("moto")
    root = make_project(tmp_path / "project", git=False)
    (root / "artifacts" / "masks").mkdir(parents=True)
    (root / "artifacts" / "masks" / "masks.json").write_text('{"earlier": "run"}')
    (root / "metrics.json").write_text('{"task": "capital"}')
    (root / "dvc.lock").write_text("schema: '2.0'\n")
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with moto.mock_aws():
        import boto3

        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="tasks")
        yield root


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and "my-model" not in p.parts and p.parts[-2:] != ("data", "task.jsonl")}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_clear_message_exit_2_and_nothing_touched(case, project, monkeypatch, capsys):
    from botocore.exceptions import ClientError

    from flows.app import app
    from taskprune import sources
    from taskprune.cli import main

    setup, message = CASES[case]
    extra = setup(project)
    before = snapshot(project)
    real_client = sources.s3_client

    def s3_client():  # the object "forbidden.jsonl" answers 403, as S3 does without permission
        client = real_client()

        def refuse(*args, **kwargs):
            if kwargs.get("Key") == "forbidden.jsonl":
                raise ClientError({"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}, "GetObject")
            return original(*args, **kwargs)
        original = client.get_object
        client.get_object = refuse
        return client

    monkeypatch.setattr(sources, "s3_client", s3_client)
    monkeypatch.chdir(project)
    with pytest.raises(SystemExit) as exit_:
        main(app, ["run", *[arg for item in extra for arg in ("-S", item)]])
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    assert "Traceback" not in err and err.startswith("error: ") and err.count("\n") <= 3, err
    assert re.search(message, err, re.S), err
    assert snapshot(project) == before
    if os.environ.get("TASKPRUNE_CATALOGUE_OUT"):  # collects the README table ("Bad input and faults")
        with open(os.environ["TASKPRUNE_CATALOGUE_OUT"], "a", encoding="utf-8") as fh:
            shown = err.removeprefix("error: ").strip().replace(f"{project}/", "").replace("\n", " ")
            fh.write(f"| {case} | `{shown[:170]}` |\n")

