"""Submitting shards: intent -> upload -> create -> record, and adopting batches found at the API.

Money rules, in the order they are applied:
1. The intent to upload or create is written to the store before the API call; a shard found
   in `submitting` on the next run is reconciled against `batches.list` (metadata carries the
   project and shard id) before anything is created again.
2. `batches.create` is never retried by the SDK (see remote.py); an ambiguous failure is
   resolved the same way, by listing. A 429 (full queue or rate limit) is not ambiguous:
   nothing was created, and the shard waits with its uploaded file.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from gptbatch.api.remote import BatchInfo, Remote, UploadGoneError
from gptbatch.canonical import atomic_writer, canonical_json, sha256_hex
from gptbatch.config.spec import Spec
from gptbatch.engine.crash import crashpoint
from gptbatch.engine.scheduler import Scheduler, refusal_delay
from gptbatch.engine.summary import BuildSummary
from gptbatch.engine.sync import upload_line
from gptbatch.errors import (
    InputChangedError,
    InputError,
    NotFoundError,
    QueueFullError,
    RateLimitedError,
    StateError,
    TransientRemoteError,
)
from gptbatch.inputs.requests import read_raw_line
from gptbatch.report import Reporter
from gptbatch.state.rows import RequestRow, ShardRow
from gptbatch.state.store import Store

META_PROJECT = "gptbatch_project"
META_SHARD = "gptbatch_shard"
META_SUBMIT = "gptbatch_submit"
# A sample of the members' content keys (16 hex digits each), so a build that lost its state
# can recognise its own work at the API even when the project id changed (renamed config,
# moved checkout), and never download another project's files to find out.
META_KEYS = "gptbatch_keys"
KEY_SAMPLE = 28  # 28 * 17 - 1 = 475 characters, under the API's 512 per value
REFUSAL_CODES = ("token_limit_exceeded", "request_limit_exceeded")
# How far back a batch can still be collected, in the API's own time: files expire at most
# 30 days after they are made, and an output file is made up to the completion window (24 h)
# after its batch. Measured from the newest batch the list shows (a lower bound of the API's
# clock), never from the local clock: the two may disagree by days.
RECOVER_HORIZON = 32 * 86400.0
# A full pass records the newest `created_at` it saw (API time); the next pass reads back to
# that minus this margin, which covers creates racing the listing and skew between servers.
RECONCILE_MARGIN = 2 * 86400.0
RECOVERED = "recovered from the API"  # the note of a shard rebuilt from its batch
RECONCILED_META = "reconciled_api"  # (the older "reconciled" held local time: ignored)


def key_sample(keys: list[str]) -> str:
    """Up to KEY_SAMPLE evenly spread 16-hex prefixes of keys, comma-separated."""
    step = max(1, -(-len(keys) // KEY_SAMPLE))
    return ",".join(k[:16] for k in keys[::step][:KEY_SAMPLE])


def refused(info: BatchInfo) -> bool:
    """Did the API fail this batch for lack of queue room (nothing was processed)?"""
    return info.status == "failed" and any(e.code in REFUSAL_CODES for e in info.errors)


class Submitter:
    """Gets shards to the API exactly once, and takes back batches of ours it finds there."""

    def __init__(
        self,
        spec: Spec,
        store: Store,
        remote: Remote,
        report: Reporter,
        summary: BuildSummary,
        scheduler: Scheduler,
        project_ids: frozenset[str],
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.spec = spec
        self.store = store
        self.remote = remote
        self.report = report
        self.summary = summary
        self.scheduler = scheduler
        self.project_ids = project_ids
        self.work_dir = store.directory
        self.rng = rng or random.Random()
        self.rate_limited: dict[str, int] = {}  # shard -> plain 429s in a row at create
        self.newest_listed: int | None = None  # newest created_at of the last list pass
        self.concerns: dict[str, bool] = {}  # recovered shard -> holds a current request

    # --- one shard ---------------------------------------------------------------------

    def shard_file(self, shard: ShardRow) -> Path:
        """Write (or rewrite) the JSONL file of a shard from the inputs; return its path."""
        path = self.work_dir / "shards" / f"{shard.id}.jsonl"
        with contextlib.ExitStack() as files, atomic_writer(path, "wb") as out:
            opened: dict[str, BinaryIO | None] = {}  # one handle per input, not one per line
            for key, row in self.store.member_requests(shard.id):
                if row is None:
                    raise InputChangedError(
                        f"request {key[:12]} of shard {shard.id[:12]} left the inputs while "
                        "gptbatch ran: run `gptbatch build` again"
                    )
                if row.path not in opened:
                    try:
                        opened[row.path] = files.enter_context(open(row.path, "rb"))
                    except OSError:
                        opened[row.path] = None
                out.write(self.upload_line(row, key, opened[row.path]) + b"\n")
        return path

    def upload_line(self, row: RequestRow, key: str, f: BinaryIO | None = None) -> bytes:
        """The line to upload for a request, checked against its key: the file may have moved."""
        try:
            if f is None:
                raw = read_raw_line(row.path, row.offset, row.length)
            else:
                f.seek(row.offset)
                raw = f.read(row.length)
            line = upload_line(raw, self.spec) if len(raw) == row.length else b""
        except (InputError, ValueError, UnicodeDecodeError, OSError):
            line = b""
        if sha256_hex(line) != key:
            raise InputChangedError(
                f"{row.path}:{row.line}: the file changed while gptbatch ran (this line is "
                "no longer what was read): nothing more was submitted from it; batches already "
                "submitted keep running. Run `gptbatch build` again to pick up the change"
            )
        return line

    def ensure_uploaded(self, shard: ShardRow) -> str:
        """The shard's uploaded file id: found again, or uploaded now (intent recorded first).

        Uploading takes no queue room, so the next shards are uploaded while the queue is
        full, and creating their batches is all that is left when room appears.
        """
        store = self.store
        file_id = shard.file_id
        filename = f"gptbatch-{shard.id[:40]}.jsonl"
        if file_id is not None:
            return file_id
        if shard.state == "uploading":  # an earlier run may have uploaded it
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

    def submit_shard(self, shard: ShardRow) -> None:
        """Upload (unless already uploaded) and create the batch, recording intent first."""
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
                META_SUBMIT: nonce,
                META_KEYS: key_sample([k for k, _ in self.store.members(shard.id)]),
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
            self.queue_full(store.shard(shard.id) or shard, exc, attempted_at)
            return
        except RateLimitedError as exc:
            self.rate_limited_create(shard, exc)
            return
        except UploadGoneError as exc:
            # Nothing was created; the file expired or was deleted while the shard waited.
            self.upload_gone(shard, file_id, exc)
            return
        except TransientRemoteError as exc:
            # The batch may or may not exist: find out before anything is created again.
            self.report.event("create_uncertain", shard=shard.id[:12], error=str(exc))
            if not self.adopt_existing(store.shard(shard.id) or shard):
                with store.transaction():
                    store.update_shard(shard.id, not_before=time.time() + 1.0)
            return
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

    def queue_full(self, shard: ShardRow, exc: QueueFullError, attempted_at: float) -> None:
        """A 429 "Enqueued ... limit reached" at create: nothing exists; wait for room."""
        self.scheduler.refused(
            shard,
            unit=exc.unit,
            stated=exc.limit,
            message=exc.message,
            code="token_limit_exceeded" if exc.unit == "tokens" else "request_limit_exceeded",
            batch="batches.create",
            sized_at=attempted_at,
        )

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

    def resolve_submitting(self, shard: ShardRow) -> bool:
        """A shard whose create may have happened: adopt its batch, or drop it if stale."""
        if self.adopt_existing(shard):
            return True
        if not all(self.store.is_current(k) for k, _ in self.store.members(shard.id)):
            with self.store.transaction():
                self.store.update_shard(shard.id, state="dropped", note="inputs changed")
            self.scheduler.dirty = True
            self.report.event("dropped", shard=shard.id[:12], reason="inputs changed")
            return True
        return False

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

    def remote_batches(self) -> Iterator[BatchInfo]:
        """This project's batches at the API, newest first, as far back as they can matter.

        Reads back to the newest batch the last full pass saw (minus a margin), or, with no
        such pass, to RECOVER_HORIZON before the newest batch listed: both in the API's time.
        Sets `self.newest_listed` to the newest `created_at` seen, when the pass ends.
        """
        last = self.store.get_meta(RECONCILED_META)
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
            if self.is_ours(info):
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

    def reconcile(self) -> bool:
        """Match local state to the API before submitting: adopt batches we lost track of.

        Lists the project's batches back to the last full pass (or, after a lost state, as
        far back as a batch can still be collected), so a stale or deleted state directory,
        or a run killed mid-submission, never leads to a second batch for work already at
        the API. False if the API could not be listed (nothing is recorded then).
        """
        self.newest_listed = None
        try:
            found = list(self.remote_batches())
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
        self.scheduler.dirty = True
        # What was not adopted never reached the API: drop it now if its inputs changed,
        # before the edited requests are packed.
        self.scheduler.drop_stale_shards(("submitting",))
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

    def file_members(self, info: BatchInfo) -> list[tuple[str, str]]:
        """(key, custom_id) of the requests in a batch's input file ([] if it is gone).

        For a batch of a finished shard whose member list was released (a duplicate found
        after the shard's own batch was collected): its lines map back to requests by this.
        """
        if not info.input_file_id:
            return []
        path = self.work_dir / "downloads" / f"{info.input_file_id}.jsonl"
        try:
            self.remote.download(info.input_file_id, path)
        except NotFoundError as exc:
            self.report.event("recover_failed", batch=info.id, error=str(exc))
            return []
        return _members_in(path)

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
        members, file_model = _read_input_file(path)
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


def _members_in(path: Path) -> list[tuple[str, str]]:
    """(key, custom_id) of each request of a downloaded input file, in order; removes it."""
    return _read_input_file(path)[0]


def _read_input_file(path: Path) -> tuple[list[tuple[str, str]], str | None]:
    """(key, custom_id) of each request of a downloaded input file, and the first request's
    model (a recovered batch may hold no current request to take it from); removes it."""
    members: list[tuple[str, str]] = []
    model: str | None = None
    with open(path, "rb") as f:
        for raw in f:
            if raw.strip():
                obj = json.loads(raw)
                members.append((sha256_hex(canonical_json(obj)), str(obj.get("custom_id"))))
                if model is None and isinstance(obj.get("body"), dict):
                    found = obj["body"].get("model")
                    model = found if isinstance(found, str) else None
    path.unlink(missing_ok=True)
    return members, model
