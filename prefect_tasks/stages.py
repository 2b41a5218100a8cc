"""Prefect tasks that run stages through DVC, so unchanged stages are skipped and dvc.lock records them."""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

from prefect import task

from taskprune import config
from taskprune.data.task import recorded_fingerprint, source_fingerprint
from taskprune.errors import TaskPruneError
from taskprune.paths import Project, read_json
from taskprune.pipeline import STAGES
from taskprune.preflight import preflight
from taskprune.stages import run_stage as run_stage_here

SKIPPED_MARK = "didn't change, skipping"
# DVC's advice after each stage (git add dvc.lock, autostage, dvc push): kept in the task's log, not on the console
DVC_HINTS = ("To track the changes with git", "git add dvc.lock", "To enable auto staging", "dvc config core.autostage",
             "Use `dvc push` to send your updates")


class StageFailed(TaskPruneError):
    """A stage that failed while running: its own message (its ``error:`` line, or the last line of its
    traceback), its name and its exit code. The traceback and DVC's report went to the run's log."""

    def __init__(self, stage: str, message: str, code: int):
        super().__init__(f"{message} (stage {stage}, exit {code})")
        self.stage, self.message, self.code = stage, message, code


class StageStderr:
    """A stage's stderr on the way to the console, as it comes (progress bars redraw in place), except what
    belongs in the log rather than between the progress bars: the stage's ``error:`` line (said once, at the
    end, by the run), a Python traceback, and DVC's "failed to reproduce" report. Keeps the stage's message
    and exit code."""

    HELD = ("error: ", "ERROR: ", "Traceback (most recent call last):")
    NOT_THE_MESSAGE = ("Traceback (most recent call last):", "During handling of the above exception",
                       "The above exception was the direct cause", "ERROR: ", "error: ")

    def __init__(self, console, log: logging.Logger):
        self.console, self.log = console, log
        self.pending, self.passing, self.in_traceback = "", False, False
        self.message: str | None = None
        self.last_exception_line: str | None = None
        self.code: int | None = None

    def feed(self, text: str) -> None:
        for piece in re.split(r"(?<=[\r\n])", text):
            if not piece:
                continue
            if self.passing:  # the rest of a line already on its way to the console
                self._print(piece)
                self.passing = not piece.endswith(("\n", "\r"))
                continue
            line = self.pending + piece
            if line.endswith(("\n", "\r")):
                self.pending = ""
                self._line(line)
            elif self.in_traceback or any(h.startswith(line) or line.startswith(h) for h in self.HELD):
                self.pending = line  # may be held: wait for the end of the line
            else:
                self.pending, self.passing = "", True
                self._print(line)

    def close(self) -> None:
        if self.pending:
            self._line(self.pending)
            self.pending = ""

    def _line(self, line: str) -> None:
        text = line.rstrip("\r\n")
        if line.startswith("Traceback (most recent call last):"):
            self.in_traceback = True
        if line.startswith("ERROR: "):  # DVC: "failed to run: taskprune stage NAME, exited with N"
            found = re.search(r"exited with (-?\d+)", line)
            self.code = int(found.group(1)) if found else self.code
        elif line.startswith("error: "):
            self.message = text.removeprefix("error: ").strip()
        elif self.in_traceback and text and not text[0].isspace() and not text.startswith(self.NOT_THE_MESSAGE):
            self.last_exception_line = text.strip()  # e.g. "RuntimeError: ...": the last one is what was raised
        if self.in_traceback or line.startswith(("error: ", "ERROR: ")):
            if text.strip():
                self.log.info(text)
            return
        self._print(line)

    def _print(self, text: str) -> None:
        self.console.write(text)
        self.console.flush()

    def failure(self, stage: str, returncode: int) -> StageFailed:
        code = self.code if self.code is not None else returncode
        message = self.message or self.last_exception_line or (
            f"killed by signal {-code}" + (" (out of memory?)" if code == -9 else "") if code < 0
            else f"exited with {code} without a message")
        return StageFailed(stage, message, code)


def stage_log() -> logging.Logger:
    """A logger whose records go only to the Prefect API, into the current task run's log (the console already
    shows the stage's output as it comes)."""
    from prefect.logging.handlers import APILogHandler

    logger = logging.getLogger("taskprune.stage")
    if not any(isinstance(handler, APILogHandler) for handler in logger.handlers):
        logger.addHandler(APILogHandler())
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


