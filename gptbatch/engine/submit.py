"""Submitting shards: intent -> upload -> create -> record, and adopting batches found at the API.

Money rules, in the order they are applied:
1. The intent to upload or create is written to the store before the API call; a shard found
   in `submitting` on the next run is reconciled against `batches.list` (metadata carries the
   project and shard id) before anything is created again.
2. `batches.create` is never retried by the SDK (see remote.py); an ambiguous failure is
   resolved the same way, by listing. A 429 (full queue or rate limit) is not ambiguous:
   nothing was created, and the shard waits with its uploaded file.

What a refusal or a dropped shard means for the budget and the packing is not decided here:
`submit_shard` and `resolve_submitting` return an Outcome (batches.py) to the build loop.
"""

from __future__ import annotations

import contextlib
import random
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from gptbatch.api.provider import caps_of
from gptbatch.api.remote import BatchInfo, FileInfo, Remote, UploadGoneError
from gptbatch.config.spec import Spec
from gptbatch.engine import nometa
from gptbatch.engine.batches import (
    META_KEYS,
    META_PROJECT,
    META_SHARD,
    META_TOKENS,
    NOTHING,
    RECOVERED,
    SHARDS_CHANGED,
    Outcome,
    Refusal,
    key_sample,
    queue_value,
    read_input_file,
    refused,
    save_batch,
)
from gptbatch.engine.budget import refusal_delay
from gptbatch.engine.crash import crashpoint
from gptbatch.engine.prepared import ReadAhead
from gptbatch.engine.shard_files import AHEAD_MIN_REQUESTS, write_from_state, write_shard_file
from gptbatch.engine.summary import BuildSummary
from gptbatch.errors import (
    NotFoundError,
    QueueFullError,
    RateLimitedError,
    StateError,
    TransientRemoteError,
)
from gptbatch.report import Reporter
from gptbatch.state.rows import ShardRow
from gptbatch.state.store import Store

# How far back a batch can still be collected, in the API's own time: files expire at most
# 30 days after they are made, and an output file is made up to the completion window (24 h)
# after its batch. Measured from the newest batch the list shows (a lower bound of the API's
# clock), never from the local clock: the two may disagree by days.
RECOVER_HORIZON = 32 * 86400.0
# A full pass records the newest `created_at` it saw (API time); the next pass reads back to
# that minus this margin, which covers creates racing the listing and skew between servers.
RECONCILE_MARGIN = 2 * 86400.0
RECONCILED_META = "reconciled_api"  # (the older "reconciled" held local time: ignored)


def upload_name(shard: ShardRow) -> str:
    """The name a shard's file is uploaded under (found again by it after a crash)."""
    return f"gptbatch-{shard.id[:40]}.jsonl"


