"""The CLI's contract on bad input: one clear message, exit 2, nothing written."""

import json
import re
import sys
from pathlib import Path

import pytest

from conftest import make_project
from pipeline_helpers import taskprune


@pytest.fixture
def project(tmp_path):
    return make_project(tmp_path / "proj", git=False)


@pytest.mark.parametrize("override, message", [
    ("prune.sparsity=1.5", "prune.sparsity: Input should be less than 1"),
    ("prune.pattern=4:2", "N:M needs 0 < N < M"),
    ("prune.sparsty=0.5", "prune.sparsty: unknown parameter"),
    ("task.path=missing.jsonl", "missing.jsonl: file not found"),
    ("model.name=./no/such/dir", "directory .*no/such/dir not found"),
])
def test_run_rejects_bad_input_before_touching_anything(project, override, message):
    before = (project / "params.yaml").read_text()
    done = taskprune(project, "run", "-S", override, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    import re
    assert re.search(message, done.stderr), done.stderr
    assert (project / "params.yaml").read_text() == before
    assert not (project / "artifacts").exists()


def test_bad_task_row_names_file_and_line(project):
    (project / "bad.jsonl").write_text(json.dumps({"query": "q", "choices": ["a", "b"], "gold": 0}) + "\n"
                                       + json.dumps({"query": "q", "choices": ["a", "b"], "gold": 5}) + "\n")
    done = taskprune(project, "run", "-S", "task.path=bad.jsonl", timeout=300)
    assert done.returncode == 2
    assert "bad.jsonl:2: field 'gold' is 5, out of range for 2 choices" in done.stderr


def test_stage_outside_a_project(tmp_path):
    done = taskprune(tmp_path, "stage", "score")
    assert done.returncode == 2 and "no params.yaml" in done.stderr


def test_unknown_architecture_in_stage(project, tmp_path):
    model = tmp_path / "weird"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "mamba"}))
    (model / "model.safetensors").write_bytes(b"")
    done = taskprune(project, "run", "-S", f"model.name={model}", timeout=300)
    assert done.returncode == 2 and "unknown architecture 'mamba'" in done.stderr


@pytest.mark.slow
def test_a_failing_stage_stops_the_flow_with_its_message(tmp_path, tiny_llama_dir):
    """An error inside a stage (here: the general text file is missing) surfaces through DVC and
    Prefect as the stage's own message and exit 2; later stages do not run."""
    from conftest import make_project
    from taskprune import config

    project = make_project(tmp_path / "proj")
    config.write_overrides(project / "params.yaml", [
        f"model.name={tiny_llama_dir}", "calibration.general.source=file", "calibration.general.path=missing.txt"])
    done = taskprune(project, "run", timeout=600)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    console = done.stdout + done.stderr
    # the stage's message once, then the stage, how to go on and the exit code; no traceback, no second exit code
    last = done.stderr.strip().splitlines()[-2:]
    assert last[0].startswith("error: ") and last[0].endswith("missing.txt: file not found"), done.stderr[-3000:]
    assert last[1].startswith("stage prepare_data failed (exit 2): fix the cause and run `taskprune run` again")
    assert console.count("missing.txt: file not found") == 1 and "Traceback" not in console
    assert "failed to reproduce" not in console and "exited with" not in console
    log = project / last[1].split("Full log: ")[1]
    assert "failed to reproduce 'prepare_data'" in log.read_text()  # DVC's report kept in the run's log
    assert not (project / "artifacts" / "stats").exists()


def test_help_lists_run_first_shows_key_value_and_there_is_a_version(capsys):
    from flows.app import app
    from taskprune.cli import main

    for argv in (["--help"], ["run", "--help"], ["promote", "--help"], ["ui", "--help"], ["--version"]):
        with pytest.raises(SystemExit) as done:
            main(app, argv)
        assert done.value.code == 0
    out = capsys.readouterr().out
    commands = [line.split()[1] for line in out.splitlines() if line.startswith("│ ") and len(line.split()) > 2
                and line.split()[1] in {"run", "stage", "register", "init", "report", "show", "methods", "promote",
                                        "models"}]
    assert commands[:2] == ["run", "stage"]
    assert "KEY=VALUE" in out and "VERSION" in out and "MLFLOW_PORT" in out
    assert not re.search(r"<(bool|str|int|list\[str\])>", out)  # no type placeholders
    assert out.rstrip().splitlines()[-1].startswith("taskprune ")


@pytest.mark.slow
def test_ui_opens_mlflow_and_prefect_on_the_project_stores_and_stops_them(tmp_path):
    """`taskprune ui` starts the MLflow UI on the project's SQLite store and a Prefect server on its own home; both
    answer, and one signal stops them."""
    import signal
    import subprocess
    import urllib.request

    from conftest import make_project
    from pipeline_helpers import cli_env, free_port

    project = make_project(tmp_path / "proj", git=False)
    ports = free_port(), free_port()
    environment = {k: v for k, v in cli_env(project).items() if k != "PREFECT_API_URL"}  # the local-store case
    ui = subprocess.Popen([str(Path(sys.executable).with_name("taskprune")), "ui", "--mlflow-port", str(ports[0]),
                           "--prefect-port", str(ports[1])], cwd=project, env=environment,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          # as a background job of a script starts it: SIGINT ignored; Ctrl-C must still stop it
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        lines = []
        while not any("Ctrl-C stops them" in line for line in lines):
            line = ui.stdout.readline()
            assert line or ui.poll() is None, "".join(lines) + ui.stderr.read()[-2000:]
            lines.append(line)
        assert any(f"http://127.0.0.1:{ports[1]}/runs" in line for line in lines)
        assert any("workflowType=machine_learning" in line for line in lines)  # MLflow's Model training view
        for url in (f"http://127.0.0.1:{ports[0]}/health", f"http://127.0.0.1:{ports[1]}/api/health"):
            with urllib.request.urlopen(url, timeout=10) as answer:
                assert answer.status == 200, url
        assert (project / ".taskprune" / "mlflow.db").is_file() and (project / ".taskprune" / "prefect").is_dir()
    finally:
        ui.send_signal(signal.SIGINT)
        assert ui.wait(timeout=60) == 0
    for port in ports:
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
