"""Target mode: the validation split, the level search, the choice across methods, and a run of the stages on a
tiny model that ends at the chosen point (or registers nothing when no point is within the budget)."""

import json
import sys
from pathlib import Path

import pytest

from conftest import write_general_text
from taskprune import config
from taskprune.data import builtin
from taskprune.data.schema import split
from taskprune.errors import TaskPruneError
from taskprune.target import Point, at_level, choose, judge, search_levels, statistics_needed


def _point(level: float, accuracy: float, **extra) -> Point:
    return Point(method="structured", level=level, validation_accuracy=accuracy, reduction=level,
                 bytes_on_disk=int(1000 * (1 - level)), bytes_fraction=1 - level, speedup=1 + level, **extra)


def test_the_validation_split_is_disjoint_and_leaves_the_old_split_alone_when_off():
    rows = builtin.capital(0)
    calib, validation, test = split(rows, 0.3, 0, 0.2)
    groups = [{ex.group or ex.id for ex in part} for part in (calib, validation, test)]
    assert not (groups[0] & groups[1]) and not (groups[0] & groups[2]) and not (groups[1] & groups[2])
    assert len(calib) + len(validation) + len(test) == len(rows)
    assert len(groups[1]) == round(len({ex.group or ex.id for ex in rows}) * 0.2)
    old_calib, none, old_test = split(rows, 0.3, 0)
    assert none == [] and old_calib == calib  # calibration rows do not move when validation is carved
    assert {ex.id for ex in old_test} == {ex.id for ex in validation + test}
    with pytest.raises(TaskPruneError, match="calibration, validation and test"):
        split(rows[:3], 0.3, 0, 0.4)


def test_target_settings_are_checked():
    with pytest.raises(TaskPruneError, match="task.validation_fraction"):
        config.validate({"target": {"max_accuracy_drop": 0.05}}, "params.yaml")
    with pytest.raises(TaskPruneError, match="none is in target.methods"):
        config.validate({"target": {"max_accuracy_drop": 0.05, "methods": ["structured"]},
                         "task": {"validation_fraction": 0.2}, "prune": {"allocation": "search"}}, "params.yaml")
    with pytest.raises(TaskPruneError, match="leave search.max_accuracy_drop empty"):
        config.validate({"target": {"max_accuracy_drop": 0.05}, "task": {"validation_fraction": 0.2},
                         "prune": {"allocation": "search"},
                         "search": {"objective": "pareto", "max_accuracy_drop": 0.1}}, "params.yaml")
    searched = config.validate({"target": {"max_accuracy_drop": 0.05}, "task": {"validation_fraction": 0.2},
                                "prune": {"allocation": "search"}}, "params.yaml")
    assert at_level(searched, "sieve", 0.3).prune.allocation == "search"  # the genetic search at every level
    assert at_level(searched, "structured", 0.3).prune.allocation == "uniform"  # nothing per matrix to search
    with pytest.raises(TaskPruneError, match=r"target.methods: .*unknown method"):
        config.validate({"target": {"methods": ["nope"]}}, "params.yaml")
    with pytest.raises(TaskPruneError, match="less than 10 %"):
        config.validate({"task": {"calib_fraction": 0.7, "validation_fraction": 0.25}}, "params.yaml")
    params = config.validate({"target": {"max_accuracy_drop": 0.05, "levels": [0.4, 0.2]},
                              "task": {"validation_fraction": 0.2}}, "params.yaml")
    assert params.target.levels == [0.2, 0.4]
    assert set(statistics_needed(params)) == {"square_sums", "moments", "influence"}  # structured + sieve
    sieve = at_level(params, "sieve", 0.3)
    assert sieve.prune.method == "sieve" and sieve.search.target_reduction == 0.3
    structured = at_level(params, "structured", 0.35)
    assert structured.prune.structured.reduction == 0.35
    assert at_level(params, "wanda", 0.6).prune.sparsity == 0.6


