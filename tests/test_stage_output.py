"""A stage's stderr on its way to the console: progress bars pass as they come, the stage's error, its
traceback and DVC's failure report go to the log; the failure keeps the stage's own message and exit code."""

import io
import logging

from prefect_tasks.stages import StageStderr

TRACEBACK = """Traceback (most recent call last):
  File "x.py", line 1, in <module>
    main()
KeyError: 'a'

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File "x.py", line 3, in <module>
RuntimeError: CUDA out of memory? no: a model the adapter cannot handle
ERROR: failed to reproduce 'calibrate': failed to run: taskprune stage calibrate, exited with 1
"""


def feed_in_pieces(stderr: StageStderr, text: str, size: int) -> None:
    for start in range(0, len(text), size):
        stderr.feed(text[start:start + size])
    stderr.close()


def captured(text: str, size: int = 7):
    console, records = io.StringIO(), []
    log = logging.getLogger(f"test.stage.{size}")
    log.handlers[:] = []
    log.addHandler(type("Keep", (logging.Handler,), {"emit": lambda self, r: records.append(r.getMessage())})())
    log.setLevel(logging.INFO)
    log.propagate = False
    stderr = StageStderr(console, log)
    feed_in_pieces(stderr, text, size)
    return stderr, console.getvalue(), records


def test_progress_bars_pass_and_the_stage_error_and_dvc_report_are_kept_for_the_end():
    bar = "calibrate:  50%|#####     | 1/2\rcalibrate: 100%|##########| 2/2\n"
    text = bar + "warning: something the user should see\nerror: missing.txt: file not found\n" \
        "ERROR: failed to reproduce 'prepare_data': failed to run: taskprune stage prepare_data, exited with 2\n"
    for size in (1, 5, 4096):  # however the pipe cuts it
        stderr, console, logged = captured(text, size)
        assert console == bar + "warning: something the user should see\n"
        assert stderr.message == "missing.txt: file not found" and stderr.code == 2
        assert any(line.startswith("ERROR: failed to reproduce") for line in logged)
        failure = stderr.failure("prepare_data", 255)
        assert (failure.stage, failure.message, failure.code) == ("prepare_data", "missing.txt: file not found", 2)


def test_a_traceback_goes_to_the_log_and_its_last_exception_is_the_message():
    stderr, console, logged = captured("loading ...\n" + TRACEBACK)
    assert console == "loading ...\n" and "Traceback" not in console
    failure = stderr.failure("calibrate", 255)
    assert failure.message == "RuntimeError: CUDA out of memory? no: a model the adapter cannot handle"
    assert failure.code == 1 and any("KeyError" in line for line in logged)


def test_a_stage_killed_without_a_word_says_by_which_signal():
    stderr, console, _ = captured("ERROR: failed to reproduce 'calibrate': failed to run: taskprune stage "
                                  "calibrate, exited with -9\n")
    assert console == ""
    assert stderr.failure("calibrate", 255).message == "killed by signal 9 (out of memory?)"
