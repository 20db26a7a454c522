"""What is done, what is pending and why: the answers behind `gptbatch status --explain`."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gptbatch.requests import read_requests
from gptbatch.spec import Spec, config_fingerprint, keys_config_changed
from gptbatch.store import ACTIVE_SHARD_STATES, ResultRow, Store


@dataclass(frozen=True)
class PendingReason:
    """Why one request is not up to date."""

    path: str
    line: int
    custom_id: str
    reason: str


@dataclass(frozen=True)
class ShardStatus:
    """One shard that is not finished, and why."""

    id: str
    model: str | None
    url: str
    requests: int
    tokens: int
    state: str
    batch_id: str | None
    batch_status: str | None
    reason: str


def stale_inputs(spec: Spec, store: Store) -> list[tuple[str, str]]:
    """Inputs that changed (or are new) since the last build, with why; read-only."""
    defaults = config_fingerprint(spec)
    out = []
    for path in spec.inputs:
        record = store.input_record(str(path))
        if record is None:
            out.append((str(path), "never built"))
            continue
        st = os.stat(path)
        if keys_config_changed(record[3], defaults):
            out.append((str(path), "model or endpoint in batch.yaml changed"))
        elif record[3] != defaults:
            out.append((str(path), "prices in batch.yaml changed"))
        elif (record[0], record[1]) != (st.st_size, st.st_mtime_ns):
            out.append((str(path), "file changed since the last build (size or mtime)"))
    return out


def shard_statuses(store: Store) -> list[ShardStatus]:
    """Every active shard with the reason it is not finished."""
    out = []
    for s in store.shards(ACTIVE_SHARD_STATES):
        batch = store.batch(s.batch_id) if s.batch_id else None
        reason = {
            "ready": s.note or "planned; waiting for queue room (or for the next build)",
            "uploading": "upload started; the next build checks whether it finished",
            "uploaded": s.note or "uploaded; waiting for queue room to create its batch",
            "submitting": "batch creation started; the next build looks it up before creating",
            "submitted": f"batch {s.batch_id} is {batch.status if batch else 'submitted'}",
            "waiting": f"refused {s.refusals} time(s) for lack of queue room ({s.note}); "
            "resubmitted when there is room",
        }[s.state]
        out.append(
            ShardStatus(
                s.id,
                s.model,
                s.url,
                s.requests,
                s.tokens,
                s.state,
                s.batch_id,
                batch.status if batch else None,
                reason,
            )
        )
    return out


def _reason(result: ResultRow | None, shard: str | None, new_reason: str | None) -> str | None:
    """Why a request is pending (None: it is up to date)."""
    if result is not None and result.state in ("ok", "failed"):
        return None
    if result is not None:
        retry = f"attempt {result.attempts} did not succeed ({result.error}); "
        return retry + (f"retrying: {shard}" if shard else "will be retried")
    if shard is not None:
        return shard
    return {
        "new": "new request: never built",
        "changed": "request changed since its last result (same custom_id, new content)",
        "config changed": "model or endpoint in batch.yaml changed",
    }.get(new_reason or "", "no result yet")


def pending_reasons(spec: Spec, store: Store) -> Iterator[PendingReason]:
    """Every current request that is not up to date, in input order, with why.

    Inputs changed since the last build are read (read-only) and compared with the store,
    so an edit shows up before the next build has synced it.
    """
    in_shard: dict[str, str] = {}
    for s in shard_statuses(store):
        for key, _ in store.members(s.id):
            in_shard[key] = f"in shard {s.id[:12]}: {s.reason}"
    stale = dict(stale_inputs(spec, store))
    for path in spec.inputs:
        if str(path) in stale:
            yield from _stale_reasons(spec, store, path, in_shard, stale[str(path)])
            continue
        for row, result in store.request_results(str(path)):
            why = _reason(result, in_shard.get(row.key), row.reason)
            if why is not None:
                yield PendingReason(row.path, row.line, row.custom_id, why)


def _stale_reasons(
    spec: Spec, store: Store, path: Path, in_shard: dict[str, str], why_stale: str
) -> Iterator[PendingReason]:
    config = why_stale.startswith("model or endpoint")
    for req in read_requests([path], model=spec.model, endpoint=spec.endpoint):
        previous = store.previous_row(store.db, str(path), req.custom_id)
        if previous is None:
            new_reason = "new"
        elif previous.key != req.key:
            new_reason = "config changed" if config else "changed"
        else:
            new_reason = None
        why = _reason(store.result(req.key), in_shard.get(req.key), new_reason)
        if why is not None:
            yield PendingReason(req.path, req.line, req.custom_id, why)