def test_the_level_search_stops_at_the_first_failure_then_bisects():
    params = config.validate({"target": {"max_accuracy_drop": 0.1}, "task": {"validation_fraction": 0.2}}, "p")
    measured = []

    def measure(level):  # accuracy falls linearly: 0.8 at 0, 0.4 at 1; the budget allows 0.72 (level 0.2)
        measured.append(level)
        return judge(_point(level, round(0.8 - 0.4 * level, 6)), params, 0.8)

    points = search_levels(measure, [0.1, 0.3, 0.5, 0.7], refine=2, patience=2)
    assert measured == [0.1, 0.3, 0.5, 0.2, 0.25]  # two outside in a row end the walk: 0.7 is never tried
    assert [p.within for p in points] == [True, False, False, True, False]
    best, inside = choose(points, "parameters")
    assert inside and best.level == 0.2
    assert "validation accuracy 0.700 < 0.720 allowed" in points[-1].reasons[0]

    # one unlucky level does not end the walk: 0.3 fails on a small sample, 0.5 passes, 0.7 and 0.9 fail
    lucky = {0.1: 0.8, 0.3: 0.7, 0.5: 0.78, 0.6: 0.77, 0.7: 0.6, 0.9: 0.5}
    walk = search_levels(lambda level: judge(_point(level, lucky[level]), params, 0.8), [0.1, 0.3, 0.5, 0.7, 0.9],
                         refine=1, patience=2)
    assert [p.level for p in walk] == [0.1, 0.3, 0.5, 0.7, 0.9, 0.6] and choose(walk, "parameters")[0].level == 0.6


def test_the_choice_follows_the_objective_and_says_when_nothing_fits():
    a = _point(0.3, 0.8, within=True)
    b = Point(method="sieve", level=0.4, validation_accuracy=0.79, reduction=0.4, bytes_on_disk=900,
              bytes_fraction=0.9, speedup=0.8, within=True)
    assert choose([a, b], "parameters")[0] is b
    assert choose([a, b], "bytes")[0] is a and choose([a, b], "speed")[0] is a
    closest, inside = choose([_point(0.1, 0.5), _point(0.2, 0.6)], "parameters")
    assert not inside and closest.level == 0.2
    params = config.validate({"target": {"max_accuracy_drop": 0.5, "min_decode_speedup": 1.5,
                                         "max_bytes_fraction": 0.5}, "task": {"validation_fraction": 0.2}}, "p")
    judged = judge(_point(0.3, 0.8), params, 0.8)
    assert not judged.within and len(judged.reasons) == 2  # bytes 0.7x and decode 1.3x break the limits


@pytest.fixture(scope="module")
def target_run(tiny_llama_dir, tmp_path_factory):
    """The stages in pipeline order on a tiny Llama in target mode: structured and sieve (its ranks by the genetic
    search at every level), two grid levels and one bisection step, recovery in the loop; a generous budget so
    some point fits."""
    sys.path.insert(0, str(Path(__file__).parent))
    import behaviour
    from taskprune.paths import Project

    tmp = tmp_path_factory.mktemp("target")
    task = tmp / "task.jsonl"
    task.write_text("".join(json.dumps(ex.to_row()) + "\n" for ex in builtin.sentiment(0)[:80]))
    settings = {"task.validation_fraction": 0.25, "target.max_accuracy_drop": 0.5, "target.levels": [0.2, 0.6],
                "target.refine": 1, "target.decode_rounds": 1, "recover.enabled": True, "recover.steps": 2,
                "recover.batch_size": 4, "recover.train": "full", "prune.structured.refit": False,
                "prune.allocation": "search", "search.population": 4, "search.generations": 2, "search.examples": 8,
                "tracking.uri": f"sqlite:///{tmp / 'mlflow.db'}"}
    behaviour.run_config(tmp, "run", settings, tiny_llama_dir, task, write_general_text(tmp / "general.txt"))
    return Project(tmp / "run")


@pytest.mark.slow
def test_a_target_run_builds_the_chosen_point(target_run):
    project = target_run
    frontier = json.loads((project.frontier / "frontier.json").read_text())
    methods = {p["method"] for p in frontier["points"]}
    assert methods == {"structured", "sieve"} and all(p["recovered"] for p in frontier["points"])
    assert {p["method"]: p["allocation"] for p in frontier["points"]} == {"structured": "uniform", "sieve": "search"}
    choice = frontier["choice"]
    inside = [p for p in frontier["points"] if p["within"]]
    assert choice["within_budget"] == bool(inside)
    if inside:
        assert choice["reduction"] == max(p["reduction"] for p in inside)
    data = json.loads((project.data / "stage.json").read_text())
    assert data["validation_examples"] == frontier["validation_examples"] > 0
    metrics = json.loads(project.metrics.read_text())
    assert metrics["method"].startswith(choice["method"])
    removed = 1 - metrics["pruned"]["decoder_linear_nonzero"] / metrics["dense"]["decoder_linear_nonzero"]
    assert removed == pytest.approx(choice["reduction"], abs=1e-6)  # the model built is the point chosen
    assert metrics["target"]["choice"] == choice and metrics["target"]["dense_validation_accuracy"] > 0
    points = json.loads((project.frontier / "points.json").read_text())  # dvc plots reads this
    assert len(points) == len(frontier["points"]) and {"level", "validation_accuracy"} <= set(points[0])
    from taskprune.results import load_result  # what `taskprune report` and `show` name the run: the chosen point

    named = load_result(config.load(project.params_file), project)["run_name"]
    assert named == f"{choice['method']}-{choice['level']:g}-{metrics['task']}"


