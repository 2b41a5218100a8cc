"""Promotion: move the registry alias ``champion`` to a model version when the rule in params.yaml says so.

The rule (``promote`` in params.yaml), for a candidate version against the dense
model it came from and the current champion:

1. task accuracy >= dense accuracy - ``max_accuracy_drop``;
2. size (non-zero parameters) <= ``max_size_fraction`` x the dense model's (when set);
3. no champion yet, or better than it: higher accuracy at no larger size, or a
   smaller size at no lower accuracy.

A version that passes gets the alias ``champion``; every decision is written to the
version's tags (``promotion.decision``, ``promotion.reason``, ``promotion.at``).
Deciding and moving the alias happen under a file lock per registered model, so two
promotions started at once on one machine are applied one after the other; the caller may
add a lock that machines share (``prefect_tasks.locks``: a Prefect global concurrency limit),
held inside it, so promotions from several hosts into one registry are serialised too.
"""

from __future__ import annotations

import datetime as dt
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from taskprune.config import PromoteConfig
from taskprune.errors import TaskPruneError
from taskprune.tracking import CHALLENGER

CHAMPION = "champion"


@dataclass(frozen=True)
class Candidate:
    version: str
    accuracy: float
    size: int                    # non-zero parameters
    dense_accuracy: float
    dense_size: int


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def decide(candidate: Candidate, champion: Candidate | None, rule: PromoteConfig) -> Decision:
    """The promotion rule as a pure function (see the module docstring)."""
    floor = candidate.dense_accuracy - rule.max_accuracy_drop
    if candidate.accuracy < floor:
        return Decision(False, f"accuracy {candidate.accuracy:.4f} below dense {candidate.dense_accuracy:.4f} "
                               f"- max_accuracy_drop {rule.max_accuracy_drop:g} = {floor:.4f}")
    if rule.max_size_fraction is not None and candidate.size > rule.max_size_fraction * candidate.dense_size:
        return Decision(False, f"size {candidate.size:,} non-zero parameters above max_size_fraction "
                               f"{rule.max_size_fraction:g} x dense {candidate.dense_size:,}")
    if champion is None:
        return Decision(True, "passes the rule; there is no champion yet")
    if champion.version == candidate.version:
        return Decision(False, f"version {candidate.version} is already the champion")
    better_accuracy = candidate.accuracy > champion.accuracy and candidate.size <= champion.size
    smaller = candidate.size < champion.size and candidate.accuracy >= champion.accuracy
    if better_accuracy or smaller:
        why = "higher accuracy at no larger size" if better_accuracy else "smaller at no lower accuracy"
        return Decision(True, f"{why} than champion version {champion.version} "
                              f"({champion.accuracy:.4f}, {champion.size:,})")
    return Decision(False, f"not better than champion version {champion.version} "
                           f"(accuracy {champion.accuracy:.4f}, size {champion.size:,})")


def candidate_from_tags(version: str, tags: dict[str, str]) -> Candidate:
    try:
        return Candidate(version, float(tags["eval.task_accuracy"]), int(tags["eval.nonzero_params"]),
                         float(tags["dense.task_accuracy"]), int(tags["dense.nonzero_params"]))
    except KeyError as missing:
        raise TaskPruneError(f"model version {version} has no tag {missing}: it was not registered by "
                             "TaskPrune's register stage") from None


def promote(client, name: str, version: str | None, rule: PromoteConfig, lock_dir: Path,
            dry_run: bool = False, shared_lock: AbstractContextManager | None = None) -> tuple[str, Decision]:
    """Apply the rule to ``version`` (default: the ``challenger``); returns (version, decision). The
    champion is read, the rule applied and the alias moved while both locks are held."""
    from filelock import FileLock
    from mlflow.exceptions import MlflowException

    lock_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock_dir / f"promote-{name}.lock")), shared_lock or nullcontext():
        try:
            if version is None:
                version = str(client.get_model_version_by_alias(name, CHALLENGER).version)
            candidate = candidate_from_tags(version, client.get_model_version(name, version).tags)
        except MlflowException as exc:
            raise TaskPruneError(f"registered model {name!r}: {exc.message}") from None
        try:
            current = client.get_model_version_by_alias(name, CHAMPION)
            champion = candidate_from_tags(str(current.version), current.tags)
        except MlflowException:
            champion = None
        decision = decide(candidate, champion, rule)
        if not dry_run and not (champion and champion.version == version):  # nothing to record twice
            now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
            for key, value in (("promotion.decision", verdict(decision)),
                               ("promotion.reason", decision.reason), ("promotion.at", now)):
                client.set_model_version_tag(name, version, key, value)
            if decision.promote:
                client.set_registered_model_alias(name, CHAMPION, version)
    return version, decision


def verdict(decision: Decision) -> str:
    """The decision in the one word used everywhere (CLI, Prefect, the version's tag)."""
    return "promoted" if decision.promote else "not promoted"


def promotion_line(client, name: str, version: str, decision: Decision, dry_run: bool = False) -> str:
    """``<model> version N: promoted|not promoted (reason); champion: version M``, as the CLI and the flow say it."""
    from mlflow.exceptions import MlflowException

    try:
        champion = f"version {client.get_model_version_by_alias(name, CHAMPION).version}"
    except MlflowException:
        champion = "none"
    return (f"{name} version {version}: {verdict(decision)} ({decision.reason}); {CHAMPION}: {champion}"
            + (" [dry run: nothing changed]" if dry_run else ""))


def list_versions(client, name: str) -> list[dict]:
    """Registered versions, newest first, with accuracy, size, method and aliases."""
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(name)
    except MlflowException:
        raise TaskPruneError(f"no registered model {name!r} in the tracking store") from None
    aliases: dict[str, list[str]] = {}
    for alias, version in model.aliases.items():
        aliases.setdefault(str(version), []).append(alias)
    rows = []
    for v in client.search_model_versions(f"name = '{name}'"):
        tags = v.tags
        rows.append({"version": str(v.version), "accuracy": tags.get("eval.task_accuracy"),
                     "nonzero_params": tags.get("eval.nonzero_params"), "method": tags.get("method", ""),
                     "recovered": tags.get("recovered", "") == "true", "parent": tags.get("parent_version", ""),
                     "aliases": ", ".join(sorted(aliases.get(str(v.version), []))),
                     "promotion": tags.get("promotion.decision", "")})
    return sorted(rows, key=lambda r: int(r["version"]), reverse=True)


def project_registry(project, params, name: str | None = None):
    """(MLflow client for the project's tracking store, registered model name: the given one or the project's).
    Says where it is looking first: importing MLflow and opening its store takes seconds."""
    import sys

    from taskprune.paths import read_json
    from taskprune.secrets import redact
    from taskprune.tracking import registered_name, tracking_uri

    if name is None:
        if project.registration.exists():
            name = read_json(project.registration)["registered_model"]
        elif project.metrics.exists():
            name = registered_name(params, read_json(project.metrics)["task"])
        else:
            raise TaskPruneError("no registered model in this project yet: run the pipeline first or pass --name")
    uri = tracking_uri(params, project.state)
    print(f"reading {name} from the MLflow registry at {redact(uri)} ...", file=sys.stderr, flush=True)
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri), name
