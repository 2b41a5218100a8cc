"""Code versions: which stages a change to TaskPrune's code re-runs (artifacts/code/<stage>.json)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from taskprune.codeversion import CodeGraph, stage_code
from taskprune.config import PruneConfig
from taskprune.pipeline import STAGES

REPO = Path(__file__).resolve().parents[1]


def hashes(package_dir: Path, method: str = "wanda") -> dict[str, str]:
    cfg = PruneConfig(method=method)
    graph = CodeGraph(package_dir)
    return {s.name: stage_code(s, cfg.method_object, cfg, graph)["code"] for s in STAGES if not s.always_run}


@pytest.fixture()
def source_copy(tmp_path) -> Path:
    copy = tmp_path / "taskprune"
    shutil.copytree(REPO / "taskprune", copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, path
    path.write_text(text.replace(old, new, 1))


def changed(before: dict, after: dict) -> set[str]:
    return {stage for stage in before if before[stage] != after[stage]}


def test_a_scoring_change_re_runs_score_onwards_of_the_methods_that_use_it(source_copy):
    before = hashes(source_copy)
    sieve_before = hashes(source_copy, "sieve")
    edit(source_copy / "scoring" / "wanda.py", "return", "return 1.0 *")
    after = hashes(source_copy)
    names = [s.name for s in STAGES]
    assert "score" in changed(before, after)
    # score onwards, and the frontier (target mode scores at every level; off, it writes the same stage.json)
    assert all(names.index(stage) >= names.index("score") for stage in changed(before, after) - {"frontier"})
    assert "evaluate_dense" not in changed(before, after)
    # the stages after score whose own code did not change re-run when the pruned model does (DVC follows outputs)
    assert changed(sieve_before, hashes(source_copy, "sieve")) == set()  # a sieve run does not score with Wanda


def test_a_report_change_re_runs_only_register(source_copy):
    before = hashes(source_copy)
    edit(source_copy / "report.py", '"""The results table', '"""The results table (edited)')
    assert changed(before, hashes(source_copy)) == {"register"}


def test_a_change_to_what_the_method_needs_re_runs_calibration(monkeypatch):
    from taskprune.methods import get_method

    before = hashes(REPO / "taskprune", "magnitude")
    monkeypatch.setattr(type(get_method("magnitude")), "statistics", ("square_sums",))  # the plan now asks for norms
    after = hashes(REPO / "taskprune", "magnitude")
    assert changed(before, after) == {"calibrate"}


def test_a_change_everyone_imports_re_runs_everything(source_copy):
    before = hashes(source_copy)
    edit(source_copy / "paths.py", '"""Where a project', '"""Where (edited) a project')
    assert changed(before, hashes(source_copy)) == set(before)


def test_a_stage_record_names_its_modules():
    record = stage_code(next(s for s in STAGES if s.name == "calibrate"), PruneConfig().method_object, PruneConfig())
    assert "taskprune.stages.calibrate" in record["modules"] and "taskprune.calibration.walk" in record["modules"]
    assert "taskprune.scoring.wanda" not in record["modules"]  # calibration depends on the plan, not the scores
    assert record["statistics"] == ["square_sums"]