def dvc_environment() -> dict[str, str]:
    """DVC runs `taskprune stage ...`: make this interpreter's scripts directory come first on PATH."""
    environment = dict(os.environ)
    environment["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{environment.get('PATH', '')}"
    return environment


@task(name="validate-inputs", task_run_name="validate inputs")
def validate_inputs(project_root: str, overrides: list[str], services: bool = True) -> None:
    """Check params, task rows, the model and (``services``) the servers before anything runs; only then
    write the overrides into params.yaml (as `dvc exp run -S` does)."""
    project = Project(Path(project_root))
    preflight(project, overrides, services)
    config.write_overrides(project.params_file, overrides)


@task(name="task-source-changed", task_run_name="check the task file")
def task_source_changed(project_root: str) -> bool:
    """True when the task file's content differs from what prepare_data last read (DVC only sees params)."""
    project = Project(Path(project_root))
    params = config.load(project.params_file)
    recorded = recorded_fingerprint(project)
    return recorded is not None and recorded != source_fingerprint(params, project)


@task(name="stage", task_run_name="{stage}")
def run_stage(stage: str, project_root: str, force: bool = False):
    """`dvc repro --single-item STAGE`; returns "ran", or a Completed state named Skipped with the result
    "skipped" when DVC found it up to date (the UI shows which stages did work). Output streams to the console."""
    from prefect.states import Completed

    command = [sys.executable, "-m", "dvc", "repro", "--single-item", *(["--force"] if force else []), stage]
    process = subprocess.Popen(command, cwd=project_root, env=dvc_environment(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, bufsize=1)
    skipped, log = False, stage_log()
    errors = StageStderr(sys.stderr, log)
    context = contextvars.copy_context()  # the task run's: what the pump logs goes into its log
    pump = threading.Thread(target=context.run, args=(_pump, process.stderr.buffer, errors), daemon=True)
    pump.start()
    blank = True  # at most one empty line in a row on the console (DVC's hints leave several behind)
    for line in process.stdout:
        if line.strip():
            log.info(line.rstrip())  # the stage's and DVC's output in the Prefect UI
        if not any(hint in line for hint in DVC_HINTS) and not (blank and not line.strip()):
            sys.stdout.write(line)
            sys.stdout.flush()
            blank = not line.strip()
        skipped = skipped or SKIPPED_MARK in line
    process.wait()
    pump.join()
    if process.returncode != 0:
        raise errors.failure(stage, process.returncode)
    if skipped:
        return Completed(name="Skipped", message="up to date: DVC skipped it", data="skipped")
    return "ran"


def _pump(stream, errors: StageStderr) -> None:
    """Hand the byte stream to ``errors`` as it comes (whatever is there: progress bars redraw without newlines)."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    while chunk := stream.read1(65536):
        errors.feed(decoder.decode(chunk))
    errors.feed(decoder.decode(b"", final=True))
    errors.close()


@task(name="pipeline-changes")
def pipeline_changes(project_root: str) -> list[str]:
    """What a run would redo: the stages `dvc status` reports changed, plus the task file when its
    content changed since prepare_data read it. Empty: nothing to do."""
    project = Project(Path(project_root))
    bookkeeping = [entry.name for entry in STAGES if entry.always_run]
    for name in bookkeeping:  # the code version files, so DVC sees a changed TaskPrune
        run_stage_here(name, config.load(project.params_file), project)
    command = [sys.executable, "-m", "dvc", "status", "--json"]
    done = subprocess.run(command, cwd=project_root, env=dvc_environment(), capture_output=True, text=True)
    if done.returncode != 0:
        raise TaskPruneError(f"dvc status failed in {project_root}: {done.stderr.strip()[-2000:]}")
    changed = sorted(set(json.loads(done.stdout or "{}")) - set(bookkeeping))
    if task_source_changed.fn(project_root):
        changed.append("task data")
    return changed


@task(name="promote", task_run_name="promote the challenger")  # MLflow's client retries; no second layer here
def promote_challenger(project_root: str) -> str:
    """Apply the promotion rule to the newest challenger; returns the decision as a line."""
    from prefect_tasks.locks import promotion_lock
    from taskprune.promotion import project_registry, promote, promotion_line

    project = Project(Path(project_root))
    params = config.load(project.params_file)
    if project.registration.is_file() and read_json(project.registration).get("version", "") is None:
        line = "promotion: nothing to promote (this run registered no model: none was within the accuracy budget)"
        print(line)
        return line
    client, name = project_registry(project, params)
    version, decision = promote(client, name, None, params.promote, project.state / "locks",
                                shared_lock=promotion_lock(name))
    line = f"promotion: {promotion_line(client, name, version, decision)}"
    print(line)
    return line