@pytest.mark.slow
def test_a_searched_point_is_the_model_the_stages_build_at_its_level(target_run, tmp_path):
    """The frontier's genetic search (in memory, on the held factors) and the search stage's (its workers read the
    factors from disk) choose the same ranks at one level, within that level's budget."""
    import shutil

    from taskprune.frontier import Frontier
    from taskprune.paths import Project
    from taskprune.stages import run_stage

    project = Project(shutil.copytree(target_run.root, tmp_path / "copy", symlinks=True))
    params = config.load(project.params_file)
    point = Frontier(params.model_copy(update={"recover": params.recover.model_copy(update={"enabled": False})}),
                     project).make("sieve", 0.3)
    assert point.allocation == "search" and point.reduction >= 0.3 - 0.01
    run = at_level(params, "sieve", 0.3)
    run.target.max_accuracy_drop = None  # the fixed-level stages at that point
    for name in ("score", "search", "prune"):
        run_stage(name, run, project)
    allocation = json.loads((project.search / "allocation.json").read_text())
    assert allocation["allocation_rule"] == "search" and "history" in allocation
    assert allocation["reduction"] == pytest.approx(point.reduction, abs=1e-6)


@pytest.mark.slow
def test_the_chosen_points_search_and_recovery_are_not_run_again(target_run, tmp_path, capsys):
    """The frontier keeps the genetic search's allocation and the LoRA adapter of each point; the search and
    recover stages of the chosen point reuse them instead of running them again, and nothing is left behind."""
    import shutil

    from taskprune.paths import Project
    from taskprune.pipeline import WORK
    from taskprune.stages import run_stage

    project = Project(shutil.copytree(target_run.root, tmp_path / "copy", symlinks=True))
    config.write_overrides(project.params_file, ["target.methods=[sieve]", "target.levels=[0.2, 0.3]",
                                                 "target.refine=0", "target.decode_rounds=0", "recover.train=lora"])
    for name in WORK[WORK.index("frontier"):WORK.index("recover") + 1]:
        run_stage(name, config.load(project.params_file), project)
    out = capsys.readouterr().out
    assert "search: the frontier searched this point with these settings; its allocation is reused" in out
    assert "recover: the frontier trained this point's adapter with these settings; reusing it" in out
    assert "LoRA recovery" not in out.split("recover: the frontier trained")[1]  # no training after the reuse
    choice = json.loads((project.frontier / "frontier.json").read_text())["choice"]
    allocation = json.loads((project.search / "allocation.json").read_text())
    assert allocation["reduction"] == pytest.approx(choice["reduction"], abs=1e-6) and "history" in allocation
    recovered = json.loads((project.recovered_model / "stage.json").read_text())
    assert recovered["resumed_from"] == recovered["steps"] == 2
    assert not list((project.state / "checkpoints").glob("frontier-*"))  # the other point's were removed


