"""The lock a promotion holds across machines: a Prefect global concurrency limit of one slot, named after
the registered model, on the Prefect server every worker talks to.

``taskprune.promotion.promote`` decides and moves the alias under a file lock, which serialises promotions
on one machine only: two workers on different hosts promoting into one registry could both read the old
champion and both move ``champion``. With a Prefect server configured (``PREFECT_API_URL``), the decision
also holds this limit's slot, so the rule is re-read by each promotion after the previous one moved the
alias. Without a server (the local, per-project Prefect store) there is no second machine to serialise
against and the file lock is all there is. The slot is a lease: a promotion killed while holding it frees
it when the lease runs out.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

WAIT_SECONDS = 600  # a promotion is a few registry calls; longer means something holds the slot for good


def limit_name(registered_model: str) -> str:
    return f"taskprune-promote-{registered_model}"


def server_configured() -> bool:
    from prefect.settings import get_current_settings

    return bool(get_current_settings().api.url)


@contextmanager
def _global_slot(registered_model: str) -> Iterator[None]:
    from prefect.client.orchestration import get_client
    from prefect.concurrency.sync import concurrency
    from prefect.exceptions import ObjectAlreadyExists

    name = limit_name(registered_model)
    with get_client(sync_client=True) as client:
        try:
            client.upsert_global_concurrency_limit_by_name(name, limit=1)
        except ObjectAlreadyExists:  # another promotion created it between its read and its create
            pass
    with concurrency(name, occupy=1, timeout_seconds=WAIT_SECONDS, strict=True):
        yield


def promotion_lock(registered_model: str):
    """The context manager ``promote`` holds while it decides and moves the alias (see the module docstring)."""
    return _global_slot(registered_model) if server_configured() else nullcontext()
