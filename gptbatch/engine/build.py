"""The make-like build loop: sync inputs, then poll, submit into the room, collect, until done.

The steps live in their own modules; this one only ties them together:
- sync.py: the store's view of the inputs (what is pending, and why)
- scheduler.py: what goes next under the queue budget (pipelined shard sizes)
- budget.py: the queue budgets, learned limits, and what a refusal does
- submit.py: intent -> upload -> create -> record, and adopting batches found at the API
- collect.py: poll (one list pass) -> download -> classify -> record
Scheduler, submit and collect are siblings: none imports another. Submit and collect return
what happened (batches.Outcome); this loop alone decides what follows (pack again, lower or
raise a budget, drop stale shards).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from gptbatch.api.provider import caps_of
from gptbatch.api.remote import BatchInfo, Remote
from gptbatch.canonical import remove_stale_temp_files
from gptbatch.config.spec import Spec
from gptbatch.engine import usage
from gptbatch.engine.batches import Outcome
from gptbatch.engine.budget import Budget, report_budget, take_refusal
from gptbatch.engine.census import Census
from gptbatch.engine.collect import Collector
from gptbatch.engine.crash import crashpoint
from gptbatch.engine.outputs import output_paths, write_outputs
from gptbatch.engine.scheduler import UNSENT_SHARD_STATES, Scheduler
from gptbatch.engine.shard_files import remove_final_shard_files
from gptbatch.engine.submit import Submitter
from gptbatch.engine.summary import BuildSummary
from gptbatch.engine.sync import sync_inputs
from gptbatch.engine.tables import table_inputs, write_tables
from gptbatch.errors import (
    InputError,
    LocalIOError,
    Problem,
    StateError,
    TransientRemoteError,
    UsageError,
)
from gptbatch.inputs.located import relocated
from gptbatch.pricing import unknown_model_hint
from gptbatch.report import Reporter, plural
from gptbatch.state.lock import BuildLock
from gptbatch.state.rows import ACTIVE_SHARD_STATES, IN_FLIGHT_SHARD_STATES, ShardRow
from gptbatch.state.store import Store, state_dir

# A round records finished batches for about this long, then polls and fills the room
# again before recording the rest (collect.Collector.collect_finished).
COLLECT_SLICE_SECONDS = 1.0


def run_build(
    spec: Spec,
    remote: Remote,
    reporter: Reporter,
    *,
    wait: bool = True,
    keep_going: bool = False,
    force: bool = False,
    retry_failed: bool = False,
    only: Sequence[Path] | None = None,
    forced: Sequence[Path] | None = None,
    new_project: bool = False,
    locked: bool = False,
    until: Callable[[], bool] | None = None,
) -> BuildSummary:
    """Lock the output directory, open its state and build; bad input leaves no trace.

    A first build rejected for bad input removes the state (and output directory) it
    created, so the project looks exactly as before; an existing state is only ever
    changed in transactions that bad input rolls back. only: build just these of the
    spec's inputs (`build CONFIG INPUT`); the others stay as they are, not removed.
    forced: the inputs force and retry_failed act on (default: every input built).
    new_project: the user asserts no batch at the API is this project's (engine/nometa.py);
    refused where batches carry metadata (not needed) or the state holds shards or batches.
    locked: the caller holds the output directory's BuildLock (a build in passes, steps.py).
    until: a waiting build also stops (as one pass would) once until() says so.
    """
    declared = spec.inputs
    if only is not None:
        spec = dataclasses.replace(spec, inputs=tuple(only))
    output_paths(spec.inputs, spec.output_dir)  # refuse clobbering an input before any write
    directory = state_dir(spec.output_dir)
    had_output, had_state = spec.output_dir.exists(), directory.exists()
    started = time.monotonic()
    caps = caps_of(remote)
    if new_project and caps.metadata:
        raise UsageError(
            f"--new-project: {caps.name} batches carry this project's tags, so a build never "
            "waits on other projects' batches there: drop the flag"
        )
    with contextlib.nullcontext() if locked else BuildLock(spec.output_dir, directory):
        store = Store(directory)
        try:
            before = usage.account(store, spec.prices)
            if new_project:
                check_new_project(store)
            builder = Builder(
                spec, store, remote, reporter, keep_going=keep_going, declared=declared
            )
            builder.submitter.new_project = new_project
            summary = builder.run(
                wait=wait, force=force, retry_failed=retry_failed, forced=forced, until=until
            )
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
        except (OSError, LocalIOError) as exc:
            # A state directory deleted mid-build first shows as a write that fails (no such
            # file): say what happened, not "check free disk space".
            try:
                store.check_intact()
            except StateError as gone:
                raise gone from exc
            raise
        finally:
            store.close()


def check_new_project(store: Store) -> None:
    """UsageError if the state holds work: its batches must be found, not ignored."""
    shards, batches = len(store.shards()), len(store.batches())
    if shards or batches:
        raise UsageError(
            f"--new-project: the state in {store.directory} already holds "
            f"{plural(shards, 'shard')} and {plural(batches, 'batch')}: this project has "
            "sent work before, and its batches at the API must be found, not ignored; run "
            "`gptbatch build` without --new-project"
        )


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
        declared: Sequence[Path] | None = None,
    ) -> None:
        self.spec = spec
        # Every input of the config; spec.inputs may be a subset this run builds.
        self.declared = tuple(declared) if declared is not None else spec.inputs
        self.subset = set(self.declared) != set(spec.inputs)
        if self.subset:
            store.scope = tuple(str(p) for p in spec.inputs)
        self.store = store
        self.remote = remote
        self.report = reporter
        self.sleep = sleep
        self.keep_going = keep_going
        self.work_dir = store.directory
        self.summary = BuildSummary()
        self.budget = Budget(spec, store)
        self.project_ids = self.remember_project(spec.project)
        self.scheduler = Scheduler(spec, store, reporter, self.budget, self.summary)
        self.submitter = Submitter(spec, store, remote, reporter, self.summary, self.project_ids)
        self.collector = Collector(spec, store, remote, reporter)
        # Other gptbatch projects' tokens in the same queue, counted afresh by each listing.
        self.census = Census(self.project_ids)
        # A provider without metadata (Anthropic, Gemini) shows no one's estimates: no
        # census to share the queue by, only the budget.
        self.scheduler.census = self.census if caps_of(remote).metadata else None
        self.submitter.sharing = lambda model: 1 + self.census.senders(model)
        self.listed_before_create = False
        self.first_plan: int | None = None  # the first plan's limit (run, submit)

    def remember_project(self, project: str) -> frozenset[str]:
        """Every project id this state has built under (a config edit can change the default)."""
        known = set(json.loads(self.store.get_meta("projects") or "[]"))
        if project not in known:
            known.add(project)
            with self.store.transaction():
                self.store.set_meta("projects", json.dumps(sorted(known)))
        return frozenset(known)

    def record_submitted(self, shard_id: str, info: BatchInfo) -> None:
        self.submitter.record_submitted(shard_id, info)

    def _may_call_api(self) -> bool:
        """Is this run likely to reach the API: an input changed on disk, or work is open?"""
        for path in self.spec.inputs:
            record = self.store.input_record(str(path))
            try:
                st = path.stat()
            except OSError:
                return False  # the sync says what is wrong
            if record is None or (record[0], record[1]) != (st.st_size, st.st_mtime_ns):
                return True
        return self.store.has_open_work()

    # --- the loop ------------------------------------------------------------------------

    def run(
        self,
        *,
        wait: bool = True,
        force: bool = False,
        retry_failed: bool = False,
        forced: Sequence[Path] | None = None,
        until: Callable[[], bool] | None = None,
    ) -> BuildSummary:
        """Build until everything is done (or, without wait, do one pass; or until until()).

        force (make -B) sends every current request again; retry_failed gives requests that
        failed for good another round of attempts. Both act on this spec's inputs only, or on
        those of them in forced (a build with steps forces one step depth a round).
        """
        # Bad input raises here, before anything is submitted or any output rewritten.
        output_paths(self.spec.inputs, self.spec.output_dir)  # refuse clobbering before paying
        # Under the lock nobody else writes here: a temp file is a killed run's leftover.
        remove_stale_temp_files(
            self.spec.output_dir, self.work_dir / "downloads", self.work_dir / "shards"
        )
        remove_final_shard_files(self.store)
        if force or retry_failed or self._may_call_api():
            warm = getattr(self.remote, "warm", None)  # only a client not yet made has it
            if warm is not None:
                warm()
        try:
            read = sync_inputs(
                self.spec,
                self.store,
                self.report,
                keep_going=self.keep_going,
                declared=self.declared,
            )
        except InputError as exc:  # a data target's request: named by its data file and row
            raise relocated(exc, self.spec.targets, self.spec.data_targets) from None
        # -B / --retry-failed reset nothing: this run's resend set names what it sends again,
        # and each old result stays the output until its replacement arrives. A run that
        # stops early (spend cap, Ctrl-C, --no-wait) leaves the rest up to date, so the next
        # plain build starts an empty set and drops what a forced run packed but never sent.
        with self.store.transaction():
            reset = self.store.begin_resend(
                [str(p) for p in self.spec.inputs if forced is None or p in forced]
                if force or retry_failed
                else None,
                only_failed=not force,
            )
            dropped = self.store.drop_unneeded_shards()
        for sid, why in dropped:
            self.report.event("dropped", shard=sid[:12], reason=why)
        if dropped:
            self.scheduler.dirty = True
        # A typo'd model fails whole batches. Only a build that read an input can have a new
        # model, and its requests have no result yet: the open requests' models are the
        # ones to check (not every request's). gptbatch's list is OpenAI's: other
        # providers' models (and Azure's deployment names) are not in it.
        listed = read and self.spec.api.provider == "openai"
        for model in sorted(m for m in self.store.open_models() if m) if listed else ():
            hint = unknown_model_hint(model, self.spec.prices)
            if hint is not None:
                self.report.event("warning", message=hint)
        if force or retry_failed:
            self.report.event("reset", requests=reset, force=force, retry_failed=retry_failed)
        counts = self.store.counts()
        # Models named in the config or in shards: a cheap list (every request's model would
        # be a full scan on a no-op build); others appear as their batches do.
        models = {m for m in self.spec.limits.models() if m} | {
            s.model for s in self.store.shards() if s.model
        }
        self.report.event(
            "start",
            total=counts["total"],
            ok=counts["ok"],
            failed=counts["failed"],
            pending=counts["total"] - counts["ok"] - counts["failed"] + self.store.resend_left(),
            budgets={m: self.budget.working(m) for m in sorted(models)},
        )
        self.first_plan = 2 * self.scheduler.pipeline if wait else None
        try:
            self.scheduler.drop_stale_shards()
            reconciled = False
            interval = self.spec.polling.initial_seconds
            while True:
                self.store.check_intact()
                # While something waits for room, the poll's listing also counts what other
                # projects hold (a few pages at most, see census.py); their batches ending
                # or starting moves our room as our own do.
                view = self.census.view
                census = self.census if self.census_wanted() else None
                changed = self.settle_all(self.collector.poll(census))
                changed = changed or self.census.view != view
                self.release_early()
                if changed:
                    self.scheduler.room_changed()
                # The room a finished batch frees is refilled before its results are
                # downloaded, so the queue never idles through a download. Nothing is
                # submitted before the API has been listed once in this run; a build with
                # nothing to submit makes no call for it.
                unlisted = False
                if self.store.has_work_to_submit():
                    if not reconciled:
                        reconciled = self.reconcile()
                    if reconciled:
                        try:
                            changed = self.submit() or changed
                        except Exception:
                            # An error while submitting never withholds paid results.
                            self.settle_all(self.collector.collect_finished())
                            raise
                    else:
                        unlisted = True  # the API could not be listed: try again, never give up
                # One pass (--no-wait) or a step's pass records all it finds before it ends.
                sliced = COLLECT_SLICE_SECONDS if wait and until is None else None
                if self.settle_all(self.collector.collect_finished(sliced)):
                    changed = True
                    # One pass (--no-wait) also sends the retries its results asked for.
                    if not wait and self.store.has_work_to_submit():
                        reconciled = reconciled or self.reconcile()
                        if reconciled:
                            self.submit()
                # A batch adopted from the API that holds none of this build's requests (a
                # subset build, or another project's under a shared id) is collected when
                # it ends, by this build or a later one, but is not waited for.
                active = [
                    s
                    for s in self.store.shards(ACTIVE_SHARD_STATES)
                    if self.submitter.concerns_this_build(s)
                ]
                if not wait or (until is not None and until()):
                    break
                if not active and not unlisted and not self.store.has_work_to_submit():
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
                    + [s.not_before - time.time() for s in active if s.not_before > time.time()]
                )
                # Wake when a batch should finish, not an interval later (see eta.py).
                due = self.collector.seconds_to_next_poll()
                if due is not None:
                    wake = min(wake, max(due, self.spec.polling.initial_seconds / 5))
                if self.collector.finished:  # finished batches left to record: no wait
                    wake = 0
                self.report.event("tick")
                self.sleep(max(wake, 0.01))
        finally:
            self.collector.close()
            self.submitter.close()
            self.finish()
        return self.summary

    def finish(self) -> None:
        """Write outputs for everything done so far, and fill the summary."""
        # Rewriting a large output is the slowest part of a no-op build: skip it when
        # neither the results nor the inputs changed since the outputs were written.
        fingerprint = self.store.outputs_fingerprint()
        summaries = write_outputs(
            self.spec,
            self.store,
            skip_if=self.store.get_meta("outputs") == fingerprint,
            errors_elsewhere=set(table_inputs(self.spec)),
        )
        # Data targets' tables, and their errors files (failures and invalid answers).
        tables = write_tables(self.spec, self.store)
        for table in tables:
            if table.invalid:
                self.report.event(
                    "warning",
                    message=f"{table.invalid} answer(s) of {table.name} are not JSON matching "
                    f"the request's schema: their reasons are in {table.name}.errors.jsonl "
                    "(retry_invalid: true sends such requests again)",
                )
        crashpoint("after_outputs")
        if not self.subset:  # a subset build wrote only its own inputs' outputs
            with self.store.transaction():
                self.store.set_meta("outputs", fingerprint)
        remove_final_shard_files(self.store)
        self.summary.outputs = summaries
        self.summary.tables = tables
        counts = self.store.counts()
        self.summary.total = counts["total"]
        self.summary.ok = counts["ok"]
        self.summary.failed = counts["failed"]
        # Requests -B has yet to replace are not done: the run did not finish its work.
        left = self.store.resend_left()
        self.summary.pending = counts["total"] - counts["ok"] - counts["failed"] + left
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
            "tables": [t.path for t in s.tables],
        }

    # --- what happens next: the outcomes of submit and collect -------------------------------

    def settle(self, outcome: Outcome) -> None:
        """Act on what a step reported: refused shards wait, budgets move, shards repack."""
        if outcome.refusal is not None:
            # A batch created early was refused: the release came late, the limit stands.
            refusal = outcome.refusal
            early = self.scheduler.refused_early(refusal.batch, refusal.shard.model)
            take_refusal(self.budget, refusal, self.report, learn=not early)
            self.summary.refusals += 1
            self.scheduler.dirty = True
        if outcome.completed:
            with self.store.transaction():
                change = self.budget.raise_(outcome.model)
            report_budget(self.report, outcome.model, change, "a batch completed")
        if outcome.shards_changed:
            self.scheduler.dirty = True

    def settle_all(self, outcomes: Iterable[Outcome]) -> bool:
        """Settle each outcome as it happens; True if batches moved at the API."""
        moved = False
        for outcome in outcomes:
            self.settle(outcome)
            moved = moved or outcome.room_changed
        return moved

    def release_early(self) -> None:
        """Let a finalizing batch's room be refilled now where this queue allows it
        (scheduler.py), and then also poll for batches about to begin finalizing."""
        forecast = self.collector.forecast
        allowed = forecast.early_release() and not self.scheduler.early_off
        forecast.watch_start = allowed and self.store.has_work_to_submit()
        self.scheduler.release_finalizing(allowed, forecast.began_finalizing)

    def census_wanted(self) -> bool:
        """Count other projects' batches this round? Only while something waits to be sent
        under a token budget: a census costs list calls, and without a budget no room is
        computed from it."""
        if not self.store.has_work_to_submit():
            return False
        if not caps_of(self.remote).metadata:  # other projects' batches carry no estimate
            return False
        if self.spec.limits.enqueued_tokens is not None:
            return True
        return any(self.budget.working(s.model) is not None for s in self.store.shards())

    def fits_queue(self, shard: ShardRow) -> tuple[bool, ShardRow]:
        """Does the shard fit the room now (and the shard as it is now)? The census is taken
        again at the two moments a build started with another one at the same instant could
        be misled (one list call each, once a run): just before its first create, after
        uploading its file, so the listing is as close to the create as it can be; and when
        its first wave (half the budget, see census.py) is full, so the rest goes at once,
        not a poll round later."""
        scheduler = self.scheduler
        if self.census_wanted():
            if scheduler.first_sent_at is None and not self.listed_before_create:
                self.listed_before_create = True
                self.submitter.ensure_uploaded(shard)
                shard = self.store.shard(shard.id) or shard  # now with its file id
                self.take_census()
            elif scheduler.first_sent_at == self.census.listings and not scheduler.fits_queue(
                shard
            ):
                self.take_census()
        return scheduler.fits_queue(shard), shard

    def take_census(self) -> None:
        """List the queue for the census alone (the view stays as it was if that fails)."""
        self.collector.statuses([], self.census)

    def reconcile(self) -> bool:
        """Adopt batches of ours the state lost track of; False if the API could not be listed.

        Then pack again, and drop what never reached the API if its inputs changed, before
        the edited requests are packed. The same pass takes the first census of the queue.
        """
        self.census.begin()
        if not self.submitter.reconcile(self.census.see):
            return False
        self.census.end()
        self.scheduler.dirty = True
        self.scheduler.drop_stale_shards(("submitting",))
        return True

    # --- submitting: what the scheduler allows, through the submitter -----------------------

    def submit(self) -> bool:
        """Send the unsent shards that fit the queue now, then pack what is pending and
        send again."""
        self.submitter.uploads_done()
        # Shards cut already take the room first: a plan after a wave walks the open
        # requests for 2-5 s at 1M, and the queue stood empty through it.
        changed = self._send_unsent()
        if changed is None:
            return True
        # Not while finished batches wait to be recorded: their requests are still open,
        # and a plan walks past each of them (8 s a plan at 1M, against 3).
        if self.scheduler.dirty and not self.collector.finished:
            # A waiting build's first plan stops after two queues' worth of shards: the
            # first go, the next are uploaded ahead, and the rest is cut while they run
            # (at 1M, every non-tail shard was cut before the first create: ~10 s).
            self.scheduler.plan(limit=self.first_plan)
            self.first_plan = None
            sent = self._send_unsent()
            return True if sent is None else sent or changed
        return changed

    def _send_unsent(self) -> bool | None:
        """Send every unsent shard that fits now; None: one was released to be repacked."""
        changed = False
        now = time.time()
        # `submitting` comes first: an earlier run may have created its batch already.
        unsent = self.store.shards(UNSENT_SHARD_STATES)
        for index, shard in enumerate(unsent):
            if shard.not_before > now:
                continue
            if index + 1 < len(unsent):  # its file is written while this one is sent
                self.submitter.prepare_file(unsent[index + 1])
            sent = self.send(shard)
            if sent is None:
                return None
            changed = changed or sent
        return changed

    def upload_ahead(self, shard: ShardRow) -> bool:
        """Upload a shard that must wait for room, so only its create is left (up to
        `limits.pipeline` shards per model wait uploaded)."""
        if shard.state != "ready":
            return False
        waiting = [
            s
            for s in self.store.shards(("uploading", "uploaded", "waiting"))
            if s.model == shard.model and (s.file_id or s.id in self.submitter.uploading)
        ]
        if len(waiting) >= self.spec.limits.pipeline:
            return False
        self.submitter.upload_behind(shard)
        return True

    def send(self, shard: ShardRow) -> bool | None:
        """Try one shard; False if it must wait; None if it was released to be repacked."""
        try:
            if shard.state == "submitting":
                resolved = self.submitter.resolve_submitting(shard)
                if resolved is not None:
                    self.settle(resolved)
                    return True
            if self.scheduler.too_big_after_refusal(shard):
                return None
            if not self.scheduler.within_spend_cap(shard):
                return False
            fits, shard = self.fits_queue(shard)
            if not fits:
                return self.upload_ahead(shard)
            sent = self.summary.submitted
            announcing = self.census.senders(shard.model) and not self.scheduler.member(shard.model)
            self.settle(self.submitter.submit_shard(shard))
            if self.summary.submitted > sent:
                self.scheduler.sent_at[shard.model] = self.census.listings
                row = self.store.shard(shard.id)
                batch = self.store.batch(row.batch_id) if row and row.batch_id else None
                if batch is not None:
                    self.scheduler.sent_early(shard.model, batch.id)
                if announcing and batch is not None and shard.model not in self.scheduler.joined:
                    self.scheduler.joined[shard.model] = batch.created_at or 0
                if self.scheduler.first_sent_at is None:
                    self.scheduler.first_sent_at = self.census.listings
        except TransientRemoteError as exc:
            self.report.event("api_retry", batch="", error=f"shard {shard.id[:12]}: {exc}")
            with self.store.transaction():
                self.store.update_shard(shard.id, not_before=time.time() + 1.0)
        return True
