"""The simulated Files and Batches service: the API's calls over simulated time, no HTTP.

`BatchService` is the facade the server and tests use. It holds the lock, checks each
call's parameters like the real API, runs the event engine (gptbatch.simulator.engine)
forward to `clock.now()` before answering, and keeps the file store
(gptbatch.simulator.files) and the armed faults (gptbatch.simulator.faults).

Every change from outside (an upload, a batch creation, a cancel, a limit or a fault) is a
record applied by `_apply`. With `SimConfig.state_dir` the records are saved before they are
applied and replayed on restart (gptbatch.simulator.state); ids made while processing are
derived from the seed and the batch id, so a replay rebuilds results exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from gptbatch.canonical import canonical_json
from gptbatch.simulator.anthropic import AnthropicBatches
from gptbatch.simulator.clock import SimClock
from gptbatch.simulator.config import Fault, SimConfig
from gptbatch.simulator.engine import FAIL_MESSAGE, BatchEngine
from gptbatch.simulator.faults import FaultTable, queue_full_error
from gptbatch.simulator.files import FileStore, check_expires_after, check_upload, page
from gptbatch.simulator.gemini import GEMINI_RECORDS, GeminiBatches
from gptbatch.simulator.journal import Journal
from gptbatch.simulator.results import BASE62, ENDPOINTS, HEX, TokenCounter, base_digits
from gptbatch.simulator.state import BLOB_RECORDS, REMEDY, SimStateError, StateDir
from gptbatch.simulator.validation import (
    FILE_TTL_SECONDS,
    ApiError,
    check_limit,
    check_metadata,
    check_output_expiry,
    line_error,
)

__all__ = ["BatchService"]


class BatchService:
    """Files, batches, processing, budgets and the journal, driven by a SimClock."""

    def __init__(
        self,
        config: SimConfig | None = None,
        clock: SimClock | None = None,
        *,
        entropy: Callable[[int], bytes] = os.urandom,
    ) -> None:
        """`entropy(n)` gives n random bytes for new file and batch ids (tests may fix it).

        With `config.state_dir` the service first replays what that directory holds, resumes
        at the simulated time saved there (a given clock behind it is moved up to it), and
        then saves every change there before answering. SimStateError if it cannot.
        """
        self.config = config or SimConfig()
        self.journal = Journal()
        self.counter = TokenCounter(fast=self.config.fast_counter)
        if self.config.fast_counter:  # loaded beside the first calls, not in a validation
            threading.Thread(target=self.counter.warm, name="sim-counter", daemon=True).start()
        self._lock = threading.RLock()
        self._entropy = entropy
        self._state: StateDir | None = None
        self._ahead_step = 1.0  # simulated seconds work_ahead runs at a time (adapts)
        state = None
        if self.config.state_dir is not None:
            state = StateDir(self.config.state_dir, self.config.replay_settings())
        #: The simulated time a state directory was saved at (None: started afresh).
        self.saved_time = None if state is None else state.saved_time
        records = [] if state is None else state.records
        # Anthropic's Message Batches: their own routes, the same clock, journal and log.
        self.anthropic = AnthropicBatches(
            self.now,
            self.journal,
            processing_seconds=self.config.validating_seconds + self.config.finalizing_seconds,
        )
        self.anthropic.commit = self._commit_blob
        # Gemini's batch mode: its own routes and files, the same clock, journal and log.
        self.gemini = GeminiBatches(
            self.now,
            self.journal,
            processing_seconds=self.config.validating_seconds + self.config.finalizing_seconds,
        )
        self.gemini.commit = self._commit_blob
        seq = itertools.count(1)  # files and batches in one creation order
        self._files = FileStore(seq)
        self._faults = FaultTable()
        self._engine = BatchEngine(
            self.config,
            self.journal,
            self.counter,
            self._files,
            self._faults,
            seq,
            start=float(records[0]["at"]) if records else 0.0,
        )
        if state is not None:
            try:
                self._replay(state)  # before the clock starts: replaying takes no simulated time
            except BaseException:
                state.close()
                raise
        start = self.config.start_time if self.saved_time is None else self.saved_time
        self.clock = clock or SimClock(self.config.time_scale, start=start)
        if self.saved_time is not None and self.clock.now() < self.saved_time:
            self.clock.advance(self.saved_time - self.clock.now())
        if not records:
            self._engine.reset_time(self.clock.now())
        self._state = state
        self._start_session(records)

    # --- saving and replaying changes ----------------------------------------------------

    def _replay(self, state: StateDir) -> None:
        """Apply every saved record at its simulated time, then run on to the saved time."""
        for number, record in enumerate(state.records, 1):
            try:
                self._advance(float(record["at"]))
                data = None
                if record["op"] in BLOB_RECORDS:
                    data = state.blob(record["id"])
                    if len(data) != record["bytes"]:
                        raise ValueError(
                            f"{record['id']} has {len(data)} bytes, not {record['bytes']}"
                        )
                self._apply(record, data)
            except (ApiError, KeyError, TypeError, ValueError) as exc:
                raise SimStateError(
                    f"{state.path / 'log.jsonl'}:{number}: cannot replay this record ({exc}): "
                    f"{REMEDY}"
                ) from None
        if state.saved_time is not None:
            self._advance(state.saved_time)

    def _start_session(self, replayed: list[dict[str, Any]]) -> None:
        """Apply the config's limits and faults, unless the last start had the same ones."""
        with self._lock:
            self._advance()
            record = {
                "op": "config",
                "at": self._engine.t,
                "token_limits": self.config.token_limits,
                "request_limits": self.config.request_limits,
                "faults": [dataclasses.asdict(f) for f in self.config.faults],
            }
            last = next((r for r in reversed(replayed) if r["op"] == "config"), None)
            keys = ("token_limits", "request_limits", "faults")
            if last is None or [last.get(k) for k in keys] != _jsonable([record[k] for k in keys]):
                self._commit(record)

    def _commit_blob(self, record: dict[str, Any], data: bytes | None) -> Any:
        """Save (with its blob, under its id) and apply a record made outside the engine
        (Anthropic's, Gemini's), under the service's lock; a memory-only service applies it."""
        with self._lock:
            if data is not None and self._state is not None:
                with self._saving():
                    self._state.keep(self._state.stage(data), str(record["id"]))
            return self._commit(record, data)

    def _commit(self, record: dict[str, Any], data: bytes | None = None) -> Any:
        """Save a change to the state directory (if any), then apply it; return its result."""
        if self._state is not None:
            with self._saving():
                self._state.append(record)
        result = self._apply(record, data)
        self._engine.unsaved = False  # the record holds the time
        return result

    def _apply(self, record: dict[str, Any], data: bytes | None = None) -> Any:
        """Make one change, live or replayed; the service is already at its time."""
        op = record["op"]
        if op == "file":
            if data is None:
                raise ValueError("a file record needs the file's bytes")
            ttl = record.get("ttl", FILE_TTL_SECONDS)
            added = self._files.add(
                record["id"], record["filename"], record["purpose"], data, self._engine.t, ttl
            )
            return added.public()
        engine = self._engine
        appliers: dict[str, Callable[[dict[str, Any]], Any]] = {
            "config": self._apply_config,
            "delete_file": lambda r: self._files.delete(r["id"]),
            "batch": self._apply_batch,
            "cancel": lambda r: engine.start_cancelling(engine.batch(r["id"]), self._engine.t),
            "expire": lambda r: engine.expire(engine.batch(r["id"]), self._engine.t),
            "fail": lambda r: engine.fail(
                engine.batch(r["id"]), self._engine.t, [line_error(r["code"], None, r["message"])]
            ),
            "limit": self._apply_limit,
            "fault": lambda r: self._faults.arm(Fault(**r["fault"])),
            "clear_faults": lambda r: self._faults.clear(),
            "take": lambda r: self._faults.use(r["fault"]),
            "anthropic_batch": lambda r: self.anthropic.apply(r, data),
            "anthropic_cancel": lambda r: self.anthropic.apply(r),
            **dict.fromkeys(GEMINI_RECORDS, lambda r: self.gemini.apply(r, data)),
        }
        if op not in appliers:
            raise ValueError(f"unknown record {op!r}")
        return appliers[op](record)

    def _apply_config(self, record: dict[str, Any]) -> None:
        engine = self._engine
        engine.token_limits = {str(k): int(v) for k, v in record["token_limits"].items()}
        engine.request_limits = {str(k): int(v) for k, v in record["request_limits"].items()}
        self._faults.clear()
        for fault in record["faults"]:
            self._faults.arm(Fault(**fault))

    def _apply_limit(self, record: dict[str, Any]) -> None:
        engine = self._engine
        limits = engine.token_limits if record["kind"] == "token" else engine.request_limits
        if record["limit"] is None:
            limits.pop(record["model"], None)
        else:
            limits[record["model"]] = int(record["limit"])

    @contextlib.contextmanager
    def _saving(self) -> Iterator[None]:
        """Turn a failure to save state into a 500: the client must not take it as done."""
        try:
            yield
        except OSError as exc:
            where = self._state.path if self._state is not None else "the state directory"
            raise ApiError(
                500, f"The simulator could not save its state in {where}: {exc.strerror or exc}."
            ) from None

    def close(self) -> None:
        """Save the time reached and release the state directory; memory-only from then on.
        The background reading of inputs stops."""
        with self._lock:
            self._engine.close()
            if self._state is None:
                return
            with contextlib.suppress(ApiError, OSError):  # the last save is a courtesy
                self._advance()
                self._state.save_time(self._engine.t)
            self._state.close()
            self._state = None

    # --- ids, time -------------------------------------------------------------------

    def _new_id(self, prefix: str, length: int, alphabet: str = BASE62) -> str:
        """A fresh random id no file or batch has: ids never repeat across simulator runs."""
        while True:
            candidate = prefix + base_digits(self._entropy(32), length, alphabet)
            if candidate not in self._files and candidate not in self._engine.batches:
                return candidate

    def now(self) -> float:
        """Simulated now, with the world advanced to it."""
        with self._lock:
            self._advance()
            return self._engine.t

    # --- limits and faults -------------------------------------------------------------

    def set_token_limit(self, model: str, limit: int | None) -> None:
        """Set (None: remove) the enqueued-token limit for a model."""
        self._set_limit("token", model, limit)

    def set_request_limit(self, model: str, limit: int | None) -> None:
        """Set (None: remove) the enqueued-request limit for a model."""
        self._set_limit("request", model, limit)

    def _set_limit(self, kind: str, model: str, limit: int | None) -> None:
        with self._lock:
            self._advance()
            value = None if limit is None else int(limit)
            record = {
                "op": "limit",
                "at": self._engine.t,
                "kind": kind,
                "model": model,
                "limit": value,
            }
            self._commit(record)

    def add_fault(self, fault: Fault) -> None:
        """Arm a fault from now on."""
        with self._lock:
            self._advance()
            self._commit({"op": "fault", "at": self._engine.t, "fault": dataclasses.asdict(fault)})

    def clear_faults(self) -> None:
        """Disarm every fault."""
        with self._lock:
            self._advance()
            self._commit({"op": "clear_faults", "at": self._engine.t})

    def faults(self) -> list[Fault]:
        """The faults still armed."""
        with self._lock:
            return self._faults.active()

    def take_route_fault(self, kind: str, method: str, path: str) -> Fault | None:
        """The first armed fault of `kind` matching this call, consuming one of its count."""
        with self._lock:
            armed = self._faults.route_fault(kind, method, path)
            if armed is None:
                return None
            if armed.remaining is not None:
                record = {"op": "take", "at": self._engine.t, "fault": armed.id}
                try:
                    self._commit(record)
                except ApiError:  # not saved: a restart would give this fault one more use
                    self._apply(record)
            return armed.fault

    # --- files -------------------------------------------------------------------------

    def create_file(
        self, filename: str, purpose: str, data: bytes, expires_after: float | None = None
    ) -> dict[str, Any]:
        """Store an uploaded file; validate purpose, name, size and expiry like the real API."""
        check_upload(filename, purpose, data, self.config.max_upload_bytes)
        check_expires_after(expires_after)
        state = self._state
        staged = None
        if state is not None:  # the slow, durable write of the bytes, without holding the lock
            with self._saving():
                staged = state.stage(data)
        try:
            with self._lock:
                self._advance()
                file_id = self._new_id("file-", 22)
                if staged is not None and self._state is state:
                    with self._saving():
                        state.keep(staged, file_id)
                    staged = None
                record = {
                    "op": "file",
                    "at": self._engine.t,
                    "id": file_id,
                    "filename": filename,
                    "purpose": purpose,
                    "bytes": len(data),
                }
                if expires_after is not None:
                    record["ttl"] = float(expires_after)
                return self._commit(record, data)
        finally:
            if staged is not None:
                StateDir.discard(staged)

    def file(self, file_id: str) -> dict[str, Any]:
        """A file object; ApiError 404 if unknown."""
        with self._lock:
            self._advance()
            return self._files.find(file_id, self._engine.t).public()

    def file_content(self, file_id: str) -> bytes:
        """A file's bytes; ApiError 404 if unknown."""
        with self._lock:
            self._advance()
            return self._files.find(file_id, self._engine.t).data

    def files(self) -> list[dict[str, Any]]:
        """Every file, oldest first (expired ones too: a view for tests, not the API's)."""
        with self._lock:
            self._advance()
            return self._files.every()

    def list_files(
        self,
        *,
        purpose: str | None = None,
        limit: int = 10_000,
        after: str | None = None,
        order: str = "desc",
    ) -> dict[str, Any]:
        """One page of files, newest first by default."""
        with self._lock:
            self._advance()
            return self._files.listing(
                self._engine.t, purpose=purpose, limit=limit, after=after, order=order
            )

    def delete_file(self, file_id: str) -> dict[str, Any]:
        """Delete a file; ApiError 404 if unknown."""
        with self._lock:
            self._advance()
            self._files.find(file_id, self._engine.t)
            return self._commit({"op": "delete_file", "at": self._engine.t, "id": file_id})

    # --- batches: create, read, cancel -------------------------------------------------

    def create_batch(self, params: Any) -> dict[str, Any]:
        """Create a batch in `validating`; ApiError 400 for bad parameters."""
        with self._lock:
            self._advance()
            if not isinstance(params, dict):
                raise ApiError(400, "The request body must be a JSON object.")
            for name in ("input_file_id", "endpoint", "completion_window"):
                if params.get(name) in (None, ""):
                    raise ApiError(
                        400,
                        f"Missing required parameter: '{name}'.",
                        param=name,
                        code="missing_required_parameter",
                    )
            endpoint = params["endpoint"]
            if endpoint not in ENDPOINTS:
                allowed = ", ".join(f"'{e}'" for e in sorted(ENDPOINTS))
                raise ApiError(
                    400,
                    f"Invalid value: '{endpoint}'. Supported values are: {allowed}.",
                    param="endpoint",
                    code="invalid_value",
                )
            window = params["completion_window"]
            if window not in self.config.completion_windows:
                allowed = ", ".join(f"'{w}'" for w in self.config.completion_windows)
                raise ApiError(
                    400,
                    f"Invalid value: '{window}'. Supported values are: {allowed}.",
                    param="completion_window",
                    code="invalid_value",
                )
            metadata = check_metadata(params.get("metadata"))
            output_ttl = check_output_expiry(params.get("output_expires_after"))
            file_id = params["input_file_id"]
            source = self._files.get(file_id) if isinstance(file_id, str) else None
            if source is None or source.expired(self._engine.t):
                raise ApiError(
                    400,
                    f"Cannot find file {file_id}, or organization "
                    f"{self.config.organization} does not have access to it.",
                    param="file_id",
                )
            if source.purpose != "batch":
                raise ApiError(
                    400,
                    f"The input file {file_id} has purpose '{source.purpose}'; "
                    "batch input files must be uploaded with purpose 'batch'.",
                    param="input_file_id",
                )
            record = {
                "op": "batch",
                "at": self._engine.t,
                "id": self._new_id("batch_", 32, HEX),
                "input_file_id": file_id,
                "endpoint": endpoint,
                "completion_window": window,
                "metadata": metadata,
                "output_ttl": output_ttl,
            }
            return self._commit(record)

    def _apply_batch(self, record: dict[str, Any]) -> dict[str, Any]:
        source = self._files.find(
            record["input_file_id"], self._engine.t, live=False
        )  # checked live
        return self._engine.add_batch(record, source).public()

    def queue_full_error(self, params: Any, fault: Fault) -> ApiError:
        """The 429 a full queue gives batches.create, naming the model of its input file."""
        with self._lock:
            model = ""
            file_id = params.get("input_file_id") if isinstance(params, dict) else None
            source = self._files.get(file_id) if isinstance(file_id, str) else None
            if source is not None:
                for line in source.data.splitlines():
                    with contextlib.suppress(ValueError, AttributeError):
                        model = str(json.loads(line)["body"]["model"])
                        break
            engine = self._engine
            limits = engine.token_limits if fault.unit == "tokens" else engine.request_limits
            return queue_full_error(fault, model, limits, self.config.organization)

    def batch(self, batch_id: str) -> dict[str, Any]:
        """A batch object; ApiError 404 if unknown."""
        with self._lock:
            self._advance()
            return self._engine.batch(batch_id).public()

    def batches(self) -> list[dict[str, Any]]:
        """Every batch, oldest first."""
        with self._lock:
            self._advance()
            return [b.public() for b in sorted(self._engine.batches.values(), key=lambda b: b.seq)]

    def list_batches(self, *, limit: int = 20, after: str | None = None) -> dict[str, Any]:
        """One page of batches, newest first."""
        with self._lock:
            self._advance()
            check_limit(limit, 100)
            records = sorted(
                self._engine.batches.values(), key=lambda b: (b.created_at, b.seq), reverse=True
            )
            return page([b.public() for b in records], limit, after)

    def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        """Cancel a batch as POST /cancel does: 409 if it already ended."""
        with self._lock:
            self._advance()
            batch = self._engine.batch(batch_id)
            if batch.status in ("completed", "failed", "expired"):
                raise ApiError(409, f"Cannot cancel a batch with status '{batch.status}'.")
            if batch.status not in ("cancelling", "cancelled"):
                self._commit({"op": "cancel", "at": self._engine.t, "id": batch_id})
            return batch.public()

    def expire_batch(self, batch_id: str) -> dict[str, Any]:
        """Expire a running batch now, from outside (keeps its finished results)."""
        with self._lock:
            self._advance()
            batch = self._engine.batch(batch_id)
            if batch.status not in ("validating", "in_progress"):
                raise ApiError(409, f"Cannot expire a batch with status '{batch.status}'.")
            self._commit({"op": "expire", "at": self._engine.t, "id": batch_id})
            return batch.public()

    def fail_batch(
        self, batch_id: str, code: str = "server_error", message: str | None = None
    ) -> dict[str, Any]:
        """Fail a validating or running batch now, from outside."""
        with self._lock:
            self._advance()
            batch = self._engine.batch(batch_id)
            if batch.status not in ("validating", "in_progress"):
                raise ApiError(409, f"Cannot fail a batch with status '{batch.status}'.")
            message = message or FAIL_MESSAGE
            record = {
                "op": "fail",
                "at": self._engine.t,
                "id": batch_id,
                "code": code,
                "message": message,
            }
            self._commit(record)
            return batch.public()

    # --- helpers for tests -------------------------------------------------------------

    def prompt_tokens(self, endpoint: str, body: dict[str, Any]) -> int:
        """The simulator's own prompt-token count for one request body."""
        with self._lock:
            return self.counter.prompt_tokens(endpoint, body)

    def enqueued(self, model: str) -> tuple[int, int]:
        """(tokens, requests) of `model` held by in_progress/finalizing/cancelling batches."""
        with self._lock:
            self._advance()
            return self._engine.enqueued(model)

    # --- running the world forward ----------------------------------------------------------------

    def _advance(self, until: float | None = None) -> None:
        """Run the world forward to `until` (default clock.now()), event by event (the engine).

        When something visible happened, the time reached is saved before anyone sees it,
        so a restart never shows a client an earlier state than it saw.
        """
        self._engine.run_to(max(self._engine.t, self.clock.now() if until is None else until))
        if self._engine.unsaved and self._state is not None:
            with self._saving():
                self._state.save_time(self._engine.t)
            self._engine.unsaved = False

    def work_ahead(self, slice_seconds: float = 0.01) -> bool:
        """Do work already due by now, as the real service works between calls; True if
        more is due.

        A standalone server calls this from its own thread, so a call does not wait for
        the results of every batch finished since the last one. Each call runs one slice of
        simulated time (sized to about slice_seconds of real work), holding the lock no
        longer. Outcomes are the same: progress is computed from anchors, however often
        anyone looks. The time reached is saved by the next call that shows it.
        """
        with self._lock:
            now = self.clock.now()
            if now <= self._engine.t:
                return False
            target = min(now, self._engine.t + self._ahead_step)
            started = time.perf_counter()
            self._engine.run_to(target)
            took = time.perf_counter() - started
            if took < slice_seconds / 2:
                self._ahead_step *= 2
            elif took > slice_seconds:
                self._ahead_step = max(self._ahead_step / 2, 0.01)
            return target < now


def _jsonable(value: Any) -> Any:
    """value as it reads back from the log (tuples become lists, and so on)."""
    return json.loads(canonical_json(value))
