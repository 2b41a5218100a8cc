"""Promotion rule truth table, alias moves with reasons, dry runs, and two promotions at once."""

import threading

import pytest

from taskprune.config import PromoteConfig
from taskprune.errors import TaskPruneError
from taskprune.promotion import CHAMPION, Candidate, decide, list_versions, promote
from taskprune.tracking import CHALLENGER

DENSE_ACC, DENSE_SIZE = 0.70, 1000


def cand(version, accuracy, size):
    return Candidate(str(version), accuracy, size, DENSE_ACC, DENSE_SIZE)


RULE = PromoteConfig(max_accuracy_drop=0.1, max_size_fraction=0.6)


@pytest.mark.parametrize("candidate,champion,promoted,reason", [
    (cand(1, 0.59, 500), None, False, "below dense"),               # accuracy floor is 0.60
    (cand(1, 0.60, 500), None, True, "no champion yet"),             # exactly at the floor passes
    (cand(1, 0.65, 601), None, False, "max_size_fraction"),          # size cap 600
    (cand(2, 0.66, 500), cand(1, 0.65, 500), True, "higher accuracy"),
    (cand(2, 0.66, 501), cand(1, 0.65, 500), False, "not better"),   # more accurate but larger
    (cand(2, 0.65, 450), cand(1, 0.65, 500), True, "smaller"),
    (cand(2, 0.64, 450), cand(1, 0.65, 500), False, "not better"),   # smaller but less accurate
    (cand(2, 0.65, 500), cand(1, 0.65, 500), False, "not better"),   # a tie is not an improvement
    (cand(1, 0.65, 500), cand(1, 0.65, 500), False, "already the champion"),
])
def test_rule_truth_table(candidate, champion, promoted, reason):
    decision = decide(candidate, champion, RULE)
    assert decision.promote is promoted and reason in decision.reason


def test_no_size_limit_when_unset():
    assert decide(cand(1, 0.65, 1000), None, PromoteConfig(max_accuracy_drop=0.1)).promote


@pytest.fixture()
def registry(tmp_path):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    client.create_registered_model("m")

    def add(accuracy, size):
        tags = {"eval.task_accuracy": str(accuracy), "eval.nonzero_params": str(size),
                "dense.task_accuracy": str(DENSE_ACC), "dense.nonzero_params": str(DENSE_SIZE), "method": "wanda"}
        version = client.create_model_version("m", source=str(tmp_path / "model"), tags=tags).version
        client.set_registered_model_alias("m", CHALLENGER, version)
        return str(version)
    return client, add, tmp_path


def test_promote_moves_champion_and_records_why(registry):
    client, add, tmp = registry
    first = add(0.65, 500)
    assert promote(client, "m", None, RULE, tmp / "locks", dry_run=True)[1].promote
    with pytest.raises(Exception):
        client.get_model_version_by_alias("m", CHAMPION)  # the dry run changed nothing
    assert promote(client, "m", None, RULE, tmp / "locks")[1].promote
    assert str(client.get_model_version_by_alias("m", CHAMPION).version) == first
    worse = add(0.62, 500)
    version, decision = promote(client, "m", None, RULE, tmp / "locks")
    assert (version, decision.promote) == (worse, False)
    tags = client.get_model_version("m", worse).tags
    assert tags["promotion.decision"] == "not promoted" and "not better" in tags["promotion.reason"]
    assert str(client.get_model_version_by_alias("m", CHAMPION).version) == first  # stays registered, not champion
    rows = list_versions(client, "m")
    assert [r["version"] for r in rows] == [worse, first] and CHAMPION in rows[1]["aliases"]


def test_two_promotions_at_once_leave_the_better_champion(registry):
    client, add, tmp = registry
    good, better = add(0.65, 500), add(0.68, 500)
    errors = []

    def run(version):
        try:
            promote(client, "m", version, RULE, tmp / "locks")
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(v,)) for v in (better, good)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    # whatever the order: `better` wins (if `good` went second it lost to `better`; if first, `better` beat it)
    assert str(client.get_model_version_by_alias("m", CHAMPION).version) == better
    assert sum(1 for r in list_versions(client, "m") if CHAMPION in r["aliases"]) == 1


def test_a_version_without_taskprune_tags_is_refused(registry):
    client, _add, tmp = registry
    version = client.create_model_version("m", source=str(tmp / "x")).version
    with pytest.raises(TaskPruneError, match="no tag"):
        promote(client, "m", str(version), RULE, tmp / "locks")
