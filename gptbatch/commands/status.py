"""What is done, what is pending and why: the answers behind `gptbatch status --explain`."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gptbatch.config.spec import Spec, config_fingerprint, keys_config_changed
from gptbatch.engine.outputs import output_paths, written_as_indexed
from gptbatch.engine.sync import edit_kind, known_chunks
from gptbatch.errors import EXIT_FAILED_REQUESTS, EXIT_OK, EXIT_PENDING
from gptbatch.inputs.chunks import input_digest
from gptbatch.inputs.nested import legacy_keys
from gptbatch.inputs.requests import read_requests
from gptbatch.state.rows import ACTIVE_SHARD_STATES, ResultRow
from gptbatch.state.store import Store


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


@dataclass(frozen=True)
class ProjectStatus:
    """Where a project stands, inputs edited since the last build included."""

    total: int
    ok: int
    failed: int
    in_shards: int
    pending: int  # neither done nor failed for good (in_shards included)
    stale: tuple[tuple[str, str], ...]
    built: bool  # a build state exists
    outputs: tuple[tuple[str, str], ...] = ()  # output files not as last written, with why

    @property
    def exit_code(self) -> int:
        """As `make -q`: 0 up to date, 3 work pending (or an output to write again), 4 up to
        date but some failed for good."""
        if self.pending or self.outputs:
            return EXIT_PENDING
        return EXIT_FAILED_REQUESTS if self.failed else EXIT_OK


def project_status(spec: Spec, store: Store | None) -> ProjectStatus:
    """Count done, failed and pending requests, re-reading inputs edited since the last build.

    Needs no network and no earlier build (store None: nothing is built yet).
    """
    stale = dict(stale_inputs(spec, store)) if store is not None else {}
    ok = failed = total = pending = 0
    for path in spec.inputs:
        if store is not None and str(path) not in stale:
            counts = store.result_counts(str(path))
            ok, failed = ok + counts["ok"], failed + counts["failed"]
            total += counts["ok"] + counts["failed"] + counts["missing"]
            pending += counts["missing"]
            continue
        for req in read_requests([path], model=spec.model, endpoint=spec.endpoint):
            total += 1
            result = store.result(req.key) if store is not None else None
            state = result.state if result is not None else None
            ok += state == "ok"
            failed += state == "failed"
            pending += state not in ("ok", "failed")
    in_shards = store.counts()["in_shards"] if store is not None else 0
    if store is None:
        stale = {str(p): "never built" for p in spec.inputs}
    return ProjectStatus(
        total,
        ok,
        failed,
        min(in_shards, pending),
        pending,
        tuple(stale.items()),
        store is not None,
        tuple(stale_outputs(spec, store)) if store is not None else (),
    )


def stale_outputs(spec: Spec, store: Store) -> list[tuple[str, str]]:
    """Output and errors files that are not as the last build wrote them, with why.

    The next build writes them again; a file never written (no record) is not listed.
    """
    out = []
    for targets in output_paths(spec.inputs, spec.output_dir).values():
        for target in targets:
            if store.output_stat(target.name) is None:
                continue
            why = written_as_indexed(store, target)
            if why is not None:
                out.append((str(target), why))
    return out


def over_limit_anywhere(spec: Spec, store: Store) -> bool:
    """Whether any built request is over its model's configured enqueued-token limit.

    A lowered limit makes requests in unchanged files bad too; status reads only changed
    files, so it asks the state (tokens as estimated when each file was read).
    """
    for model in store.models():
        limit = spec.limits.token_limit(model or "")
        if (
            limit is not None
            and store.db.execute(
                "SELECT 1 FROM requests WHERE model IS ? AND tokens > ? LIMIT 1", (model, limit)
            ).fetchone()
        ):
            return True
    return False


def stale_inputs(spec: Spec, store: Store) -> list[tuple[str, str]]:
    """Inputs that changed (or are new) since the last build, with why; read-only.

    As doit does, (size, mtime) first; only a file whose stat changed is hashed, so a
    touched but unchanged file is not stale.
    """
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
        elif (record[0], record[1]) != (st.st_size, st.st_mtime_ns) and record[2] != input_digest(
            path, known_chunks(store, path)
        )[0]:
            out.append((str(path), "file changed since the last build"))
    return out


def shard_statuses(store: Store) -> list[ShardStatus]:
    """Every active shard with the reason it is not finished."""
    out = []
    forced = store.left_by_forced_run()
    for s in store.shards(ACTIVE_SHARD_STATES):
        batch = store.batch(s.batch_id) if s.batch_id else None
        reason = (
            "packed by a -B or --retry-failed run that stopped before sending it; its "
            "requests keep their results, a plain build drops it, and `gptbatch build -B` "
            "sends it"
            if s.id in forced
            else None
        ) or {
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
        "row changed": "its data row changed since its last result (same id, new content)",
        "template changed": "its target's request template changed since its last result",
        "upstream changed": "its upstream target's answer (or row) changed since its last result",
        "nested rendering changed": "rendering of nested values changed: an object or list "
        "(from its JSONL row, or made by the template) is now placed in the request as "
        "canonical JSON, not Python's repr (see CHANGELOG.md)",
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
        # A request with a final result is up to date: only the open ones can be pending.
        for row, result in store.request_results(str(path), open_only=True):
            why = _reason(result, in_shard.get(row.key), row.reason)
            if why is not None:
                yield PendingReason(row.path, row.line, row.custom_id, why)


def unbuilt_reasons(spec: Spec) -> Iterator[PendingReason]:
    """Before the first build every request is pending: never built."""
    for req in read_requests(spec.inputs, model=spec.model, endpoint=spec.endpoint):
        yield PendingReason(req.path, req.line, req.custom_id, "new request: never built")


def _stale_reasons(
    spec: Spec, store: Store, path: Path, in_shard: dict[str, str], why_stale: str
) -> Iterator[PendingReason]:
    config = why_stale.startswith("model or endpoint")
    edit = edit_kind(spec, store, path)[0]
    legacy: dict[str, str] = {}
    if edit == "row changed":  # or how a nested value in it renders
        target = next(t for t in spec.data_targets if spec.targets.get(t.name) == path)
        legacy = legacy_keys(target, path, spec.model, spec.endpoint)
    for req in read_requests([path], model=spec.model, endpoint=spec.endpoint):
        previous = store.previous_row(store.db, str(path), req.custom_id)
        if previous is None:
            new_reason = "new"
        elif previous.key != req.key and legacy.get(req.custom_id) == previous.key:
            new_reason = "nested rendering changed"
        elif previous.key != req.key:
            new_reason = "config changed" if config else edit
        else:
            new_reason = None
        why = _reason(store.result(req.key), in_shard.get(req.key), new_reason)
        if why is not None:
            yield PendingReason(req.path, req.line, req.custom_id, why)
