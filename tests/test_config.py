from pathlib import Path

import pytest

from taskprune import config
from taskprune.errors import TaskPruneError

REPO = Path(__file__).resolve().parents[1]


def test_committed_params_are_valid_and_match_defaults():
    params = config.load(REPO / "params.yaml")
    # params.yaml states the defaults, config.py holds them; one difference on purpose: a new project (this file
    # is its template) runs target mode, a params.yaml without these keys keeps the fixed-level mode it was
    # written for (and its calibration/test split)
    assert params.target.max_accuracy_drop == 0.05 and params.task.validation_fraction == 0.2
    fixed = params.model_copy(update={"target": params.target.model_copy(update={"max_accuracy_drop": None}),
                                      "task": params.task.model_copy(update={"validation_fraction": 0.0})})
    assert fixed == config.Params()


def test_unknown_key_is_an_error_naming_it(tmp_path):
    (tmp_path / "params.yaml").write_text("prune:\n  sparsty: 0.5\n")
    with pytest.raises(TaskPruneError, match=r"prune\.sparsty: unknown parameter"):
        config.load(tmp_path / "params.yaml")


@pytest.mark.parametrize("override, message", [
    ("prune.sparsity=1.0", r"prune\.sparsity: Input should be less than 1"),
    ("prune.sparsity=-0.1", r"prune\.sparsity"),
    ("prune.sparsity=abc", r"prune\.sparsity: Input should be a valid number"),
    ("prune.pattern=4:4", r"N:M needs 0 < N < M"),
    ("prune.pattern=5:4", r"N:M needs 0 < N < M"),
    ("prune.pattern=2-4", r"expected 'unstructured' or N:M"),
    ("prune.method=sparsegptx", r"prune\.method"),
    ("calibration.num_samples=0", r"calibration\.num_samples"),
    ("calibration.general.source=file", r"source 'file' needs calibration\.general\.path"),
])
def test_bad_values_name_the_parameter(override, message):
    with pytest.raises(TaskPruneError, match=message):
        config.load(REPO / "params.yaml", [override])


def test_nm_pattern_must_match_sparsity():
    with pytest.raises(TaskPruneError, match=r"2:4 prunes exactly 0.5"):
        config.load(REPO / "params.yaml", ["prune.pattern=2:4", "prune.sparsity=0.6", "target.max_accuracy_drop="])
    params = config.load(REPO / "params.yaml", ["prune.pattern=2:4", "target.max_accuracy_drop="])
    assert params.prune.n_m == (2, 4)
    with pytest.raises(TaskPruneError, match=r"target mode tries method 'structured' .*pattern 'unstructured'"):
        config.load(REPO / "params.yaml", ["prune.pattern=2:4"])  # target mode's structured method refuses N:M


def test_override_syntax_errors():
    with pytest.raises(TaskPruneError, match="expected KEY=VALUE"):
        config.parse_override("prune.sparsity")


def test_write_overrides_keeps_comments_and_fails_before_writing(tmp_path):
    params_file = tmp_path / "params.yaml"
    params_file.write_text((REPO / "params.yaml").read_text())
    before = params_file.read_text()
    with pytest.raises(TaskPruneError):
        config.write_overrides(params_file, ["prune.sparsity=2"])
    assert params_file.read_text() == before
    config.write_overrides(params_file, ["prune.sparsity=0.6", "task.path=data/my.jsonl"])
    text = params_file.read_text()
    assert "sparsity: 0.6" in text and "# TaskPrune parameters" in text and "s3://bucket/key" in text
    assert config.load(params_file).task.path == "data/my.jsonl"


def test_unquoted_nm_pattern_in_params_file_stays_a_string(tmp_path):
    (tmp_path / "params.yaml").write_text("prune:\n  pattern: 2:4\n")
    assert config.load(tmp_path / "params.yaml").prune.n_m == (2, 4)
