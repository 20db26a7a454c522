"""The make-like build loop: sync inputs, plan shards, submit within budget, poll, collect, retry.

Money rules, in the order they are applied:
1. The intent to upload or create is written to the store before the API call; a shard found
   in `submitting` on the next run is reconciled against `batches.list` (metadata carries the
   project and shard id) before anything is created again.
2. `batches.create` is never retried by the SDK (see remote.py); an ambiguous failure is
   resolved the same way, by listing.
3. A final result is never overwritten, and a request that has one is never packed again.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gptbatch import pricing, tokens, usage
from gptbatch.canonical import (
    atomic_writer,
    canonical_json,
    content_hash,
    file_sha256,
    sha256_hex,
)
from gptbatch.crash import crashpoint
from gptbatch.errors import (
    EXIT_FAILED_REQUESTS,
    EXIT_OK,
    EXIT_PENDING,
    InputChangedError,
    InputError,
    NotFoundError,
    Problem,
    StateError,
    TransientRemoteError,
)
from gptbatch.lock import BuildLock
from gptbatch.outputs import OutputSummary, output_paths, write_outputs
from gptbatch.pricing import usd
from gptbatch.remote import BatchInfo, Remote
from gptbatch.report import Reporter
from gptbatch.requests import read_raw_line, read_requests
from gptbatch.shards import EMBEDDING_MAX_INPUTS, Caps, Item, Packer, embedding_inputs, shard_key
from gptbatch.spec import Spec, config_fingerprint, keys_config_changed
from gptbatch.store import IN_FLIGHT_SHARD_STATES, RequestRow, ShardRow, Store, state_dir
from gptbatch.usage import Usage

META_PROJECT = "gptbatch_project"
META_SHARD = "gptbatch_shard"
META_SUBMIT = "gptbatch_submit"
# A sample of the members' content keys (16 hex digits each), so a build that lost its state
# can recognise its own work at the API even when the project id changed (renamed config,
# moved checkout), and never download another project's files to find out.
META_KEYS = "gptbatch_keys"
KEY_SAMPLE = 28  # 28 * 17 - 1 = 475 characters, under the API's 512 per value
REFUSAL_CODES = ("token_limit_exceeded", "request_limit_exceeded")
RETRYABLE_ERROR_CODES = ("batch_expired", "batch_cancelled", "server_error", "rate_limit_exceeded")
RECONCILE_DAYS = 30  # batch files expire after 30 days: older batches cannot be collected


@dataclass
class BuildSummary:
    """What a build run did and what is left."""

    total: int = 0
    ok: int = 0
    failed: int = 0
    pending: int = 0
    submitted: int = 0
    adopted: int = 0
    refusals: int = 0
    cost_committed: float | None = 0.0  # None: a model without a known price
    stopped_by_cost: str | None = None
    usage_run: Usage = field(default_factory=Usage)  # results collected by this run
    usage_total: Usage = field(default_factory=Usage)  # every result of the project
    seconds: float = 0.0
    outputs: list[OutputSummary] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        if self.pending:
            return EXIT_PENDING
        return EXIT_FAILED_REQUESTS if self.failed else EXIT_OK


def _stated_limit(message: str | None, unit: str) -> int | None:
    """The limit a refusal names: "... Limit: 90,000 enqueued tokens. ..." -> 90000."""
    match = re.search(rf"Limit: ([\d,]+) enqueued {unit}", message or "")
    return int(match.group(1).replace(",", "")) if match else None


class Budget:
    """Working queue budgets per model: lowered on refusals, raised on success.

    The token budget starts at limits.enqueued_tokens * (1 - safety_margin); with no
    configured limit it is learned from the first refusal. The request budget is the
    configured limits.enqueued_requests, lowered to any limit a refusal states.
    """

    def __init__(self, spec: Spec, store: Store) -> None:
        self.spec = spec
        self.store = store

    def nominal(self, model: str | None) -> int | None:
        limit = self.spec.limits.token_limit(model or "")
        if limit is None:
            return None
        return max(1, int(limit * (1 - self.spec.limits.safety_margin)))

    def _smallest(self, configured: int | None, meta_key: str) -> int | None:
        stated = self.store.get_meta(meta_key)
        known = [x for x in (configured, int(stated) if stated else None) if x is not None]
        return min(known) if known else None

    def hard_limit(self, model: str | None) -> int | None:
        """The most tokens one batch may ever hold: configured or stated by the API."""
        return self._smallest(self.spec.limits.token_limit(model or ""), f"stated:{model}")

    def requests(self, model: str | None) -> int | None:
        """The enqueued-request budget: configured, or lower if the API said so."""
        return self._smallest(self.spec.limits.request_limit(model or ""), f"requests:{model}")

    def working(self, model: str | None) -> int | None:
        nominal = self.nominal(model)
        saved = self.store.get_meta(f"budget:{model}")
        if nominal is None:
            return int(saved) if saved else None
        return min(nominal, int(saved)) if saved else nominal

    def lower(
        self, model: str | None, message: str | None, submitted_at: float, shard_tokens: int
    ) -> tuple[int | None, int] | None:
        """After a refusal: shrink to 3/4, or at once below the limit the API names.

        A batch submitted before the last lowering was sized for the old budget: its
        refusal says nothing new, so it does not lower the budget again.
        """
        stated_requests = _stated_limit(message, "requests")
        if stated_requests is not None:
            self.store.set_meta(f"requests:{model}", str(stated_requests))
            return None
        current = self.working(model)
        lowered_at = float(self.store.get_meta(f"budget_lowered_at:{model}") or 0)
        if submitted_at < lowered_at:
            return None
        self.store.set_meta(f"budget_lowered_at:{model}", str(time.time()))
        new = max(1, int((current if current is not None else shard_tokens) * 0.75))
        stated = _stated_limit(message, "tokens")
        if stated is not None:
            self.store.set_meta(f"stated:{model}", str(stated))
            new = max(1, min(new, int(stated * (1 - self.spec.limits.safety_margin))))
        self.store.set_meta(f"budget:{model}", str(new))
        return current, new

    def raise_(self, model: str | None) -> tuple[int, int] | None:
        """After a batch completes: grow back by a tenth, up to the nominal budget."""
        nominal, current = self.nominal(model), self.working(model)
        if current is None or (nominal is not None and current >= nominal):
            return None
        new = current + max(1, (nominal or current) // 10)
        hard = self.hard_limit(model)
        ceiling = [
            x for x in (nominal, hard and int(hard * (1 - self.spec.limits.safety_margin))) if x
        ]
        if ceiling:
            new = min(new, *ceiling)
        if new <= current:
            return None
        self.store.set_meta(f"budget:{model}", str(new))
        return current, new


def run_build(
    spec: Spec, remote: Remote, reporter: Reporter, *, wait: bool = True, keep_going: bool = False
) -> BuildSummary:
    """Lock the output directory, open its state and build; bad input leaves no trace.

    A first build rejected for bad input removes the state (and output directory) it
    created, so the project looks exactly as before; an existing state is only ever
    changed in transactions that bad input rolls back.
    """
    output_paths(spec.inputs, spec.output_dir)  # refuse clobbering an input before any write
    directory = state_dir(spec.output_dir)
    had_output, had_state = spec.output_dir.exists(), directory.exists()
    started = time.monotonic()
    with BuildLock(spec.output_dir, directory):
        store = Store(directory)
        try:
            before = usage.account(store, spec.prices)
            summary = Builder(spec, store, remote, reporter, keep_going=keep_going).run(wait=wait)
            summary.usage_total = usage.account(store, spec.prices)
            summary.usage_run = summary.usage_total - before
            summary.seconds = time.monotonic() - started
            reporter.event(
                "usage",
                run=asdict(summary.usage_run),
                total=asdict(summary.usage_total),
                seconds=round(summary.seconds, 3),
            )
            return summary
        except InputError as exc:
            untouched = not store.shards() and not store.batches()
            flying = sum(1 for b in store.batches() if not b.collected)
            if flying:  # this run submitted nothing, but earlier runs did
                exc.problems.append(
                    Problem(
                        "",
                        None,
                        f"this run submitted nothing; {flying} batch(es) submitted earlier keep "
                        "running at the API: fix the input and run `gptbatch build` again to "
                        "collect them",
                    )
                )
                exc.args = (exc.render(),)
            store.close()
            if untouched and not had_state:
                shutil.rmtree(directory, ignore_errors=True)
            if untouched and not had_output:
                with contextlib.suppress(OSError):
                    spec.output_dir.rmdir()
            raise
        finally:
            store.close()


def remove_stale_temp_files(*directories: Path) -> None:
    """Delete temp files that killed runs left (atomic writes name them .NAME.*.tmp)."""
    for directory in directories:
        for path in directory.glob(".*.tmp"):
            with contextlib.suppress(OSError):
                path.unlink()


class Builder:
    """One build of one spec against one remote, reporting to one reporter."""

    def __init__(
        self,
        spec: Spec,
        store: Store,
        remote: Remote,
        reporter: Reporter,
        *,
        sleep: Callable[[float], None] = time.sleep,
        keep_going: bool = False,
    ) -> None:
        self.spec = spec
        self.store = store
        self.remote = remote
        self.report = reporter
        self.sleep = sleep
        self.budget = Budget(spec, store)
        self.summary = BuildSummary()
        self.work_dir = store.directory
        self.dirty = True  # pending requests may need packing
        self.keep_going = keep_going
        self.project_ids = self.remember_project(spec.project)

    def remember_project(self, project: str) -> frozenset[str]:
        """Every project id this state has built under (a config edit can change the default)."""
        known = set(json.loads(self.store.get_meta("projects") or "[]"))
        if project not in known:
            known.add(project)
            with self.store.transaction():
                self.store.set_meta("projects", json.dumps(sorted(known)))
        return frozenset(known)

    # --- the loop ------------------------------------------------------------------------

    def run(self, *, wait: bool = True) -> BuildSummary:
        """Build until everything is done (or, without wait, do one pass)."""
        # Bad input raises here, before anything is submitted or any output rewritten.
        output_paths(self.spec.inputs, self.spec.output_dir)  # refuse clobbering before paying
        # Under the lock nobody else writes here: a temp file is a killed run's leftover.
        remove_stale_temp_files(
            self.spec.output_dir, self.work_dir / "downloads", self.work_dir / "shards"
        )
        sync_inputs(self.spec, self.store, self.report, keep_going=self.keep_going)
        try:
            self.drop_stale_shards()
            reconciled = False
            interval = self.spec.polling.initial_seconds
            while True:
                self.store.check_intact()
                changed = self.poll()
                # Nothing is submitted before the API has been listed once in this run; a
                # build with nothing to submit makes no call for it.
                unlisted = False
                if self.store.has_work_to_submit():
                    reconciled = reconciled or self.reconcile()
                    if reconciled:
                        if self.dirty:
                            self.plan()
                        changed = self.submit() or changed
                    else:
                        unlisted = True  # the API could not be listed: try again, never give up
                active = self.store.shards(
                    ("ready", "uploading", "uploaded", "submitting", "submitted", "waiting")
                )
                if (not active and not unlisted) or not wait:
                    break
                if self.summary.stopped_by_cost and not self.store.shards(IN_FLIGHT_SHARD_STATES):
                    break
                interval = (
                    self.spec.polling.initial_seconds
                    if changed
                    else min(self.spec.polling.max_seconds, interval * self.spec.polling.factor)
                )
                wake = min(
                    [interval]
                    + [max(0.0, s.not_before - time.time()) for s in active if s.state == "waiting"]
                )
                self.sleep(max(wake, 0.01))
        finally:
            self.finish()
        return self.summary

    def finish(self) -> None:
        """Write outputs for everything done so far, and fill the summary."""
        # Rewriting a large output is the slowest part of a no-op build: skip it when
        # neither the results nor the inputs changed since the outputs were written.
        fingerprint = self.store.outputs_fingerprint()
        summaries = write_outputs(
            self.spec, self.store, skip_if=self.store.get_meta("outputs") == fingerprint
        )
        crashpoint("after_outputs")
        with self.store.transaction():
            self.store.set_meta("outputs", fingerprint)
        self.summary.outputs = summaries
        counts = self.store.counts()
        self.summary.total = counts["total"]
        self.summary.ok = counts["ok"]
        self.summary.failed = counts["failed"]
        self.summary.pending = counts["total"] - counts["ok"] - counts["failed"]
        unpriced = self.store.committed_unpriced()
        self.summary.cost_committed = None if unpriced else self.store.committed_cost()
        self.report.event("summary", **self.summary_fields())

    def summary_fields(self) -> dict[str, Any]:
        s = self.summary
        return {
            "total": s.total,
            "ok": s.ok,
            "failed": s.failed,
            "pending": s.pending,
            "submitted": s.submitted,
            "adopted": s.adopted,
            "refusals": s.refusals,
            "cost": None if s.cost_committed is None else round(s.cost_committed, 6),
            "stopped_by_cost": s.stopped_by_cost,
            "outputs": [o.path for o in s.outputs],
        }

    # --- planning ------------------------------------------------------------------------

    def caps(self, model: str | None, url: str) -> Caps:
        limits = self.spec.limits
        # A request count is exact, so the enqueued-request cap needs no safety margin.
        request_limit = self.budget.requests(model)
        return Caps(
            max_tokens=self.budget.working(model),
            max_requests=min(limits.max_requests_per_batch, request_limit or 1 << 62),
            max_bytes=limits.max_bytes_per_batch,
            max_inputs=EMBEDDING_MAX_INPUTS if url == "/v1/embeddings" else None,
        )

    def plan(self) -> int:
        """Pack every pending request into new shards; return how many were made."""
        self.dirty = False
        packers: dict[tuple[str | None, str], Packer] = {}
        buffers: dict[tuple[str | None, str], list[Any]] = {}
        made = 0
        with self.store.transaction():
            for row in self.store.pending_requests():
                group = (row.model, row.url)
                if group not in packers:
                    packers[group] = Packer(self.caps(*group))
                    buffers[group] = []
                if self.oversized(row, packers[group].caps):
                    made += 1
                    continue
                buffers[group].append(row)
                for size in packers[group].add(Item(row.key, row.tokens, row.nbytes, row.inputs)):
                    made += self._add_shard(group, buffers[group][:size])
                    del buffers[group][:size]
            for group, packer in packers.items():
                for size in packer.finish():
                    made += self._add_shard(group, buffers[group][:size])
                    del buffers[group][:size]
        return made

    def oversized(self, row: RequestRow, caps: Caps) -> bool:
        """Handle a request that no shard under the caps can hold: alone, or failed for good."""
        over_tokens = caps.max_tokens is not None and row.tokens > caps.max_tokens
        over_other = row.nbytes > caps.max_bytes or (
            caps.max_inputs is not None and row.inputs > caps.max_inputs
        )
        if not over_tokens and not over_other:
            return False
        hard = self.budget.hard_limit(row.model)
        if over_other or (hard is not None and row.tokens > hard):
            limit = (
                f"{caps.max_bytes:,} bytes / {caps.max_inputs or 0:,} inputs per batch"
                if over_other
                else f"the enqueued-token limit of {hard:,} for {row.model}"
            )
            why = (
                f"{row.path}:{row.line}: request has ~{row.tokens:,} tokens and {row.nbytes:,} "
                f"bytes, more than {limit}: it can never be queued; split it into smaller "
                "requests"
            )
            self.store.record_result(row.key, state="failed", error=why, attempt=False)
            self.report.event("too_large", message=why)
        else:  # only over the (lowered) working budget: it goes alone
            self._add_shard((row.model, row.url), [row])
        return True

    def _add_shard(self, group: tuple[str | None, str], rows: list[Any]) -> int:
        model, url = group
        sid = self.store.new_shard_id(shard_key(model, url, [r.key for r in rows]))
        costs = [r.cost for r in rows]
        self.store.add_shard(
            sid,
            model=model,
            url=url,
            members=[(r.key, r.custom_id) for r in rows],
            tokens=sum(r.tokens for r in rows),
            nbytes=sum(r.nbytes for r in rows),
            cost=None if any(c is None for c in costs) else sum(costs),  # type: ignore[misc]
        )
        self.report.event(
            "planned",
            shard=sid[:12],
            model=model,
            url=url,
            requests=len(rows),
            tokens=sum(r.tokens for r in rows),
        )
        return 1

    def drop_stale_shards(
        self, states: tuple[str, ...] = ("ready", "uploading", "uploaded", "waiting")
    ) -> None:
        """Release unsent shards holding requests that are no longer in the inputs."""
        with self.store.transaction():
            for shard in self.store.shards(states):
                if not all(self.store.is_current(k) for k, _ in self.store.members(shard.id)):
                    self.store.update_shard(shard.id, state="dropped", note="inputs changed")
                    self.dirty = True
                    self.report.event("dropped", shard=shard.id[:12], reason="inputs changed")

    # --- submitting ----------------------------------------------------------------------

    def in_flight(self, model: str | None, exclude: str | None = None) -> tuple[int, int]:
        """(tokens, requests) of this model's shards at the API."""
        shards = [
            s
            for s in self.store.shards(IN_FLIGHT_SHARD_STATES)
            if s.model == model and s.id != exclude
        ]
        return sum(s.tokens for s in shards), sum(s.requests for s in shards)

    def submit(self) -> bool:
        """Submit every shard that fits the queue, the request cap and the spend cap."""
        changed = False
        now = time.time()
        # `submitting` comes first: an earlier run may have created its batch already.
        for shard in self.store.shards(("submitting", "ready", "uploading", "uploaded", "waiting")):
            if shard.not_before > now:
                continue
            try:
                if shard.state == "submitting" and self.resolve_submitting(shard):
                    changed = True
                    continue
                if self.too_big_after_refusal(shard):
                    return True
                if not self.fits_queue(shard) or not self.within_spend_cap(shard):
                    continue
                self.submit_shard(shard)
            except TransientRemoteError as exc:
                self.report.event("api_retry", batch="", error=f"shard {shard.id[:12]}: {exc}")
                with self.store.transaction():
                    self.store.update_shard(shard.id, not_before=time.time() + 1.0)
            changed = True
        return changed

    def resolve_submitting(self, shard: ShardRow) -> bool:
        """A shard whose create may have happened: adopt its batch, or drop it if stale."""
        if self.adopt_existing(shard):
            return True
        if not all(self.store.is_current(k) for k, _ in self.store.members(shard.id)):
            with self.store.transaction():
                self.store.update_shard(shard.id, state="dropped", note="inputs changed")
            self.dirty = True
            self.report.event("dropped", shard=shard.id[:12], reason="inputs changed")
            return True
        return False

    def too_big_after_refusal(self, shard: ShardRow) -> bool:
        """Release a refused shard larger than the lowered budget, so it is repacked smaller."""
        if not shard.refusals or shard.requests < 2:
            return False
        working = self.budget.working(shard.model)
        requests = self.budget.requests(shard.model)
        if (working is None or shard.tokens <= working) and (
            requests is None or shard.requests <= requests
        ):
            return False
        with self.store.transaction():
            self.store.update_shard(shard.id, state="dropped", note="over lowered budget")
        self.report.event(
            "dropped", shard=shard.id[:12], reason="larger than the lowered queue budget"
        )
        self.plan()
        return True

    def fits_queue(self, shard: ShardRow) -> bool:
        """Does the shard fit beside what is in flight? A shard alone always may go."""
        tokens_in, requests_in = self.in_flight(shard.model, exclude=shard.id)
        working = self.budget.working(shard.model)
        if working is not None and tokens_in and tokens_in + shard.tokens > working:
            return False
        limit = self.budget.requests(shard.model)
        return limit is None or not requests_in or requests_in + shard.requests <= limit

    def within_spend_cap(self, shard: ShardRow) -> bool:
        cap = self.spec.limits.max_cost
        if cap is None:
            return True
        committed = self.store.committed_cost(exclude=shard.id)
        cost = self.store.shard_cost(shard.id)  # from current prices, not packing-time ones
        if cost is None:
            reason = (
                f"no price known for model {shard.model!r}, so limits.max_cost cannot be "
                f"checked: add prices.{shard.model} to batch.yaml"
            )
        elif committed + cost > cap:
            reason = (
                f"spend cap reached: {usd(committed)} of {usd(cap)} committed; the next shard "
                f"({shard.requests:,} requests) would cost {usd(cost)}: raise "
                "limits.max_cost to continue"
            )
        else:
            if cost != shard.cost or shard.note:
                with self.store.transaction():
                    self.store.update_shard(shard.id, cost=cost, note=None)
            return True
        with self.store.transaction():
            self.store.update_shard(shard.id, cost=cost, note=reason)
        if self.summary.stopped_by_cost != reason:
            self.summary.stopped_by_cost = reason
            self.report.event("spend_cap", message=reason)
        return False

    def shard_file(self, shard: ShardRow) -> Path:
        """Write (or rewrite) the JSONL file of a shard from the inputs; return its path."""
        path = self.work_dir / "shards" / f"{shard.id}.jsonl"
        with atomic_writer(path, "wb") as out:
            for key, _ in self.store.members(shard.id):
                row = self.store.locate(key)
                if row is None:
                    raise InputChangedError(
                        f"request {key[:12]} of shard {shard.id[:12]} left the inputs while "
                        "gptbatch ran: run `gptbatch build` again"
                    )
                out.write(self.upload_line(row, key) + b"\n")
        return path

    def upload_line(self, row: RequestRow, key: str) -> bytes:
        """The line to upload for a request, checked against its key: the file may have moved."""
        try:
            line = upload_line(read_raw_line(row.path, row.offset, row.length), self.spec)
        except (InputError, ValueError, UnicodeDecodeError, OSError):
            line = b""
        if sha256_hex(line) != key:
            raise InputChangedError(
                f"{row.path}:{row.line}: the file changed while gptbatch ran (this line is "
                "no longer what was read): nothing more was submitted from it; batches already "
                "submitted keep running. Run `gptbatch build` again to pick up the change"
            )
        return line

    def submit_shard(self, shard: ShardRow) -> None:
        """Upload (unless already uploaded) and create the batch, recording intent first."""
        store = self.store
        file_id = shard.file_id
        filename = f"gptbatch-{shard.id[:40]}.jsonl"
        if file_id is None:
            if shard.state == "uploading":  # an earlier run may have uploaded it
                found = self.remote.find_uploads(filename)
                file_id = found[0].id if found else None
            if file_id is None:
                path = self.shard_file(shard)
                crashpoint("after_shard_file")
                with store.transaction():
                    store.update_shard(shard.id, state="uploading")
                crashpoint("before_upload")
                file_id = self.remote.upload(path, filename).id
                crashpoint("after_upload")
            with store.transaction():
                store.update_shard(shard.id, state="uploaded", file_id=file_id)
            crashpoint("after_uploaded_state")
            self.report.event("uploaded", shard=shard.id[:12], file=file_id)
        nonce = uuid.uuid4().hex[:16]
        with store.transaction():
            store.update_shard(shard.id, state="submitting", nonce=nonce)
        crashpoint("before_create")
        metadata = dict(self.spec.metadata)
        metadata.update(
            {
                META_PROJECT: self.spec.project,
                META_SHARD: shard.id,
                META_SUBMIT: nonce,
                META_KEYS: key_sample([k for k, _ in self.store.members(shard.id)]),
            }
        )
        try:
            info = self.remote.create_batch(
                file_id=file_id,
                endpoint=shard.url,
                completion_window=self.spec.completion_window,
                metadata=metadata,
            )
        except TransientRemoteError as exc:
            # The batch may or may not exist: find out before anything is created again.
            self.report.event("create_uncertain", shard=shard.id[:12], error=str(exc))
            if not self.adopt_existing(store.shard(shard.id) or shard):
                with store.transaction():
                    store.update_shard(shard.id, not_before=time.time() + 1.0)
            return
        crashpoint("after_create")
        self.record_submitted(shard.id, info)
        crashpoint("after_submitted_state")
        self.summary.submitted += 1
        self.report.event(
            "submitted",
            shard=shard.id[:12],
            batch=info.id,
            model=shard.model,
            requests=shard.requests,
            tokens=shard.tokens,
        )

    def save_batch(self, shard_id: str, info: BatchInfo) -> None:
        """Record what the API says of a batch (inside the caller's transaction)."""
        self.store.upsert_batch(
            info.id,
            shard=shard_id,
            status=info.status,
            input_file_id=info.input_file_id,
            output_file_id=info.output_file_id,
            error_file_id=info.error_file_id,
            created_at=info.created_at,
            info=info.summary(),
        )

    def record_submitted(self, shard_id: str, info: BatchInfo) -> None:
        known = self.store.batch(info.id)
        if known is not None and (known.shard != shard_id or known.collected):
            # A batch id this state already finished must never stand for new work: its
            # results would be taken as collected and the new batch never polled.
            raise StateError(
                f"the API gave batch id {info.id} to shard {shard_id[:12]}, but this state "
                f"already holds that id for shard {known.shard[:12]} ({known.status}): the "
                f"server reuses ids (is api.base_url a restarted test server?). Point the "
                f"build at the API that made the earlier batches, or move "
                f"{self.store.directory} aside to start over"
            )
        with self.store.transaction():
            self.save_batch(shard_id, info)
            self.store.update_shard(shard_id, state="submitted", batch_id=info.id)

    # --- reconciling with the API ---------------------------------------------------------

    def is_ours(self, info: BatchInfo) -> bool:
        """Did this project make the batch, and does it still hold requests of ours?

        Default project ids are made from batch.yaml's text, so two unrelated projects with
        the same layout can share one; the key sample tells them apart without downloading.
        """
        if not info.metadata.get(META_SHARD):
            return False
        if info.metadata.get(META_PROJECT) not in self.project_ids:
            return False
        sample = info.metadata.get(META_KEYS)
        if sample is None:  # made by a gptbatch that did not sample keys
            return True
        return any(self.store.has_key_prefix(p) for p in sample.split(","))

    def remote_batches(self, since: float | None) -> Iterator[BatchInfo]:
        for info in self.remote.list_batches(since=since):
            if self.is_ours(info):
                yield info

    def adopt_existing(self, shard: ShardRow) -> bool:
        """If a live or finished batch for this shard exists remotely, adopt it.

        The shard id is a hash of its members' content keys: a batch of ours carrying it
        holds exactly this work.
        """
        since = (shard.updated_at or time.time()) - 2 * 86400
        for info in self.remote_batches(since):
            if info.metadata.get(META_SHARD) != shard.id or self._refused(info):
                continue
            if self.store.batch(info.id) is not None:  # known already: not a new creation
                continue
            if info.status == "failed" and not info.errors:
                continue
            self.record_submitted(shard.id, info)
            self.summary.adopted += 1
            self.report.event("adopted", shard=shard.id[:12], batch=info.id, status=info.status)
            return True
        return False

    def reconcile(self) -> bool:
        """Match local state to the API before submitting: adopt batches we lost track of.

        Lists batches created since the last reconcile (minus a margin), so a stale or
        deleted state directory, or a run killed mid-submission, never leads to a second
        batch for work already at the API. False if the API could not be listed.
        """
        last = self.store.get_meta("reconciled")
        since = (float(last) if last else time.time() - RECONCILE_DAYS * 86400) - 2 * 86400
        started = time.time()
        try:
            found = list(self.remote_batches(since))
            known = {b.id for b in self.store.batches()}
            for info in found:
                if info.id not in known and not self._refused(info):
                    self.adopt(info)
        except TransientRemoteError as exc:
            self.report.event("api_retry", batch="", error=f"reconciling with the API: {exc}")
            return False
        with self.store.transaction():
            self.store.set_meta("reconciled", str(started))
        self.dirty = True
        # What was not adopted never reached the API: drop it now if its inputs changed,
        # before the edited requests are packed.
        self.drop_stale_shards(("submitting",))
        return True

    def adopt(self, info: BatchInfo) -> None:
        """Take a remote batch of this project that the local state does not know."""
        sid = info.metadata.get(META_SHARD)
        if not sid:
            return
        shard = self.store.shard(sid)
        if shard is None:
            if not self.recover_shard(sid, info):
                return
        elif shard.state in ("done", "dropped", "submitted"):
            # Another batch for a shard that has one: collect it too, never resubmit.
            with self.store.transaction():
                self.save_batch(sid, info)
        else:
            self.record_submitted(sid, info)
        self.summary.adopted += 1
        self.report.event("adopted", shard=sid[:12], batch=info.id, status=info.status)

    def recover_shard(self, sid: str, info: BatchInfo) -> bool:
        """Rebuild a lost shard record from its batch's input file."""
        path = self.work_dir / "downloads" / f"{info.input_file_id}.jsonl"
        try:
            self.remote.download(info.input_file_id, path)
        except NotFoundError as exc:  # its input file expired: nothing left to recover
            self.report.event("recover_failed", batch=info.id, error=str(exc))
            return False
        except TransientRemoteError as exc:
            raise TransientRemoteError(
                f"downloading the input file of batch {info.id}: {exc}"
            ) from exc
        members: list[tuple[str, str]] = []
        with open(path, "rb") as f:
            for raw in f:
                if raw.strip():
                    obj = json.loads(raw)
                    members.append((sha256_hex(canonical_json(obj)), str(obj.get("custom_id"))))
        path.unlink(missing_ok=True)
        known = self.store.known_estimates([k for k, _ in members])
        tokens_sum = sum(known[k][0] for k, _ in members if k in known)
        costs = [known[k][3] for k, _ in members if k in known]
        with self.store.transaction():
            self.store.add_shard(
                sid,
                model=None,
                url=info.endpoint,
                members=members,
                tokens=tokens_sum,
                nbytes=0,
                cost=sum(c for c in costs if c is not None),
                state="submitting",
                note="recovered from the API",
            )
            model = (
                self.store.locate(members[0][0]).model
                if members and self.store.locate(members[0][0])
                else None
            )
            self.store.update_shard(sid, model=model)
        self.record_submitted(sid, info)
        return True

    @staticmethod
    def _refused(info: BatchInfo) -> bool:
        return info.status == "failed" and any(e.code in REFUSAL_CODES for e in info.errors)

    # --- polling and collecting -----------------------------------------------------------

    def poll(self) -> bool:
        """Check every batch not yet collected; collect the finished ones."""
        changed = False
        for batch in self.store.batches():
            if batch.collected:
                continue
            try:
                info = self.remote.retrieve(batch.id)
            except TransientRemoteError as exc:
                self.report.event("api_retry", batch=batch.id, error=str(exc))
                continue
            except NotFoundError:
                self.batch_gone(batch.shard, batch.id)
                changed = True
                continue
            if info.status != batch.status:
                changed = True
                self.report.event(
                    "status",
                    batch=batch.id,
                    status=info.status,
                    completed=info.completed,
                    failed=info.failed,
                    total=info.total,
                )
                with self.store.transaction():
                    self.save_batch(batch.shard, info)
            if info.terminal:
                try:
                    self.collect(batch.shard, info)
                except TransientRemoteError as exc:
                    self.report.event("api_retry", batch=batch.id, error=str(exc))
                    continue
                changed = True
        return changed

    def collect(self, shard_id: str, info: BatchInfo) -> None:
        """Record a finished batch's results against its requests, in one transaction."""
        shard = self.store.shard(shard_id)
        assert shard is not None
        if info.status == "failed":
            self.collect_failed(shard, info)
            return
        downloads: list[Path] = []
        gone: list[str] = []
        for file_id in (info.output_file_id, info.error_file_id):
            if file_id:
                path = self.work_dir / "downloads" / f"{file_id}.jsonl"
                try:
                    self.remote.download(file_id, path)
                except NotFoundError:  # deleted or expired: its requests count as missing
                    gone.append(file_id)
                    self.report.event("file_gone", batch=info.id, file=file_id, status=info.status)
                    continue
                downloads.append(path)
        crashpoint("after_download")
        seen: set[str] = set()
        counts = {"ok": 0, "failed": 0, "retry": 0}
        with self.store.transaction():
            for path in downloads:
                with open(path, "rb") as f:
                    for raw in f:
                        if not raw.strip():
                            continue
                        text = raw.decode("utf-8").rstrip("\r\n")
                        obj = json.loads(text)
                        key = self.store.member_key(shard_id, str(obj.get("custom_id")))
                        if key is None or key in seen:
                            continue
                        seen.add(key)
                        state, error = classify(obj)
                        counts[self.record(key, state, text, error, info.id)] += 1
            for key, _ in self.store.members(shard_id):
                if key not in seen:
                    why = f"no result in batch {info.id} ({info.status})"
                    if gone:
                        why += f"; its file {', '.join(gone)} was gone from the API"
                    counts[self.record(key, "retry", None, why, info.id)] += 1
            self.store.mark_collected(info.id)
            if shard.batch_id == info.id or shard.state != "done":
                self.store.update_shard(shard_id, state="done")
        crashpoint("after_collect")
        for path in downloads:
            path.unlink(missing_ok=True)
        if info.status == "completed":
            self.report_budget(shard.model, self.budget.raise_(shard.model), "a batch completed")
        self.dirty = True
        self.report.event("collected", batch=info.id, status=info.status, **counts)

    def report_budget(
        self, model: str | None, change: tuple[int | None, int] | None, reason: str
    ) -> None:
        if change:
            self.report.event("budget", model=model, old=change[0], new=change[1], reason=reason)

    def batch_gone(self, shard_id: str, batch_id: str) -> None:
        """The API no longer knows a batch of ours: its unfinished requests are retried."""
        with self.store.transaction():
            for key, _ in self.store.members(shard_id):
                self.record(key, "retry", None, f"batch {batch_id} no longer exists", batch_id)
            self.store.mark_collected(batch_id)
            shard = self.store.shard(shard_id)
            if shard is not None and shard.batch_id == batch_id:
                self.store.update_shard(shard_id, state="done", note="batch gone at the API")
        self.dirty = True
        self.report.event(
            "api_retry",
            batch=batch_id,
            error="the API no longer knows this batch; its unfinished requests are retried",
        )

    def record(self, key: str, state: str, line: str | None, error: str | None, batch: str) -> str:
        """Record one outcome; a retryable one past the retry limit becomes final."""
        old = self.store.result(key)
        attempts = (old.attempts if old else 0) + 1
        if state == "retry" and attempts > self.spec.retries:
            state = "failed"
            error = f"gave up after {attempts} attempts: {error}"
        row = self.store.record_result(key, state=state, line=line, error=error, batch_id=batch)
        return row.state

    def collect_failed(self, shard: ShardRow, info: BatchInfo) -> None:
        """A failed batch processed nothing: a refusal waits, a validation failure is mapped."""
        store = self.store
        self.dirty = True
        if shard.batch_id != info.id and shard.state != "submitting":
            # An extra batch of a shard that has another (adopted duplicate): nothing to redo.
            with store.transaction():
                store.mark_collected(info.id)
            return
        if self._refused(info):
            change = self.budget.lower(
                shard.model, info.errors[0].message, shard.updated_at or 0.0, shard.tokens
            )
            self.summary.refusals += 1
            delay = min(
                self.spec.polling.max_seconds,
                self.spec.polling.initial_seconds * 2 ** min(shard.refusals, 10),
            )
            with store.transaction():
                store.mark_collected(info.id)
                store.update_shard(
                    shard.id,
                    state="waiting",
                    batch_id=None,
                    refusals=shard.refusals + 1,
                    not_before=time.time() + delay,
                    note=info.errors[0].message,
                )
            self.report.event(
                "refused",
                shard=shard.id[:12],
                batch=info.id,
                code=info.errors[0].code,
                wait=round(delay, 2),
            )
            self.report_budget(shard.model, change, "the API refused work for lack of queue room")
            return
        members = store.members(shard.id)
        problems: list[str] = []
        with store.transaction():
            lined = [e for e in info.errors if e.line]
            for e in lined:
                if 1 <= e.line <= len(members):  # type: ignore[operator]
                    key = members[e.line - 1][0]  # type: ignore[operator]
                    row = store.locate(key)
                    where = f"{row.path}:{row.line}" if row else f"line {e.line} of the shard"
                    msg = f"{where}: rejected by the API: {e.code}: {e.message}"
                    problems.append(msg)
                    store.record_result(key, state="failed", error=msg, batch_id=info.id)
            if not lined:
                msg = "; ".join(f"{e.code}: {e.message}" for e in info.errors) or "batch failed"
                for key, _ in members:
                    self.record(key, "retry", None, f"batch {info.id} failed: {msg}", info.id)
            store.mark_collected(info.id)
            store.update_shard(
                shard.id,
                state="done" if not lined else "dropped",
                note=f"batch failed: {info.errors[0].code if info.errors else ''}",
            )
        self.report.event("batch_failed", batch=info.id, problems=problems[:20])