class Submitter:
    """Gets shards to the API exactly once, and takes back batches of ours it finds there."""

    def __init__(
        self,
        spec: Spec,
        store: Store,
        remote: Remote,
        report: Reporter,
        summary: BuildSummary,
        project_ids: frozenset[str],
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.spec = spec
        self.store = store
        self.remote = remote
        self.report = report
        self.summary = summary
        self.project_ids = project_ids
        self.work_dir = store.directory
        self.rng = rng or random.Random()
        self.rate_limited: dict[str, int] = {}  # shard -> plain 429s in a row at create
        self.newest_listed: int | None = None  # newest created_at of the last list pass
        # `build --new-project`: no batch at the API before our first create is ours
        # (a provider without metadata only, engine/nometa.py).
        self.new_project = False
        self.concerns: dict[str, bool] = {}  # recovered shard -> holds a current request
        # How many projects (this one included) send on a model, as the last listing saw.
        self.sharing: Callable[[str | None], int] = lambda model: 1
        self.ahead = ReadAhead()  # the next shard's file, written on a worker process
        # Uploads of shards that wait for room run on a thread (upload_behind).
        self.uploading: dict[str, Future[FileInfo]] = {}
        self._uploader: ThreadPoolExecutor | None = None

    # --- one shard ---------------------------------------------------------------------

    def shard_file(self, shard: ShardRow) -> Path:
        """Write (or rewrite) the JSONL file of a shard from the inputs; return its path.

        A file the worker wrote ahead (prepare_file) is taken as is: it made it the same way.
        """
        path = self.work_dir / "shards" / f"{shard.id}.jsonl"
        if self.ahead.take(("shard", shard.id)) is not None and path.exists():
            return path
        spec = self.spec
        members = self.store.member_requests(shard.id)
        return write_shard_file(path, shard.id, members, spec.model, spec.endpoint)

    def prepare_file(self, shard: ShardRow) -> None:
        """Have the worker write a large shard's file while the one before is sent."""
        if shard.state != "ready" or shard.file_id or shard.requests < AHEAD_MIN_REQUESTS:
            return
        path = self.work_dir / "shards" / f"{shard.id}.jsonl"
        spec = self.spec
        args = (str(self.store.path), shard.id, str(path), spec.model, spec.endpoint)
        self.ahead.start(("shard", shard.id), write_from_state, *args)

    def close(self) -> None:
        """Stop the worker (after the file it is writing) and the upload thread (after its
        upload, whose file id is then recorded)."""
        self.ahead.close()
        if self._uploader is not None:
            self._uploader.shutdown(wait=True, cancel_futures=True)
            with contextlib.suppress(StateError):
                self.uploads_done()

    def upload_behind(self, shard: ShardRow) -> None:
        """Start uploading a shard that waits for room, on a thread (intent recorded first):
        the main thread records and plans meanwhile (at 1M, a 46k shard's upload held it
        0.6-0.9 s). ensure_uploaded takes the file id when the batch is created."""
        if shard.state != "ready" or shard.file_id is not None or shard.id in self.uploading:
            return
        path = self.shard_file(shard)
        crashpoint("after_shard_file")
        with self.store.transaction():
            self.store.update_shard(shard.id, state="uploading")
        crashpoint("before_upload")
        if self._uploader is None:
            self._uploader = ThreadPoolExecutor(1, thread_name_prefix="gptbatch-upload")
        self.uploading[shard.id] = self._uploader.submit(
            self.remote.upload,
            path,
            upload_name(shard),
            expires_after=self.spec.upload_expires_after,
        )

    def uploads_done(self) -> None:
        """Record the uploads the thread finished (a failed one is raised by
        ensure_uploaded, when its shard is sent)."""
        for sid, future in list(self.uploading.items()):
            if not future.done() or future.cancelled() or future.exception() is not None:
                continue
            row = self.store.shard(sid)
            if row is None or row.state != "uploading":  # dropped meanwhile: not resurrected
                del self.uploading[sid]
                continue
            self.ensure_uploaded(row)

    def ensure_uploaded(self, shard: ShardRow) -> str:
        """The shard's uploaded file id: found again, or uploaded now (intent recorded first).

        Uploading takes no queue room, so the next shards are uploaded while the queue is
        full, and creating their batches is all that is left when room appears.
        """
        store = self.store
        file_id = shard.file_id
        filename = upload_name(shard)
        if file_id is not None:
            return file_id
        behind = self.uploading.pop(shard.id, None)
        if behind is not None and not behind.cancelled():
            # What the upload raised is raised here; the shard stays `uploading`, so the next
            # try looks for the file by name before uploading it again.
            file_id = behind.result().id
            crashpoint("after_upload")
        elif shard.state == "uploading":  # an earlier run may have uploaded it
            found = self.remote.find_uploads(filename)
            file_id = found[0].id if found else None
        if file_id is None:
            path = self.shard_file(shard)
            crashpoint("after_shard_file")
            with store.transaction():
                store.update_shard(shard.id, state="uploading")
            crashpoint("before_upload")
            file_id = self.remote.upload(
                path, filename, expires_after=self.spec.upload_expires_after
            ).id
            crashpoint("after_upload")
        with store.transaction():
            store.update_shard(shard.id, state="uploaded", file_id=file_id)
        crashpoint("after_uploaded_state")
        self.report.event("uploaded", shard=shard.id[:12], file=file_id)
        return file_id

    def submit_shard(self, shard: ShardRow) -> Outcome:
        """Upload (unless already uploaded) and create the batch, recording intent first;
        the outcome holds a refusal if the queue had no room.

        The batch carries its estimated tokens, and whether more of this project follows
        it, so other builds on the same API plan with the room it takes (census.py).
        """
        store = self.store
        file_id = self.ensure_uploaded(shard)
        nonce = uuid.uuid4().hex[:16]
        with store.transaction():
            store.update_shard(shard.id, state="submitting", nonce=nonce)
        crashpoint("before_create")
        metadata = dict(self.spec.metadata)
        metadata.update(
            {
                META_PROJECT: self.spec.project,
                META_SHARD: shard.id,
                META_KEYS: key_sample([k for k, _ in self.store.members(shard.id)]),
                META_TOKENS: queue_value(
                    shard.tokens,
                    self.store.has_work_to_submit(besides=shard.id),
                    shard.model,
                    self.sharing(shard.model),
                ),
            }
        )
        attempted_at = time.time()
        try:
            info = self.remote.create_batch(
                file_id=file_id,
                endpoint=shard.url,
                completion_window=self.spec.completion_window,
                metadata=metadata,
                output_expires_after=self.spec.output_expires_after,
            )
        except QueueFullError as exc:
            return self.queue_full(store.shard(shard.id) or shard, exc, attempted_at)
        except RateLimitedError as exc:
            self.rate_limited_create(shard, exc)
            return NOTHING
        except UploadGoneError as exc:
            # Nothing was created; the file expired or was deleted while the shard waited.
            self.upload_gone(shard, file_id, exc)
            return NOTHING
        except TransientRemoteError as exc:
            # The batch may or may not exist: find out before anything is created again.
            self.report.event("create_uncertain", shard=shard.id[:12], error=str(exc))
            if not self.adopt_existing(store.shard(shard.id) or shard):
                with store.transaction():
                    store.update_shard(shard.id, not_before=time.time() + 1.0)
            return NOTHING
        crashpoint("after_create")
        self.rate_limited.pop(shard.id, None)
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
        return NOTHING

    def upload_gone(self, shard: ShardRow, file_id: str, exc: Exception) -> None:
        """batches.create said the shard's file does not exist: upload it again next.

        A waiting shard outlives its upload when the queue stays full past
        `upload_expires_after` (or `clean --remote` deleted it); nothing was created, so
        the shard goes back to be uploaded, never wedging the project.
        """
        with self.store.transaction():
            self.store.update_shard(shard.id, state="ready", file_id=None)
        self.report.event(
            "api_retry",
            batch="",
            error=f"shard {shard.id[:12]}: the API no longer has its uploaded file {file_id} "
            f"({exc}); uploading it again",
        )

    def queue_full(self, shard: ShardRow, exc: QueueFullError, attempted_at: float) -> Outcome:
        """A 429 "Enqueued ... limit reached" at create: nothing exists; wait for room."""
        refusal = Refusal(
            shard,
            unit=exc.unit,
            stated=exc.limit,
            message=exc.message,
            code="token_limit_exceeded" if exc.unit == "tokens" else "request_limit_exceeded",
            batch="batches.create",
            sized_at=attempted_at,
        )
        return Outcome(refusal=refusal)

    def rate_limited_create(self, shard: ShardRow, exc: RateLimitedError) -> None:
        """A plain 429 at create: nothing was created; back off with jitter, keep the file."""
        attempt = self.rate_limited.get(shard.id, 0)
        self.rate_limited[shard.id] = attempt + 1
        polling = self.spec.polling
        delay = max(
            exc.retry_after or 0.0,
            refusal_delay(polling.initial_seconds, polling.max_seconds, attempt, self.rng),
        )
        with self.store.transaction():
            self.store.update_shard(shard.id, state="uploaded", not_before=time.time() + delay)
        self.report.event(
            "api_retry",
            batch="",
            error=f"shard {shard.id[:12]}: {exc}; nothing was created, trying again in "
            f"{delay:.2f}s",
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
            save_batch(self.store, shard_id, info)
            self.store.update_shard(shard_id, state="submitted", batch_id=info.id)

    def resolve_submitting(self, shard: ShardRow) -> Outcome | None:
        """A shard whose create may have happened: adopt its batch, or drop it if stale.

        None: neither (no batch of it at the API, its inputs current): it is created next.
        """
        if self.adopt_existing(shard):
            return NOTHING
        why = (
            "inputs changed"
            if not all(self.store.is_current(k) for k, _ in self.store.members(shard.id))
            else self.store.unneeded_reason(shard.id)
        )
        if why is not None:  # nothing of it reached the API: the list above shows no batch
            with self.store.transaction():
                self.store.update_shard(shard.id, state="dropped", note=why)
            self.report.event("dropped", shard=shard.id[:12], reason=why)
            return SHARDS_CHANGED
        return None

    # --- reconciling with the API ---------------------------------------------------------

    def is_ours(self, info: BatchInfo) -> bool:
        """Was the batch made under one of this state's project ids?

        Every such batch is adopted, whether or not its requests are current: what matches
        nothing now may match later (a subset build, an edit undone), and once the state is
        lost the batch is the only record that those requests were paid for. Two unrelated
        projects sharing a default id adopt each other's batches too, at no cost: results
        are stored by content key, so an answer only ever serves a byte-identical request.
        """
        return bool(info.metadata.get(META_SHARD)) and (
            info.metadata.get(META_PROJECT) in self.project_ids
        )

    def remote_batches(
        self, observe: Callable[[BatchInfo], None] | None = None
    ) -> Iterator[BatchInfo]:
        """This project's batches at the API, newest first (see listed_back).

        observe: shown every batch listed, any project's (the queue census).
        """
        for info in self.listed_back():
            if observe is not None:
                observe(info)
            if self.is_ours(info):
                yield info

    def listed_back(self) -> Iterator[BatchInfo]:
        """Every batch at the API, newest first, as far back as ours can matter.

        Reads back to the newest batch the last full pass saw (minus a margin), or, with no
        such pass, to RECOVER_HORIZON before the newest batch listed: both in the API's time.
        Sets `self.newest_listed` to the newest `created_at` seen once the pass ends (None
        until then, so a pass cut short never records how far it read).
        """
        last = self.store.get_meta(RECONCILED_META)
        self.newest_listed = None
        newest: int | None = None
        floor = float("-inf")
        for info in self.remote.list_batches():
            if newest is None:
                newest = info.created_at
                floor = newest - RECOVER_HORIZON
                if last is not None:
                    floor = max(floor, float(last) - RECONCILE_MARGIN)
            if info.created_at < floor:
                break
            yield info
        self.newest_listed = newest

    def concerns_this_build(self, shard: ShardRow) -> bool:
        """Does the shard hold a current request? Only a shard recovered from the API may
        not; the answer is kept for the run (the inputs were read once, at its start)."""
        if shard.note != RECOVERED:
            return True
        if shard.id not in self.concerns:
            self.concerns[shard.id] = any(
                self.store.is_current(k) for k, _ in self.store.members(shard.id)
            )
        return self.concerns[shard.id]

    def adopt_existing(self, shard: ShardRow) -> bool:
        """If a live or finished batch for this shard exists remotely, adopt it.

        The shard id is a hash of its members' content keys: a batch of ours carrying it
        holds exactly this work.
        """
        if not caps_of(self.remote).metadata:  # no tags: found by the keys it answered
            return nometa.adopt_existing(self, shard)
        for info in self.remote_batches():
            if info.metadata.get(META_SHARD) != shard.id or refused(info):
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

    def reconcile(self, observe: Callable[[BatchInfo], None] | None = None) -> bool:
        """Match local state to the API before submitting: adopt batches we lost track of.

        Lists the project's batches back to the last full pass (or, after a lost state, as
        far back as a batch can still be collected), so a stale or deleted state directory,
        or a run killed mid-submission, never leads to a second batch for work already at
        the API. False if the API could not be listed (nothing is recorded then); True
        leaves the build loop to pack again and drop unsent shards whose inputs changed.
        The pass reads at least RECONCILE_MARGIN back, past any batch still in flight, so
        `observe` sees the whole queue.
        """
        if not caps_of(self.remote).metadata:  # no tags: found by the keys it answered
            return nometa.reconcile(self)
        self.newest_listed = None
        try:
            found = list(self.remote_batches(observe))
            known = {b.id for b in self.store.batches()}
            for info in found:
                if info.id not in known and not refused(info):
                    self.adopt(info)
        except TransientRemoteError as exc:
            self.report.event("api_retry", batch="", error=f"reconciling with the API: {exc}")
            return False
        if self.newest_listed is not None:
            with self.store.transaction():
                self.store.set_meta(RECONCILED_META, str(self.newest_listed))
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
                save_batch(self.store, sid, info)
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
        members, file_model = read_input_file(path)
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
                note=RECOVERED,
            )
            first = self.store.locate(members[0][0]) if members else None
            self.store.update_shard(sid, model=first.model if first else file_model)
        self.record_submitted(sid, info)
        return True
