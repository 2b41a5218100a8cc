"""A new method is one module: a toy method ("keep the first inputs of every row") written as a plug-in
module outside the package, registered, and run end to end through `taskprune run` without touching any
other file; then its code changes, and the next run redoes score onwards and nothing before it."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch

from conftest import make_project, write_general_text
from pipeline_helpers import configure_tiny, taskprune
from taskprune.data import builtin

pytestmark = pytest.mark.slow

TOY = '''
"""Keep the first inputs of every row: a toy method, in one module."""

import torch

from taskprune.methods import register
from taskprune.methods.masking import MaskingMethod


@register
class KeepFirst(MaskingMethod):
    name = "keep_first"
    summary = "keeps the first inputs of every row (a toy)"
    statistics = ()  # no calibration statistics: calibrate has nothing to collect

    def scorer(self, cfg, stats):
        def score(key, weight):
            order = torch.arange(weight.shape[1], dtype=torch.float32)
            return (SIGN * order).expand_as(weight), None, None
        return score


SIGN = -1.0  # lower input index = higher score
'''


def test_a_plugin_method_runs_end_to_end_and_a_code_change_re_runs_score_onwards(tmp_path, tokenizer_dir):
    from conftest import make_tiny_model

    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "keep_first.py").write_text(textwrap.dedent(TOY))
    env = {"PYTHONPATH": str(plugins), "TASKPRUNE_PLUGINS": "keep_first"}
    model = make_tiny_model("llama", tokenizer_dir, tmp_path / "model")
    project = make_project(tmp_path / "project")
    rows = [ex.to_row() for ex in builtin.sentiment(0)[:60]]
    configure_tiny(project, model, rows, write_general_text(tmp_path / "general.txt"))

    listed = taskprune(project, "methods", env=env)
    assert listed.returncode == 0 and "keep_first" in listed.stdout and "sieve" in listed.stdout, listed.stderr
    first = taskprune(project, "run", "-S", "prune.method=keep_first", env=env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "method keep_first needs no calibration statistics" in first.stdout
    metrics = json.loads((project / "metrics.json").read_text())
    assert metrics["method"] == "keep_first" and metrics["pruned"]["sparsity"] == pytest.approx(0.5)
    from taskprune.masks import load_masks

    mask = load_masks(project / "artifacts" / "masks" / "masks.safetensors")["0.mlp.down_proj"]
    half = mask.shape[1] // 2
    assert mask[:, :half].all() and not mask[:, half:].any()  # the first half of the inputs kept
    assert json.loads((project / "artifacts" / "register.json").read_text())["version"] == "1"
    code = json.loads((project / "artifacts" / "code" / "score.json").read_text())
    assert "keep_first" in code["modules"]

    # a new version of the method: keep the last inputs instead
    (plugins / "keep_first.py").write_text(textwrap.dedent(TOY).replace("SIGN = -1.0", "SIGN = 1.0"))
    second = taskprune(project, "run", env=env)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    ran = second.stdout.split("stages run:")[-1].split()
    ran = {name.strip(",") for name in ran}
    assert {"score", "prune", "evaluate", "register"} <= ran, second.stdout[-2000:]
    assert not {"fetch_model", "prepare_data", "calibrate", "evaluate_dense"} & ran, second.stdout[-2000:]
    mask = load_masks(project / "artifacts" / "masks" / "masks.safetensors")["0.mlp.down_proj"]
    assert mask[:, half:].all() and not mask[:, :half].any()
    assert json.loads((project / "artifacts" / "register.json").read_text())["version"] == "2"
    assert torch.is_tensor(mask)