def key_sample(keys: list[str]) -> str:
    """Up to KEY_SAMPLE evenly spread 16-hex prefixes of keys, comma-separated."""
    step = max(1, -(-len(keys) // KEY_SAMPLE))
    return ",".join(k[:16] for k in keys[::step][:KEY_SAMPLE])


def classify(obj: dict[str, Any]) -> tuple[str, str | None]:
    """Sort one output/error line into ok, failed (final) or retry."""
    response = obj.get("response") or {}
    error = obj.get("error")
    status = response.get("status_code")
    if status == 200 and not error:
        return "ok", None
    if error:
        code = error.get("code") if isinstance(error, dict) else str(error)
        msg = f"{code}: {error.get('message') if isinstance(error, dict) else ''}"
        return ("retry" if code in RETRYABLE_ERROR_CODES or code is None else "failed"), msg
    body = response.get("body") or {}
    err = body.get("error") if isinstance(body, dict) else None
    detail = err.get("message") if isinstance(err, dict) else None
    msg = f"HTTP {status}: {detail or 'no detail'}"
    if status in (408, 409, 429) or (isinstance(status, int) and status >= 500):
        return "retry", msg
    return "failed", msg


def upload_line(raw: bytes, spec: Spec) -> bytes:
    """The canonical line to upload for a raw input line, with the config's defaults applied."""
    obj = json.loads(raw.lstrip(b"\xef\xbb\xbf"))
    if spec.endpoint is not None and "url" not in obj:
        obj["url"] = spec.endpoint
    body = obj.get("body")
    if spec.model is not None and isinstance(body, dict) and "model" not in body:
        body["model"] = spec.model
    return canonical_json({k: obj[k] for k in ("custom_id", "method", "url", "body")})


# --- syncing inputs with the store -----------------------------------------------------------


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
            previous = functools.partial(store.previous_row, before, str(path))
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
        duplicates = store.duplicate_custom_ids()
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
