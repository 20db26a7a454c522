"""Collecting: poll -> download -> classify -> record, for every batch of ours not yet collected.

Polling is one paged `batches.list` pass per round (newest first, stopping at the oldest
batch of ours still uncollected, or once all of them were seen), so a round costs one call
per 100 batches instead of one `retrieve` per batch; a batch the pages did not show is
retrieved on its own. A batch that stays in `finalizing` for long is reported, not hidden.

`poll` and `collect_finished` yield an `Outcome` as each thing happens (a batch moved, a
refusal, a completion); the build loop settles each one before the collector goes on.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from gptbatch.api.provider import caps_of
from gptbatch.api.remote import BatchInfo, Remote, stated_queue_limit
from gptbatch.config.spec import Spec
from gptbatch.engine import nometa, prepared, usage
from gptbatch.engine.batches import (
    RECOVERED,
    ROOM_CHANGED,
    SHARDS_CHANGED,
    Outcome,
    Refusal,
    file_members,
    refused,
    save_batch,
)
from gptbatch.engine.census import CENSUS_PAGES, Census
from gptbatch.engine.crash import crashpoint
from gptbatch.engine.eta import Forecast
from gptbatch.engine.outcomes import Outcomes
from gptbatch.engine.prepared import Prepared, ReadAhead, classify, result_lines
from gptbatch.errors import NotFoundError, RemoteError, TransientRemoteError
from gptbatch.inputs.answers import AnswerCheck, answer_schema, answer_text
from gptbatch.report import Reporter
from gptbatch.state.rows import FINAL_RESULT_STATES, BatchRow, ShardRow
from gptbatch.state.store import Store

SLOW_FINALIZING_SECONDS = 900.0  # a batch finalizing longer than this is reported
GONE_AFTER = 3  # 404s in a row (one per poll round) before a batch counts as gone
COMPLETION_WINDOW_SECONDS = 86400  # the longest a batch may run before its files are made
DEFAULT_FILE_TTL = 30 * 86400  # output files live 30 days unless output_expires_after says


class FileWaiting(TransientRemoteError):
    """A finished batch's result file cannot be fetched yet: wait for it, never re-buy."""


