"""Syncing the store with the inputs: read only changed files, key every request, refuse bad input.

Also the one place that turns an input line into the exact line uploaded (`upload_line`),
so its sha256 is the request's content key.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from gptbatch import pricing
from gptbatch.canonical import canonical_json, content_hash, file_sha256
from gptbatch.errors import InputError, Problem
from gptbatch.report import Reporter
from gptbatch.requests import read_requests
from gptbatch.scheduler import Budget
from gptbatch.shards import embedding_inputs
from gptbatch.spec import Spec, config_fingerprint, keys_config_changed
from gptbatch.store import RequestRow, Store


def upload_line(raw: bytes, spec: Spec) -> bytes:
    """The canonical line to upload for a raw input line, with the config's defaults applied."""
    obj = json.loads(raw.lstrip(b"\xef\xbb\xbf"))
    if spec.endpoint is not None and "url" not in obj:
        obj["url"] = spec.endpoint
    body = obj.get("body")
    if spec.model is not None and isinstance(body, dict) and "model" not in body:
        body["model"] = spec.model
    return canonical_json({k: obj[k] for k in ("custom_id", "method", "url", "body")})


def _output_bound(body: Any) -> int:
    if not isinstance(body, dict):
        return 0
    for name in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        value = body.get(name)
        if isinstance(value, int):
            return value
    return 0


def sync_inputs(spec: Spec, store: Store, report: Reporter, *, keep_going: bool = False) -> None:
    """Bring the store's view of every input up to date, reading only files that changed.

    All of it is one transaction: bad input (a malformed line, a duplicate custom_id, a
    request no queue can ever hold) raises InputError and leaves the state as it was.
    """
    defaults = config_fingerprint(spec)
    changed: list[tuple[Path, os.stat_result, str]] = []
    for path in spec.inputs:
        st = path.stat()
        record = store.input_record(str(path))
        if (
            record
            and record[0] == st.st_size
            and record[1] == st.st_mtime_ns
            and record[3] == defaults
        ):
            report.event("input", path=str(path), state="unchanged (size and mtime)")
            continue
        digest = file_sha256(path)
        if record and record[2] == digest and record[3] == defaults:
            with store.transaction():
                store.touch_input(str(path), size=st.st_size, mtime_ns=st.st_mtime_ns)
            report.event("input", path=str(path), state="unchanged (content hash)")
            continue
        changed.append((path, st, digest))
    problems: list[Problem] = []
    # Earlier rows are looked up one by one in a snapshot taken before this transaction
    # rewrites them, rather than held in memory for a whole input.
    with store.snapshot() as before, store.transaction():
        gone = store.forget_inputs(str(p) for p in spec.inputs)
        for path in gone:
            report.event("input", path=path, state="removed from batch.yaml")
        for path, st, digest in changed:
            record = store.input_record(str(path))
            config_changed = record is not None and keys_config_changed(record[3], defaults)
            previous = store.previous_rows(before, str(path))
            tally = {"requests": 0, "new": 0}
            try:
                # Streams into the open transaction; a bad line rolls all of it back.
                store.replace_input(
                    str(path),
                    size=st.st_size,
                    mtime_ns=st.st_mtime_ns,
                    sha256=digest,
                    defaults=defaults,
                    rows=_rows(spec, path, previous, config_changed, tally),
                )
            except InputError as exc:
                problems.extend(exc.problems)
                continue
            report.event("input", path=str(path), state="read", **tally)
        duplicates = store.duplicate_custom_ids(str(p) for p, _, _ in changed)
        for cid, pa, la, pb, lb in duplicates:
            problems.append(
                Problem(
                    pb,
                    lb,
                    f"duplicate custom_id {cid!r} (first seen at {pa}:{la})",
                    "custom_ids must be unique across all inputs",
                )
            )
        limits_key = content_hash([spec.limits.enqueued_tokens, store.stated_limits()])
        if changed or store.get_meta("limits_checked") != limits_key:
            problems += unqueueable(spec, store, report, keep_going)
        if problems:
            raise InputError(problems[:50], truncated=max(0, len(problems) - 50))
        store.set_meta("limits_checked", limits_key)


def unqueueable(spec: Spec, store: Store, report: Reporter, keep_going: bool) -> list[Problem]:
    """Requests over their model's enqueued-token limit: no queue can ever hold them.

    Known offline, so the build stops before submitting anything; with keep_going (as
    make -k) they are recorded as failed for good and the rest is built.
    """
    budget = Budget(spec, store)
    problems = []
    for model in store.models():
        limit = budget.hard_limit(model)
        if limit is None:
            continue
        for row in store.requests_over(model, limit):
            problem = Problem(
                row.path,
                row.line,
                f"request {row.custom_id!r} has ~{row.tokens:,} prompt tokens, over the "
                f"enqueued-token limit of {limit:,} for {model}: no batch can ever be queued "
                "with it",
                "split it into smaller requests, or raise limits.enqueued_tokens if your tier "
                "allows more (--keep-going builds the rest and records it as failed)",
            )
            if keep_going:
                store.record_result(row.key, state="failed", error=str(problem), attempt=False)
                report.event("too_large", message=str(problem))
            else:
                problems.append(problem)
    return problems


def _rows(
    spec: Spec,
    path: Path,
    previous: Callable[[str], RequestRow | None],
    config_changed: bool,
    tally: dict[str, int],
) -> Iterator[tuple[Any, ...]]:
    """Store rows for an input's requests, streamed; counts what is new in tally."""
    reqs = read_requests([path], model=spec.model, endpoint=spec.endpoint)
    for ordinal, req in enumerate(reqs):
        before = previous(req.custom_id)
        row = _request_row(spec, ordinal, req, before, config_changed)
        tally["requests"] += 1
        tally["new"] += before is None or before.key != req.key
        yield row


def _request_row(
    spec: Spec, ordinal: int, req: Any, previous: Any, config_changed: bool
) -> tuple[Any, ...]:
    if previous is not None and previous.key == req.key:
        tokens_, nbytes, inputs, reason = (
            previous.tokens,
            previous.nbytes,
            previous.inputs,
            previous.reason,
        )
    else:
        from gptbatch import tokens  # loads encodings: only when a request is new or changed

        estimate = tokens.estimate_request(req.url, req.body)
        tokens_ = estimate.tokens
        nbytes = len(req.canonical_line()) + 1
        inputs = embedding_inputs(req.body) if req.url == "/v1/embeddings" else 1
        reason = "new" if previous is None else "config changed" if config_changed else "changed"
    # Cheap, and always from the current prices, so a price change in batch.yaml applies.
    cost = pricing.estimate_cost(req.model or "", tokens_, _output_bound(req.body), spec.prices)
    return (
        ordinal,
        req.line,
        req.offset,
        req.length,
        req.key,
        req.custom_id,
        req.model,
        req.url,
        tokens_,
        nbytes,
        inputs,
        cost,
        reason,
    )
