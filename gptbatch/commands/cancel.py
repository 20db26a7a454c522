"""Cancelling a project's in-flight batches: the ones the state knows, and the API's by metadata.

A cancelled batch keeps the results it finished. Cancel only records the batch's new status;
the next build polls it, collects what finished, and resubmits the rest, so a cancel never
loses work that was paid for and never makes the next build pay twice.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gptbatch.config.spec import Spec
from gptbatch.engine.batches import META_KEYS, META_PROJECT, META_SHARD, TERMINAL_BATCH_STATUSES
from gptbatch.errors import NotFoundError, RemoteError
from gptbatch.state.lock import BuildLock
from gptbatch.state.store import Store, state_dir

if TYPE_CHECKING:
    from gptbatch.api.remote import BatchInfo, Remote

# A batch not terminal is at most a day old (the 24h window) plus cancelling time.
LIST_WINDOW_SECONDS = 3 * 86400


@dataclass(frozen=True)
class Cancelled:
    """One batch cancel acted on, and the status the API reported after."""

    batch_id: str
    shard: str | None
    status: str
    known: bool  # in this project's state (else found at the API by its metadata)
    note: str = ""


def cancel_in_flight(spec: Spec, remote: Remote) -> list[Cancelled]:
    """Cancel every in-flight batch of this project, under the build lock."""
    directory = state_dir(spec.output_dir)
    with BuildLock(spec.output_dir, directory):
        if not (directory / "state.db").exists():
            return _cancel_listed(spec, remote, None, set())
        store = Store(directory)
        try:
            done = _cancel_known(store, remote)
            return done + _cancel_listed(spec, remote, store, {c.batch_id for c in done})
        finally:
            store.close()


def _cancel_known(store: Store, remote: Remote) -> list[Cancelled]:
    out = []
    for batch in store.batches():
        if batch.collected or batch.status in TERMINAL_BATCH_STATUSES:
            continue
        info = _cancel(remote, batch.id)
        if info is not None:
            with store.transaction():
                store.set_batch_status(batch.id, info.status)
        out.append(_outcome(batch.id, batch.shard, info, known=True))
    return out


def _cancel_listed(
    spec: Spec, remote: Remote, store: Store | None, seen: set[str]
) -> list[Cancelled]:
    projects = {spec.project, *(store.project_ids() if store else ())}
    check_keys = store is not None and store.has_requests()
    out = []
    for info in remote.list_batches(since=time.time() - LIST_WINDOW_SECONDS):
        if info.id in seen or info.status in (*TERMINAL_BATCH_STATUSES, "cancelling"):
            continue
        if not is_ours(info, projects, store if check_keys else None):
            continue
        after = _cancel(remote, info.id)
        out.append(_outcome(info.id, info.metadata.get(META_SHARD), after, known=False))
    return out


def is_ours(info: BatchInfo, projects: Iterable[str], store: Store | None) -> bool:
    """Is a listed batch this project's, by its metadata (and key sample, given a state)?

    Two unrelated checkouts with the same default project id share it; the sample of
    request keys tells them apart, as build's adoption does.
    """
    if not info.metadata.get(META_SHARD) or info.metadata.get(META_PROJECT) not in set(projects):
        return False
    sample = info.metadata.get(META_KEYS)
    if store is None or not sample:
        return True
    return any(store.has_key_prefix(p) for p in sample.split(","))


def _cancel(remote: Remote, batch_id: str) -> BatchInfo | None:
    """Cancel one batch; a batch that already ended is reported as it is, not as an error."""
    try:
        return remote.cancel(batch_id)
    except NotFoundError:
        return None
    except RemoteError:
        info = remote.retrieve(batch_id)  # 409: it ended, or is ending, already
        if info.status in (*TERMINAL_BATCH_STATUSES, "cancelling"):
            return info
        raise


def _outcome(batch_id: str, shard: str | None, info: BatchInfo | None, known: bool) -> Cancelled:
    if info is None:
        note = "the API no longer knows it; the next build retries its requests"
        return Cancelled(batch_id, shard, "gone", known, note)
    if info.status in ("cancelling", "cancelled"):
        note = f"{info.completed} of {info.total} requests had finished; the next build keeps them"
    else:
        note = f"already {info.status}: the next build collects it"
    return Cancelled(batch_id, shard, info.status, known, note)