def _utc(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


class Collector:
    """Finds out what the API did with our batches and records every result exactly once."""

    def __init__(
        self,
        spec: Spec,
        store: Store,
        remote: Remote,
        report: Reporter,
        *,
        slow_finalizing: float = SLOW_FINALIZING_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.spec = spec
        self.store = store
        self.remote = remote
        self.report = report
        self.work_dir = store.directory
        self.slow_finalizing = slow_finalizing
        self.clock = clock
        self.finished: list[tuple[str, BatchInfo]] = []  # seen finished, not yet downloaded
        self.finalizing_since: dict[str, float] = {}
        self.slow_reported: set[str] = set()
        # 404s seen per batch or file id: one 404 can be a blip (or a request routed to the
        # wrong project); taking it as "gone" would pay for the work again.
        self.not_found: dict[str, int] = {}
        self.file_expiry: dict[str, int] = {}  # file id -> expires_at the API gave (API time)
        self.waiting_reported: dict[str, str] = {}  # file id -> the reason last reported
        self.forecast = Forecast()
        # The next finished batch's files are downloaded and prepared on a worker process
        # while the one before is recorded (prepared.py).
        self.read_ahead = ReadAhead()
        self.fetched: set[Path] = set()  # downloaded ahead, not yet recorded
        # Downloads ahead run on a thread: the main thread records the batch before
        # meanwhile (at 1M, ~20 s of waiting on the API's answers).
        self.downloading: dict[Path, Future[None]] = {}
        self._downloader: ThreadPoolExecutor | None = None
        self.removing: set[Path] = set()  # files collected, to be removed (discard)

    # --- polling -------------------------------------------------------------------------

    def statuses(
        self, batches: list[BatchRow], census: Census | None = None
    ) -> dict[str, BatchInfo | None]:
        """What the API says of each batch now (None: it no longer knows it); one list pass.

        A batch missing from the answer could not be asked about this round. census: also
        count other projects' batches in flight from the pages read (a few more pages at
        most, see census.py); its view is replaced only by a listing that succeeded.
        """
        found: dict[str, BatchInfo | None] = {}
        if len(batches) >= 2 or census is not None:
            try:
                # Listing pays off only while it takes fewer calls than one retrieve each,
                # or when the census needs the pages anyway.
                pages = max(len(batches) - 1, CENSUS_PAGES if census is not None else 1)
                if census is not None:
                    census.begin()
                found.update(
                    self.remote.recent_batches(
                        since=min((b.created_at or 0 for b in batches), default=float("inf")),
                        wanted={b.id for b in batches},
                        max_pages=pages,
                        observe=census.see if census is not None else None,
                        more=census.page_done if census is not None else None,
                    )
                )
                if census is not None:
                    census.end()
            except TransientRemoteError as exc:
                self.report.event("api_retry", batch="", error=f"listing batches: {exc}")
        for batch in batches:
            if batch.id in found:
                continue
            try:
                found[batch.id] = self.remote.retrieve(batch.id)
            except TransientRemoteError as exc:
                self.report.event("api_retry", batch=batch.id, error=str(exc))
            except NotFoundError:
                found[batch.id] = None
        return found

    def poll(self, census: Census | None = None) -> Iterator[Outcome]:
        """One round: record every status change; settle failed batches; queue finished ones.

        Yields what happened as it happens (a batch moved, a refusal). Finished batches are
        downloaded by `collect_finished`, after the scheduler has used the room they left.
        census: take it from this round's listing (something waits for room).
        """
        self.finished = []
        batches = [b for b in self.store.batches() if not b.collected]
        if not batches:
            if census is not None:
                self.statuses([], census)
            return
        found = self.statuses(batches, census)
        for batch in batches:
            if batch.id not in found:
                continue
            info = found[batch.id]
            if info is None:
                if self.confirmed_gone(batch.id, batches):
                    yield self.batch_gone(batch.shard, batch.id)
                    yield ROOM_CHANGED
                continue
            self.not_found.pop(batch.id, None)
            if info.status != batch.status:
                yield ROOM_CHANGED
                self.report.event(
                    "status",
                    batch=batch.id,
                    status=info.status,
                    completed=info.completed,
                    failed=info.failed,
                    total=info.total,
                )
                with self.store.transaction():
                    save_batch(self.store, batch.shard, info)
            self.watch_finalizing(info)
            self.forecast.observe(info, self.clock())
            if info.status == "failed":
                yield from self.collect(batch.shard, info)
                yield ROOM_CHANGED
            elif info.terminal:
                # Its room changed when its status did (above): one seen finished before
                # and not yet recorded (collect_finished's seconds) moves nothing again.
                self.finished.append((batch.shard, info))

    def seconds_to_next_poll(self) -> float | None:
        """Seconds until a poll is due for a batch forecast to finish (see eta.py), if any."""
        now = self.clock()
        at = self.forecast.next_poll(now)
        return None if at is None else at - now

    def confirmed_gone(self, batch_id: str, uncollected: list[BatchRow]) -> bool:
        """Is a batch that got a 404 really gone? Only after GONE_AFTER 404s in a row, and
        only if the API still knows a batch of ours it finished (else the key changed)."""
        strikes = self.not_found[batch_id] = self.not_found.get(batch_id, 0) + 1
        if strikes < GONE_AFTER:
            self.report.event(
                "api_retry",
                batch=batch_id,
                error=f"the API says it does not know this batch ({strikes} of {GONE_AFTER} "
                "checks); asking again before its requests are sent again",
            )
            return False
        known = next((b for b in self.store.batches() if b.collected), None)
        if known is not None:
            try:
                self.remote.retrieve(known.id)
            except NotFoundError:
                raise RemoteError(
                    f"the API knows neither batch {batch_id} nor the finished batch {known.id} "
                    "of this project: the API key, organization or project probably changed. "
                    "Nothing was resubmitted; use the key that made these batches"
                ) from None
            except TransientRemoteError:
                return False
        return True

    def watch_finalizing(self, info: BatchInfo) -> None:
        """Report a batch that has been finalizing for long: it holds queue room meanwhile."""
        if info.status != "finalizing":
            self.finalizing_since.pop(info.id, None)
            return
        now = self.clock()
        since = self.finalizing_since.setdefault(info.id, now)
        if now - since >= self.slow_finalizing and info.id not in self.slow_reported:
            self.slow_reported.add(info.id)
            self.report.event("slow_finalizing", batch=info.id, seconds=round(now - since))

    def collect_finished(self, seconds: float | None = None) -> Iterator[Outcome]:
        """Download and record the batches the last poll saw finished.

        seconds: stop once this long has passed after a batch, leaving the rest to the
        next poll, which finds them again (they are not collected). A batch that ends
        meanwhile is then seen, and its room refilled, while the rest is recorded: at 1M,
        a wave's four 46k batches took 10-15 s to record, and the next wave, done
        within them, waited for the last.
        """
        start = self.clock()
        for index, (shard_id, info) in enumerate(self.finished):
            if seconds is not None and index and self.clock() - start >= seconds:
                del self.finished[:index]
                return
            # Two ahead keep the worker busy through a batch it prepares faster than the
            # collector records; more would hold their lines in memory meanwhile.
            for ahead in self.finished[index : index + 3]:
                self.fetch_ahead(*ahead)
            try:
                yield from self.collect(shard_id, info)
            except FileWaiting:
                continue  # reported by file_expired
            except TransientRemoteError as exc:
                self.report.event("api_retry", batch=info.id, error=str(exc))
                continue
            yield ROOM_CHANGED
        self.finished = []

    def collect(self, shard_id: str, info: BatchInfo) -> Iterator[Outcome]:
        """Record a finished batch's results against its requests, in one transaction."""
        shard = self.store.shard(shard_id)
        assert shard is not None
        if info.status == "failed":
            yield from self.collect_failed(shard, info)
            return
        downloads: list[Path] = []
        gone: list[str] = []
        for file_id in (info.output_file_id, info.error_file_id):
            if file_id:
                path = self.work_dir / "downloads" / f"{file_id}.jsonl"
                if self.fetched_ahead(path):
                    downloads.append(path)
                    continue
                try:
                    self.remote.download(file_id, path)
                except NotFoundError as exc:
                    # A completed batch's files are paid for: only a file that expired by
                    # the API's own data counts as gone (its requests are sent again).
                    if not self.file_expired(info, file_id):
                        raise FileWaiting(
                            f"file {file_id} of batch {info.id} could not be fetched ({exc})"
                        ) from exc
                    gone.append(file_id)
                    self.report.event("file_gone", batch=info.id, file=file_id, status=info.status)
                    continue
                downloads.append(path)
        crashpoint("after_download")
        seen: set[str] = set()
        counts = {"ok": 0, "failed": 0, "retry": 0}
        members = self.store.members(shard_id) or file_members(
            self.remote, self.report, self.work_dir, info
        )
        keys = {cid: key for key, cid in reversed(members)}  # the first member of a custom_id
        named: dict[str, str] | None = None  # key -> custom_id, where requests went by key
        if caps_of(self.remote).custom_id_is_key:
            named = nometa.user_ids(self.store, members)
            keys = {key: key for key in named}
        checks = self.answer_checks(keys.values())
        with self.store.transaction():
            usage.account(self.store, self.spec.prices)  # what earlier runs left unaccounted
            batch = Outcomes(
                self.store,
                [k for k, _ in members],
                self.spec.retries,
                info.id,
                self.spec.prices,
                replacing=self.store.resend_shard(shard_id),
            )
            zdict = self.store.result_dictionary()
            for path in downloads:
                lines = None
                if named is None and not checks and zdict is not None:
                    lines = self.read_ahead.take((path, zdict))
                if lines is not None:
                    self.record_prepared(lines, keys, seen, batch, counts)
                    continue
                for text, obj in result_lines(path):
                    key = keys.get(str(obj.get("custom_id")))
                    if key is None or key in seen:
                        continue
                    seen.add(key)
                    if named is not None:
                        text, obj = nometa.named(text, obj, named[key])
                    state, error = classify(obj)
                    check = checks.get(key) if state == "ok" else None
                    if check is not None:
                        why = check(answer_text(obj))[1]
                        if why is not None:  # retry_invalid: sent again, up to retries
                            state, error = "retry", f"invalid answer: {why}"
                    counts[batch.add(key, state, text, error, obj)] += 1
            for key, _ in members:
                if key not in seen:
                    seen.add(key)
                    why = f"no result in batch {info.id} ({info.status})"
                    if gone:
                        why += f"; its file {', '.join(gone)} was gone from the API"
                    counts[batch.add(key, "retry", None, why)] += 1
            batch.flush()
            usage.add_written(self.store, batch.spent)
            self.store.mark_collected(info.id)
            if shard.batch_id == info.id or shard.state != "done":
                self.store.update_shard(shard_id, state="done")
            self.store.release_members(shard_id)
        crashpoint("after_collect")
        # Final now: removed on the download thread if there is one (tens of ms a file).
        self.discard([*downloads, self.work_dir / "shards" / f"{shard_id}.jsonl"])
        if self.spec.delete_uploads and info.input_file_id and shard.note != RECOVERED:
            # Not found or not now: it expires by itself (upload_expires_after). A batch
            # recovered from the API may be another project's under a shared default id:
            # its upload is not ours to delete.
            with contextlib.suppress(NotFoundError, TransientRemoteError):
                self.remote.delete_file(info.input_file_id)
        if info.status == "completed":
            yield Outcome(completed=True, model=shard.model)
        yield SHARDS_CHANGED
        self.report.event("collected", batch=info.id, status=info.status, **counts)

    def fetch_ahead(self, shard_id: str, info: BatchInfo) -> None:
        """Download a finished batch's files and start preparing them on the worker, if the
        batch is large and its lines need nothing but the plain reading (see collect).

        Anything that goes wrong here is left to collect, which downloads again and handles
        it as it always has.
        """
        if info.status == "failed" or not self.read_ahead.enabled:
            return
        if info.completed + info.failed < prepared.PREPARE_MIN_LINES:
            return
        if caps_of(self.remote).custom_id_is_key or self.checks_answers():
            return
        zdict = self.store.result_dictionary()
        if zdict is None:  # the first lines ever recorded choose it (write_results)
            return
        if self._downloader is None:
            self._downloader = ThreadPoolExecutor(1, thread_name_prefix="gptbatch-download")
        for file_id in (info.output_file_id, info.error_file_id):
            if not file_id:
                continue
            path = self.work_dir / "downloads" / f"{file_id}.jsonl"
            if path not in self.fetched and path not in self.downloading:
                self.downloading[path] = self._downloader.submit(self._fetch, file_id, path, zdict)

    def _fetch(self, file_id: str, path: Path, zdict: bytes) -> None:
        """On the download thread: download a file, then have the worker prepare it."""
        self.remote.download(file_id, path)
        self.read_ahead.start((path, zdict), prepared.prepare, str(path), zdict, self.spec.prices)

    def fetched_ahead(self, path: Path) -> bool:
        """Is this file downloaded ahead (waiting for a download still under way)?"""
        download = self.downloading.pop(path, None)
        if download is not None:
            try:
                download.result()
                self.fetched.add(path)
            except (RemoteError, OSError):
                pass  # collect downloads it again, and handles what goes wrong
        if path in self.fetched and path.exists():
            self.fetched.discard(path)
            return True
        return False

    def record_prepared(
        self,
        lines: list[Prepared],
        keys: Mapping[str, str],
        seen: set[str],
        batch: Outcomes,
        counts: dict[str, int],
    ) -> None:
        """collect's reading of a result file, from lines the worker prepared."""
        for custom_id, state, error, used, zline in lines:
            key = keys.get(custom_id)
            if key is None or key in seen:
                continue
            seen.add(key)
            counts[batch.add_packed(key, state, zline, error, used)] += 1

    def discard(self, paths: list[Path]) -> None:
        """Remove files no longer needed, on the download thread if there is one."""

        self.removing.update(paths)

        def remove() -> None:
            for path in paths:
                path.unlink(missing_ok=True)
                self.removing.discard(path)

        if self._downloader is None:
            remove()
        else:
            self._downloader.submit(remove)

    def close(self) -> None:
        """Stop the download thread and the read-ahead worker (after what they are doing)."""
        if self._downloader is not None:
            self._downloader.shutdown(wait=True, cancel_futures=True)
            self._downloader = None
        for path in list(self.removing):  # removals the shutdown cancelled
            path.unlink(missing_ok=True)
        self.removing.clear()
        self.downloading.clear()
        self.read_ahead.close()

    def checks_answers(self) -> bool:
        """Does any data target retry answers that fail its schema (answer_checks)?"""
        return any(
            t.retry_invalid and answer_schema(t.request) is not None for t in self.spec.data_targets
        )

    def answer_checks(self, keys: Iterable[str]) -> dict[str, AnswerCheck]:
        """The schema check of each of keys that belongs to a data target with retry_invalid
        (an answer failing it is retried like a failed request); none without such targets."""
        wanted = [
            (t, self.spec.targets[t.name])
            for t in self.spec.data_targets
            if t.retry_invalid and answer_schema(t.request) is not None
        ]
        if not wanted:
            return {}
        members = set(keys)
        checks: dict[str, AnswerCheck] = {}
        for target, path in wanted:
            check = AnswerCheck(answer_schema(target.request) or {})
            for request in self.store.requests_of(str(path)):
                if request.key in members:
                    checks[request.key] = check
        return checks

    def file_expired(self, info: BatchInfo, file_id: str) -> bool:
        """Is a result file that 404s really gone, by the API's own data?

        No while the API still lists the file (it is not served yet), while the batch no
        longer names it (the next poll reads the batch again), or while the API's clock (its
        Date header) is before the file's expiry: the batch's end plus the expiry asked for
        (or the file's known `expires_at`). Each such round is reported, never paid for.
        """
        try:
            meta = self.remote.file_info(file_id)
        except NotFoundError:
            meta = None
        if meta is not None:
            if meta.expires_at:
                self.file_expiry[file_id] = meta.expires_at
            self.report_waiting(info.id, file_id, "the API lists it but would not serve it yet")
            return False
        try:
            batch, api_now = self.remote.retrieve_dated(info.id)
        except NotFoundError:
            return False  # the poll decides whether the batch itself is gone
        if file_id not in (batch.output_file_id, batch.error_file_id):
            return False
        expires = self.file_expiry.get(file_id)
        if expires is None:
            ended = batch.finished_at or info.finished_at
            if ended is None:
                ended = batch.created_at + COMPLETION_WINDOW_SECONDS
            expires = ended + (self.spec.output_expires_after or DEFAULT_FILE_TTL)
            ttl = caps_of(self.remote).results_ttl
            if ttl is not None:  # kept for a while after creation, whatever was asked
                expires = batch.created_at + ttl
        if api_now is not None and api_now >= expires:
            return True
        self.report_waiting(
            info.id,
            file_id,
            f"the API says it does not exist, though batch {info.id} ({batch.status}) names it "
            f"and it should be kept until {_utc(expires)} (API time); if it was deleted, "
            "its requests are sent again once that time has passed",
        )
        return False

    def report_waiting(self, batch_id: str, file_id: str, why: str) -> None:
        """Say once per file and reason that a paid result file is waited for, and why."""
        if self.waiting_reported.get(file_id) == why:
            return
        self.waiting_reported[file_id] = why
        self.report.event(
            "file_waiting",
            batch=batch_id,
            file=file_id,
            error=f"result file {file_id}: {why}; waiting for it (nothing is sent again)",
        )

    def batch_gone(self, shard_id: str, batch_id: str) -> Outcome:
        """The API no longer knows a batch of ours: its unfinished requests are retried."""
        with self.store.transaction():
            for key, _ in self.store.members(shard_id):
                self.record(key, "retry", None, f"batch {batch_id} no longer exists", batch_id)
            self.store.mark_collected(batch_id)
            shard = self.store.shard(shard_id)
            if shard is not None and shard.batch_id == batch_id:
                self.store.update_shard(shard_id, state="done", note="batch gone at the API")
            self.store.release_members(shard_id)
        self.report.event(
            "api_retry",
            batch=batch_id,
            error="the API no longer knows this batch; its unfinished requests are retried",
        )
        return SHARDS_CHANGED

    def record(self, key: str, state: str, line: str | None, error: str | None, batch: str) -> str:
        """Record one outcome; a retryable one past the retry limit becomes final."""
        old = self.store.result(key)
        if old is not None and old.state in FINAL_RESULT_STATES and state == "retry":
            # a resend (-B) that did not come back: the old result stays the output
            self.store.resend_retried([key], self.spec.retries)
            return old.state
        attempts = (old.attempts if old else 0) + 1
        if state == "retry" and attempts > self.spec.retries:
            state = "failed"
            error = f"gave up after {attempts} attempts: {error}"
        row = self.store.record_result(key, state=state, line=line, error=error, batch_id=batch)
        return row.state

    def collect_failed(self, shard: ShardRow, info: BatchInfo) -> Iterator[Outcome]:
        """A failed batch processed nothing: a refusal waits, a validation failure is mapped."""
        store = self.store
        yield SHARDS_CHANGED
        if shard.batch_id != info.id and shard.state != "submitting":
            # An extra batch of a shard that has another (adopted duplicate): nothing to redo.
            with store.transaction():
                store.mark_collected(info.id)
                store.release_members(shard.id)
            return
        if refused(info):
            error = info.errors[0]
            stated = stated_queue_limit(error.message)
            refusal = Refusal(
                shard,
                unit="requests" if error.code == "request_limit_exceeded" else "tokens",
                stated=stated[1] if stated else None,
                message=error.message,
                code=error.code,
                batch=info.id,
                sized_at=shard.updated_at or 0.0,
                collected=info.id,
            )
            yield Outcome(refusal=refusal)
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
            store.release_members(shard.id)
        self.report.event("batch_failed", batch=info.id, problems=problems[:20])