@pytest.mark.slow
def test_the_frontier_is_logged_and_nothing_outside_the_budget_is_registered(target_run):
    from mlflow import MlflowClient

    from taskprune import config as cfg
    from taskprune.stages import run_stage
    from taskprune.tracking import tracking_uri

    project = target_run
    run_stage("register", cfg.load(project.params_file), project)
    registered = json.loads(project.registration.read_text())
    frontier = json.loads((project.frontier / "frontier.json").read_text())
    client = MlflowClient(tracking_uri(cfg.load(project.params_file), project.state))
    children = client.search_runs([registered["experiment_id"]],
                                  f"tags.mlflow.parentRunId = '{registered['run_id']}' and tags.taskprune.frontier = 'true'")
    assert len(children) == len(frontier["points"])
    chosen = [r for r in children if r.data.tags["taskprune.chosen"] == "true"]
    assert len(chosen) == 1 and chosen[0].data.params["method"] == frontier["choice"]["method"]
    assert {"validation_accuracy", "reduction", "bytes_fraction", "within_budget"} <= set(chosen[0].data.metrics)
    artifacts = {a.path for a in client.list_artifacts(registered["run_id"], "plots")}
    assert "plots/frontier.png" in artifacts
    inputs = client.get_run(registered["run_id"]).inputs.dataset_inputs  # the Datasets column
    contexts = {tag.value for d in inputs for tag in d.tags if tag.key == "mlflow.data.context"}
    assert contexts == {"calibration", "validation", "test", "general"}
    experiment = client.get_experiment(registered["experiment_id"])  # opens in MLflow's "Model training" view
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert (registered["version"] is not None) == frontier["choice"]["within_budget"]

    # a speed floor no tiny model reaches: no point fits, the closest is built, nothing is registered
    cfg.write_overrides(project.params_file, ["target.min_decode_speedup=100", "target.levels=[0.2]",
                                              "target.refine=0", "recover.enabled=false"])
    from taskprune.pipeline import WORK
    for name in WORK[WORK.index("frontier"):]:
        run_stage(name, cfg.load(project.params_file), project)
    frontier = json.loads((project.frontier / "frontier.json").read_text())
    assert not frontier["choice"]["within_budget"] and all("decode" in p["reasons"][-1] for p in frontier["points"])
    registered = json.loads(project.registration.read_text())
    assert registered["version"] is None and "accuracy budget" in registered["not_registered"]
    from taskprune.report import target_answer
    assert target_answer(json.loads(project.metrics.read_text())).startswith("no model within 50% of dense accuracy")


def test_a_point_inside_only_by_the_luck_of_the_sample_does_not_pass():
    from taskprune.target import accuracy_bound

    dense = {str(i): int(i < 80) for i in range(100)}                  # 0.80
    agree = dict(dense)
    agree["0"] = 0                                                      # 0.79: one item lost, everything else equal
    noisy = {str(i): int(10 <= i < 89) for i in range(100)}            # 0.79 too: 10 items lost, 9 others gained
    params = config.validate({"target": {"max_accuracy_drop": 0.05}, "task": {"validation_fraction": 0.2}}, "p")
    tight, loose = accuracy_bound(agree, dense, 0.95), accuracy_bound(noisy, dense, 0.95)
    assert loose < 0.76 < tight < 0.79  # same accuracy, different certainty
    assert accuracy_bound(agree, dense, 0.5) == pytest.approx(0.79)
    passed = judge(_point(0.1, 0.79, accuracy_bound=tight), params, 0.8)
    failed = judge(_point(0.1, 0.79, accuracy_bound=loose), params, 0.8)
    assert passed.within and not failed.within
    assert "at 95% confidence, < 0.760 allowed" in failed.reasons[0]


def test_the_frontier_plot_shows_the_bound_each_point_is_judged_by():
    from matplotlib.collections import LineCollection

    from taskprune.tracking.plots import frontier_figure

    points = [{**_point(0.1, 0.76, accuracy_bound=0.71).as_dict(), "within": False},
              {**_point(0.2, 0.70).as_dict(), "within": False}]  # no bound (confidence off): no bar
    frontier = {"dense": {"validation_accuracy": 0.8}, "points": points,
                "budget": {"min_validation_accuracy": 0.76, "max_accuracy_drop": 0.05},
                "choice": {**points[0], "within_budget": False}}
    ax = frontier_figure(frontier, "t").axes[0]
    bars = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert len(bars) == 1 and len(bars[0].get_segments()) == 1
    (start, end), = [segment.tolist() for segment in bars[0].get_segments()]
    assert start == pytest.approx([0.1, 0.71]) and end == pytest.approx([0.1, 0.76])
    assert "lower confidence bound" in [t.get_text() for t in ax.get_legend().get_texts()][1]


def test_the_frontier_keeps_dense_beside_each_point_only_as_a_teacher():
    from taskprune.frontier import Frontier

    def needs(**settings):
        return Frontier.needs_dense(config.Params.model_validate(
            {"task": {"validation_fraction": 0.2},
             "target": {"max_accuracy_drop": 0.05, "decode_rounds": settings.get("rounds", 3)},
             "recover": {"enabled": settings.get("recover", False), "loss": settings.get("loss", "answer")}}))

    assert needs(rounds=0, recover=True, loss="distill") and needs(recover=True, loss="distill")  # the teacher
    assert not needs() and not needs(rounds=0) and not needs(recover=True)  # timing loads each from disk
