"""The simulated Files and Batches service: a state machine over simulated time, no HTTP.

Status is never advanced by polling. Every public method first runs the world forward to
`clock.now()` as a discrete-event simulation: events (a batch finishing validation, reaching
the end of its requests, finishing finalization or cancellation, expiring) are applied in
order of their simulated time, ties broken by kind (freeing events before admissions) and
then by creation order. Between events every running batch processes tokens at
min(tokens_per_second, total_tokens_per_second / running batches), and its requests finish
in a seeded shuffled order. So the outcome depends only on the simulated times of the calls,
never on how often anyone looks.

The enqueued-token budget is checked when a batch leaves `validating`: it fails with
token_limit_exceeded if its prompt tokens plus those of the batches of the same model that
are in_progress, finalizing or cancelling at that instant exceed the limit. Batches created
earlier finish validating earlier, so admission happens in creation order.

Every change from outside (an upload, a batch creation, a cancel, a limit or a fault) is a
record applied by `_apply`. With `SimConfig.state_dir` the records are saved before they are
applied and replayed on restart (gptbatch.simulator.state); ids made while processing are
derived from the seed and the batch id, so a replay rebuilds results exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import hashlib
import itertools
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from gptbatch.canonical import canonical_json
from gptbatch.simulator.clock import SimClock
from gptbatch.simulator.config import Fault, SimConfig
from gptbatch.simulator.journal import BatchEvent, Billed, Journal
from gptbatch.simulator.results import (
    BASE62,
    ENDPOINTS,
    HEX,
    TokenCounter,
    base_digits,
    error_body,
    result_order,
    success_body,
)
from gptbatch.simulator.state import REMEDY, SimStateError, StateDir
from gptbatch.simulator.validation import (
    FILE_TTL_SECONDS,
    ApiError,
    InputRequest,
    check_limit,
    check_metadata,
    check_output_expiry,
    line_error,
    parse_input,
)

__all__ = ["ACTIVE_STATUSES", "TERMINAL_STATUSES", "BatchService"]

ACTIVE_STATUSES = ("validating", "in_progress", "finalizing", "cancelling")
TERMINAL_STATUSES = ("completed", "failed", "expired", "cancelled")
FILE_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
EPS = 1e-9

FAIL_MESSAGE = "The batch failed because of a simulated server error."
EXPIRED_ERROR = {
    "code": "batch_expired",
    "message": "This request could not be executed before the completion window expired.",
}


@dataclass
class _File:
    id: str
    seq: int
    filename: str
    purpose: str
    data: bytes
    created_at: float
    expires_at: float | None

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": int(self.created_at),
            "expires_at": None if self.expires_at is None else int(self.expires_at),
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
        }


@dataclass
class _Armed:
    """A fault with its remaining count (None: unlimited)."""

    id: int
    fault: Fault
    remaining: int | None


@dataclass
class _Batch:
    id: str
    seq: int
    endpoint: str
    input_file_id: str
    completion_window: str
    metadata: dict[str, str] | None
    created_at: float
    expires_at: float
    model: str | None
    requests: list[InputRequest]
    validation_errors: list[dict[str, Any]]
    output_ttl: float | None
    status: str = "validating"
    times: dict[str, float] = field(default_factory=dict)
    errors: list[dict[str, Any]] | None = None
    order: list[int] = field(default_factory=list)  # processing order (indexes of requests)
    prefix: list[float] = field(default_factory=list)  # cumulative token cost along order
    processed: float = 0.0  # tokens processed so far
    anchor: float = 0.0  # tokens processed at the last event (see BatchService._plan)
    running: bool = False  # processing since the last event
    reached: bool = False  # processing reached `target` and that event was handled
    target: float = 0.0  # processing stops here (all requests, or a fault's stall point)
    cancel_at_target: bool = False
    done: int = 0  # requests in `order` that have a result
    completed: int = 0
    failed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    output_lines: list[bytes] = field(default_factory=list)
    error_lines: list[bytes] = field(default_factory=list)
    output_file_id: str | None = None
    error_file_id: str | None = None

    @property
    def total_tokens(self) -> int:
        return sum(r.prompt_tokens for r in self.requests)

    def public(self) -> dict[str, Any]:
        def stamp(name: str) -> int | None:
            return int(self.times[name]) if name in self.times else None

        started = "in_progress_at" in self.times or "expired_at" in self.times
        total = len(self.requests) if started else 0
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "errors": None if self.errors is None else {"object": "list", "data": self.errors},
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": int(self.created_at),
            "in_progress_at": stamp("in_progress_at"),
            "expires_at": int(self.expires_at),
            "finalizing_at": stamp("finalizing_at"),
            "completed_at": stamp("completed_at"),
            "failed_at": stamp("failed_at"),
            "expired_at": stamp("expired_at"),
            "cancelling_at": stamp("cancelling_at"),
            "cancelled_at": stamp("cancelled_at"),
            "request_counts": {"total": total, "completed": self.completed, "failed": self.failed},
            "metadata": self.metadata,
            "model": self.model,
            "usage": {
                "input_tokens": self.input_tokens,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": self.output_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": self.input_tokens + self.output_tokens,
            },
        }


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
        self.counter = TokenCounter()
        self._lock = threading.RLock()
        self._entropy = entropy
        self._files: dict[str, _File] = {}
        self._batches: dict[str, _Batch] = {}
        self._seq = 0
        self._token_limits: dict[str, int] = {}
        self._request_limits: dict[str, int] = {}
        self._faults: list[_Armed] = []
        self._fault_ids = itertools.count(1)
        self._attempts: dict[tuple[int, str], int] = {}
        self._state: StateDir | None = None
        self._unsaved = False  # something visible happened since the time was last saved
        self._ahead_step = 1.0  # simulated seconds work_ahead runs at a time (adapts)
        state = None
        if self.config.state_dir is not None:
            state = StateDir(self.config.state_dir, self.config.replay_settings())
        #: The simulated time a state directory was saved at (None: started afresh).
        self.saved_time = None if state is None else state.saved_time
        records = [] if state is None else state.records
        self._t = float(records[0]["at"]) if records else 0.0
        self._anchor_t, self._rate = self._t, self.config.tokens_per_second
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
            self._t = self._anchor_t = self.clock.now()
        self._state = state
        self._start_session(records)

    # --- saving and replaying changes ----------------------------------------------------

    def _replay(self, state: StateDir) -> None:
        """Apply every saved record at its simulated time, then run on to the saved time."""
        for number, record in enumerate(state.records, 1):
            try:
                self._advance(float(record["at"]))
                data = None
                if record["op"] == "file":
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
                "at": self._t,
                "token_limits": self.config.token_limits,
                "request_limits": self.config.request_limits,
                "faults": [dataclasses.asdict(f) for f in self.config.faults],
            }
            last = next((r for r in reversed(replayed) if r["op"] == "config"), None)
            keys = ("token_limits", "request_limits", "faults")
            if last is None or [last.get(k) for k in keys] != _jsonable([record[k] for k in keys]):
                self._commit(record)

    def _commit(self, record: dict[str, Any], data: bytes | None = None) -> Any:
        """Save a change to the state directory (if any), then apply it; return its result."""
        if self._state is not None:
            with self._saving():
                self._state.append(record)
        result = self._apply(record, data)
        self._unsaved = False  # the record holds the time
        return result

    def _apply(self, record: dict[str, Any], data: bytes | None = None) -> Any:
        """Make one change, live or replayed; the service is already at its time."""
        op = record["op"]
        if op == "file":
            if data is None:
                raise ValueError("a file record needs the file's bytes")
            ttl = record.get("ttl", FILE_TTL_SECONDS)
            added = self._add_file(
                record["id"], record["filename"], record["purpose"], data, self._t, ttl
            )
            return added.public()
        appliers: dict[str, Callable[[dict[str, Any]], Any]] = {
            "config": self._apply_config,
            "delete_file": self._apply_delete_file,
            "batch": self._apply_batch,
            "cancel": lambda r: self._start_cancelling(self._batch(r["id"]), self._t),
            "expire": lambda r: self._expire(self._batch(r["id"]), self._t),
            "fail": lambda r: self._fail(
                self._batch(r["id"]), self._t, [line_error(r["code"], None, r["message"])]
            ),
            "limit": self._apply_limit,
            "fault": lambda r: self._arm(Fault(**r["fault"])),
            "clear_faults": lambda r: self._faults.clear(),
            "take": self._apply_take,
        }
        if op not in appliers:
            raise ValueError(f"unknown record {op!r}")
        return appliers[op](record)

    def _apply_config(self, record: dict[str, Any]) -> None:
        self._token_limits = {str(k): int(v) for k, v in record["token_limits"].items()}
        self._request_limits = {str(k): int(v) for k, v in record["request_limits"].items()}
        self._faults.clear()
        for fault in record["faults"]:
            self._arm(Fault(**fault))

    def _apply_limit(self, record: dict[str, Any]) -> None:
        limits = self._token_limits if record["kind"] == "token" else self._request_limits
        if record["limit"] is None:
            limits.pop(record["model"], None)
        else:
            limits[record["model"]] = int(record["limit"])

    def _apply_take(self, record: dict[str, Any]) -> None:
        for armed in self._faults:
            if armed.id == record["fault"] and armed.remaining:
                armed.remaining -= 1

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
        """Save the time reached and release the state directory; memory-only from then on."""
        with self._lock:
            if self._state is None:
                return
            with contextlib.suppress(ApiError, OSError):  # the last save is a courtesy
                self._advance()
                self._state.save_time(self._t)
            self._state.close()
            self._state = None

    # --- ids, time -------------------------------------------------------------------

    def _new_id(self, prefix: str, length: int, alphabet: str = BASE62) -> str:
        """A fresh random id no file or batch has: ids never repeat across simulator runs."""
        while True:
            candidate = prefix + base_digits(self._entropy(32), length, alphabet)
            if candidate not in self._files and candidate not in self._batches:
                return candidate

    def _derived_id(self, prefix: str, length: int, alphabet: str, *parts: object) -> str:
        """An id that is a function of the seed and `parts`, so replaying gives the same one."""
        text = ":".join(str(part) for part in (self.config.seed, *parts))
        return prefix + base_digits(hashlib.sha256(text.encode()).digest(), length, alphabet)

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def now(self) -> float:
        """Simulated now, with the world advanced to it."""
        with self._lock:
            self._advance()
            return self._t

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
            record = {"op": "limit", "at": self._t, "kind": kind, "model": model, "limit": value}
            self._commit(record)

    def add_fault(self, fault: Fault) -> None:
        """Arm a fault from now on."""
        with self._lock:
            self._advance()
            self._commit({"op": "fault", "at": self._t, "fault": dataclasses.asdict(fault)})

    def _arm(self, fault: Fault) -> None:
        remaining = None if fault.count == 0 else fault.count
        self._faults.append(_Armed(next(self._fault_ids), fault, remaining))

    def clear_faults(self) -> None:
        """Disarm every fault."""
        with self._lock:
            self._advance()
            self._commit({"op": "clear_faults", "at": self._t})

    def faults(self) -> list[Fault]:
        """The faults still armed."""
        with self._lock:
            return [a.fault for a in self._faults if a.remaining != 0]

    def take_route_fault(self, kind: str, method: str, path: str) -> Fault | None:
        """The first armed fault of `kind` matching this call, consuming one of its count."""
        with self._lock:
            for armed in self._faults:
                f = armed.fault
                if f.kind != kind or armed.remaining == 0:
                    continue
                if f.method not in ("*", method.upper()) or not fnmatch.fnmatchcase(path, f.path):
                    continue
                if armed.remaining is not None:
                    record = {"op": "take", "at": self._t, "fault": armed.id}
                    try:
                        self._commit(record)
                    except ApiError:  # not saved: a restart would give this fault one more use
                        self._apply(record)
                return f
            return None

    def _take_batch_fault(self, kind: str, batch: _Batch) -> Fault | None:
        for armed in self._faults:
            if armed.fault.kind != kind or armed.remaining == 0:
                continue
            pattern = armed.fault.custom_id
            if any(fnmatch.fnmatchcase(r.custom_id, pattern) for r in batch.requests):
                if armed.remaining is not None:
                    armed.remaining -= 1
                return armed.fault
        return None

    # --- files -------------------------------------------------------------------------

    def create_file(
        self, filename: str, purpose: str, data: bytes, expires_after: float | None = None
    ) -> dict[str, Any]:
        """Store an uploaded file; validate purpose, name, size and expiry like the real API."""
        self._check_upload(filename, purpose, data)
        if expires_after is not None and not 3600 <= expires_after <= 2_592_000:
            raise ApiError(
                400,
                "Invalid 'expires_after.seconds': must be between 3600 and 2592000.",
                param="expires_after.seconds",
                code="invalid_value",
            )
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
                    "at": self._t,
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

    def _check_upload(self, filename: str, purpose: str, data: bytes) -> None:
        """ApiError 400 for an upload the real API refuses."""
        if not purpose:
            raise ApiError(
                400,
                "Missing required parameter: 'purpose'.",
                param="purpose",
                code="missing_required_parameter",
            )
        if purpose not in FILE_PURPOSES:
            allowed = ", ".join(f"'{p}'" for p in FILE_PURPOSES)
            raise ApiError(
                400,
                f"Invalid value: '{purpose}'. Supported values are: {allowed}.",
                param="purpose",
                code="invalid_value",
            )
        if len(data) > self.config.max_upload_bytes:
            raise ApiError(400, "File is too large.")
        if purpose == "batch" and not filename.lower().endswith(".jsonl"):
            raise ApiError(400, "Invalid file format for Batch API. Must be .jsonl", param="file")

    def _add_file(
        self, file_id: str, filename: str, purpose: str, data: bytes, at: float, ttl: float | None
    ) -> _File:
        record = _File(
            id=file_id,
            seq=self._next_seq(),
            filename=filename,
            purpose=purpose,
            data=data,
            created_at=at,
            expires_at=None if ttl is None else at + ttl,
        )
        self._files[record.id] = record
        return record

    def _file(self, file_id: str, *, live: bool = True) -> _File:
        """A stored file; ApiError 404 if unknown, or (live) expired as the API forgets it."""
        record = self._files.get(file_id)
        if record is None or (live and self._expired(record)):
            raise ApiError(404, f"No such File object: {file_id}", param="id")
        return record

    def _expired(self, record: _File) -> bool:
        """Has the file passed its expires_at? The API then deletes it: no content, no listing,
        and no batch may be created from it."""
        return record.expires_at is not None and record.expires_at <= self._t

    def file(self, file_id: str) -> dict[str, Any]:
        """A file object; ApiError 404 if unknown."""
        with self._lock:
            self._advance()
            return self._file(file_id).public()

    def file_content(self, file_id: str) -> bytes:
        """A file's bytes; ApiError 404 if unknown."""
        with self._lock:
            self._advance()
            return self._file(file_id).data

    def files(self) -> list[dict[str, Any]]:
        """Every file, oldest first (expired ones too: a view for tests, not the API's)."""
        with self._lock:
            self._advance()
            return [f.public() for f in sorted(self._files.values(), key=lambda f: f.seq)]

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
            if order not in ("asc", "desc"):
                raise ApiError(
                    400,
                    f"Invalid value: '{order}'. Supported values are: 'asc' and 'desc'.",
                    param="order",
                    code="invalid_value",
                )
            check_limit(limit, 10_000)
            records = sorted(
                self._files.values(), key=lambda f: (f.created_at, f.seq), reverse=order == "desc"
            )
            records = [f for f in records if not self._expired(f)]
            if purpose:
                records = [f for f in records if f.purpose == purpose]
            return _page([f.public() for f in records], limit, after)

    def delete_file(self, file_id: str) -> dict[str, Any]:
        """Delete a file; ApiError 404 if unknown."""
        with self._lock:
            self._advance()
            self._file(file_id)
            return self._commit({"op": "delete_file", "at": self._t, "id": file_id})

    def _apply_delete_file(self, record: dict[str, Any]) -> dict[str, Any]:
        del self._files[record["id"]]
        return {"id": record["id"], "object": "file", "deleted": True}

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
            if source is None or self._expired(source):
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
                "at": self._t,
                "id": self._new_id("batch_", 32, HEX),
                "input_file_id": file_id,
                "endpoint": endpoint,
                "completion_window": window,
                "metadata": metadata,
                "output_ttl": output_ttl,
            }
            return self._commit(record)

    def _apply_batch(self, record: dict[str, Any]) -> dict[str, Any]:
        source = self._file(record["input_file_id"], live=False)  # checked live at create
        parsed = parse_input(source.data, record["endpoint"], self.config, self.counter)
        batch = _Batch(
            id=record["id"],
            seq=self._next_seq(),
            endpoint=record["endpoint"],
            input_file_id=source.id,
            completion_window=record["completion_window"],
            metadata=record["metadata"],
            created_at=self._t,
            expires_at=self._t + self.config.completion_window_seconds,
            model=parsed.model,
            requests=parsed.requests,
            validation_errors=parsed.errors,
            output_ttl=record["output_ttl"],
        )
        self._batches[batch.id] = batch
        self._event(batch, "validating", self._t)
        return batch.public()

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
            limits = self._token_limits if fault.unit == "tokens" else self._request_limits
            limit = fault.limit or limits.get(model, 0)
            unit = "token" if fault.unit == "tokens" else "request"
            return ApiError(
                429,
                f"Enqueued {unit} limit reached for {model} in organization "
                f"{self.config.organization}. Limit: {limit:,} enqueued {fault.unit}. "
                "Please try again once some in_progress batches have been completed.",
                type="invalid_request_error",
                code=f"{unit}_limit_exceeded",
            )

    def _batch(self, batch_id: str) -> _Batch:
        batch = self._batches.get(batch_id)
        if batch is None:
            raise ApiError(404, f"No batch found with id '{batch_id}'.")
        return batch

    def batch(self, batch_id: str) -> dict[str, Any]:
        """A batch object; ApiError 404 if unknown."""
        with self._lock:
            self._advance()
            return self._batch(batch_id).public()

    def batches(self) -> list[dict[str, Any]]:
        """Every batch, oldest first."""
        with self._lock:
            self._advance()
            return [b.public() for b in sorted(self._batches.values(), key=lambda b: b.seq)]

    def list_batches(self, *, limit: int = 20, after: str | None = None) -> dict[str, Any]:
        """One page of batches, newest first."""
        with self._lock:
            self._advance()
            check_limit(limit, 100)
            records = sorted(
                self._batches.values(), key=lambda b: (b.created_at, b.seq), reverse=True
            )
            return _page([b.public() for b in records], limit, after)

    def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        """Cancel a batch as POST /cancel does: 409 if it already ended."""
        with self._lock:
            self._advance()
            batch = self._batch(batch_id)
            if batch.status in ("completed", "failed", "expired"):
                raise ApiError(409, f"Cannot cancel a batch with status '{batch.status}'.")
            if batch.status not in ("cancelling", "cancelled"):
                self._commit({"op": "cancel", "at": self._t, "id": batch_id})
            return batch.public()

    def expire_batch(self, batch_id: str) -> dict[str, Any]:
        """Expire a running batch now, from outside (keeps its finished results)."""
        with self._lock:
            self._advance()
            batch = self._batch(batch_id)
            if batch.status not in ("validating", "in_progress"):
                raise ApiError(409, f"Cannot expire a batch with status '{batch.status}'.")
            self._commit({"op": "expire", "at": self._t, "id": batch_id})
            return batch.public()

    def fail_batch(
        self, batch_id: str, code: str = "server_error", message: str | None = None
    ) -> dict[str, Any]:
        """Fail a validating or running batch now, from outside."""
        with self._lock:
            self._advance()
            batch = self._batch(batch_id)
            if batch.status not in ("validating", "in_progress"):
                raise ApiError(409, f"Cannot fail a batch with status '{batch.status}'.")
            message = message or FAIL_MESSAGE
            record = {"op": "fail", "at": self._t, "id": batch_id, "code": code, "message": message}
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
            return self._enqueued(model)

    def _enqueued(self, model: str, exclude: _Batch | None = None) -> tuple[int, int]:
        holding = ("in_progress", "finalizing", "cancelling")
        if self.config.hold_from_creation:
            holding += ("validating",)
        held = [
            b
            for b in self._batches.values()
            if b.model == model and b.status in holding and b is not exclude
        ]
        return sum(b.total_tokens for b in held), sum(len(b.requests) for b in held)

    # --- the event loop ----------------------------------------------------------------

    def _advance(self, until: float | None = None) -> None:
        """Run the world forward to `until` (default clock.now()), event by event.

        When something visible happened, the time reached is saved before anyone sees it,
        so a restart never shows a client an earlier state than it saw.
        """
        self._run_to(max(self._t, self.clock.now() if until is None else until))
        if self._unsaved and self._state is not None:
            with self._saving():
                self._state.save_time(self._t)
            self._unsaved = False

    def _run_to(self, now: float) -> None:
        while True:
            event = self._next_event()
            if event is None or event[0] > now:
                self._process_until(now)
                break
            at, _priority, _seq, action, batch = event
            self._process_until(max(at, self._t))
            action(batch, self._t)
            self._plan()

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
            if now <= self._t:
                return False
            target = min(now, self._t + self._ahead_step)
            started = time.perf_counter()
            self._run_to(target)
            took = time.perf_counter() - started
            if took < slice_seconds / 2:
                self._ahead_step *= 2
            elif took > slice_seconds:
                self._ahead_step = max(self._ahead_step / 2, 0.01)
            return target < now

    def _plan(self) -> None:
        """Fix which batches process, and how fast, from now until the next event.

        Progress between events is computed from this anchor, never from the last time
        someone looked, so the outcome is the same to the last bit however often anyone
        polls (and when a log is replayed).
        """
        running = [b for b in self._batches.values() if b.status == "in_progress" and not b.reached]
        rate = self.config.tokens_per_second
        if running and self.config.total_tokens_per_second > 0:
            rate = min(rate, self.config.total_tokens_per_second / len(running))
        for b in self._batches.values():
            b.anchor = b.processed
            b.running = False
        for b in running:
            b.running = True
        self._anchor_t, self._rate = self._t, rate

    def _next_event(self) -> tuple[float, int, int, Any, _Batch] | None:
        cfg = self.config
        best: tuple[float, int, int, Any, _Batch] | None = None
        for b in self._batches.values():
            candidates: list[tuple[float, int, Any]] = []
            if b.status == "validating":
                candidates.append((b.created_at + cfg.validating_seconds, 2, self._admit))
            elif b.status == "in_progress":
                if b.running:  # even if a poll or an equal batch took it to its target
                    reach = self._anchor_t + (b.target - b.anchor) / self._rate
                    candidates.append((reach, 0, self._reach_target))
                candidates.append((b.expires_at, 1, self._expire))
            elif b.status == "finalizing":
                candidates.append(
                    (b.times["finalizing_at"] + cfg.finalizing_seconds, 0, self._complete)
                )
            elif b.status == "cancelling":
                candidates.append(
                    (b.times["cancelling_at"] + cfg.cancelling_seconds, 0, self._cancelled)
                )
            for at, priority, action in candidates:
                key = (at, priority, b.seq, action, b)
                if best is None or key[:3] < best[:3]:
                    best = key
        return best

    def _process_until(self, t: float) -> None:
        """Process tokens up to t (no event lies before it) and record results, in time order."""
        if t <= self._t:
            return
        rate = self._rate
        finished: list[tuple[float, int, int, _Batch]] = []
        for b in self._batches.values():
            if not b.running or b.status != "in_progress":
                continue
            b.processed = min(b.target, b.anchor + rate * (t - self._anchor_t))
            index = b.done
            while index < len(b.order) and b.prefix[index] <= b.processed + EPS:
                at = self._anchor_t + max(0.0, b.prefix[index] - b.anchor) / rate
                finished.append((at, b.seq, index, b))
                index += 1
        for at, _seq, _index, b in sorted(finished, key=lambda item: item[:3]):
            self._record_result(b, at)
        self._t = t

    def _finish_through(self, batch: _Batch, at: float) -> None:
        """Record results for every request whose tokens are already processed."""
        while batch.done < len(batch.order) and batch.prefix[batch.done] <= batch.processed + EPS:
            self._record_result(batch, at)

    # --- transitions -------------------------------------------------------------------

    def _event(self, batch: _Batch, status: str, at: float) -> None:
        batch.status = status
        self.journal.record_event(BatchEvent(batch.id, status, at))
        self._unsaved = True
        self._plan()

    def _fail(self, batch: _Batch, at: float, errors: list[dict[str, Any]]) -> None:
        batch.errors = errors
        batch.times["failed_at"] = at
        if batch.status == "in_progress":  # failed from outside mid-run: keep what was billed
            self._finish_through(batch, at)
            self._write_files(batch, at)
        self._event(batch, "failed", at)

    def _admit(self, batch: _Batch, at: float) -> None:
        """validating -> in_progress, or failed (bad input, a fault, or over a budget)."""
        if batch.validation_errors:
            self._fail(batch, at, batch.validation_errors)
            return
        fault = self._take_batch_fault("batch_fail", batch)
        if fault is not None:
            self._fail(
                batch,
                at,
                [line_error(fault.code or "server_error", None, fault.message or FAIL_MESSAGE)],
            )
            return
        model = batch.model or ""
        org = self.config.organization
        held_tokens, held_requests = self._enqueued(model, exclude=batch)
        token_limit = self._token_limits.get(model)
        if token_limit is not None and held_tokens + batch.total_tokens > token_limit:
            self._fail(
                batch,
                at,
                [
                    line_error(
                        "token_limit_exceeded",
                        None,
                        f"Enqueued token limit reached for {model} in organization {org}. "
                        f"Limit: {token_limit:,} enqueued tokens. "
                        "Please try again once some in_progress batches have been completed.",
                    )
                ],
            )
            return
        request_limit = self._request_limits.get(model)
        if request_limit is not None and held_requests + len(batch.requests) > request_limit:
            self._fail(
                batch,
                at,
                [
                    line_error(
                        "request_limit_exceeded",
                        None,
                        f"Enqueued request limit reached for {model} in organization {org}. "
                        f"Limit: {request_limit:,} enqueued requests. "
                        "Please try again once some in_progress batches have been completed.",
                    )
                ],
            )
            return
        order = result_order(self.config.seed, batch.id, len(batch.requests))
        batch.order = order
        running = 0.0
        for index in order:
            running += max(1, batch.requests[index].prompt_tokens)
            batch.prefix.append(running)
        batch.target = running
        stall = self._take_batch_fault("batch_expire", batch)
        if stall is not None and stall.after_requests < len(order):
            batch.target = batch.prefix[stall.after_requests - 1] if stall.after_requests else 0.0
        cancel = self._take_batch_fault("batch_cancel", batch)
        if cancel is not None and cancel.after_requests < len(order):
            point = batch.prefix[cancel.after_requests - 1] if cancel.after_requests else 0.0
            if point <= batch.target:
                batch.target, batch.cancel_at_target = point, True
        batch.times["in_progress_at"] = at
        self._event(batch, "in_progress", at)
        if batch.cancel_at_target and batch.target <= EPS:
            self._start_cancelling(batch, at)

    def _reach_target(self, batch: _Batch, at: float) -> None:
        batch.processed, batch.reached = batch.target, True
        self._finish_through(batch, at)
        if batch.cancel_at_target:
            self._start_cancelling(batch, at)
        elif batch.done == len(batch.order):
            batch.times["finalizing_at"] = at
            self._event(batch, "finalizing", at)
        # else: stalled by a batch_expire fault; it waits for its expiry

    def _start_cancelling(self, batch: _Batch, at: float) -> None:
        if batch.status == "in_progress":
            self._finish_through(batch, at)
        batch.times["cancelling_at"] = at
        self._event(batch, "cancelling", at)

    def _cancelled(self, batch: _Batch, at: float) -> None:
        batch.times["cancelled_at"] = at
        self._write_files(batch, at)
        self._event(batch, "cancelled", at)

    def _complete(self, batch: _Batch, at: float) -> None:
        batch.times["completed_at"] = at
        self._write_files(batch, at)
        self._event(batch, "completed", at)

    def _expire(self, batch: _Batch, at: float) -> None:
        if batch.status == "in_progress":
            self._finish_through(batch, at)
        # Requests not run yet expire; all of them when the batch never left validating.
        validating = batch.status == "validating"
        for index in range(len(batch.requests)) if validating else batch.order[batch.done :]:
            line = {
                "id": self._derived_id("batch_req_", 32, HEX, batch.id, "line", index),
                "custom_id": batch.requests[index].custom_id,
                "response": None,
                "error": dict(EXPIRED_ERROR),
            }
            batch.error_lines.append(json.dumps(line).encode() + b"\n")
            batch.failed += 1
        batch.done = len(batch.order)
        batch.times["expired_at"] = at
        self._write_files(batch, at)
        self._event(batch, "expired", at)

    def _write_files(self, batch: _Batch, at: float) -> None:
        def store(kind: str, lines: list[bytes]) -> str | None:
            if not lines:
                return None
            name = f"{batch.id}_{kind}.jsonl"
            file_id = next(  # derived from the batch, so a replay finds the same id
                candidate
                for n in itertools.count()
                if (candidate := self._derived_id("file-", 22, BASE62, batch.id, name, n))
                not in self._files
            )
            data = b"".join(lines)
            return self._add_file(file_id, name, "batch_output", data, at, batch.output_ttl).id

        batch.output_file_id = store("output", batch.output_lines) or batch.output_file_id
        batch.error_file_id = store("error", batch.error_lines) or batch.error_file_id
        batch.output_lines, batch.error_lines = [], []

    # --- one request's result ----------------------------------------------------------

    def _request_fault(self, request: InputRequest) -> Fault | None:
        """The request fault failing this attempt of the request, if any (counts attempts)."""
        for armed in self._faults:
            fault = armed.fault
            if fault.kind != "request" or not fnmatch.fnmatchcase(
                request.custom_id, fault.custom_id
            ):
                continue
            if fault.attempts is None:
                return fault
            key = (armed.id, request.custom_id)
            self._attempts[key] = self._attempts.get(key, 0) + 1
            if self._attempts[key] <= fault.attempts:
                return fault
        return None

    def _record_result(self, batch: _Batch, at: float) -> None:
        index = batch.order[batch.done]
        request = batch.requests[index]
        batch.done += 1
        self._unsaved = True
        line_id = self._derived_id("batch_req_", 32, HEX, batch.id, "line", index)
        request_id = self._derived_id("", 32, HEX, batch.id, "request", index)
        fault = self._request_fault(request)
        if fault is not None:
            response = {
                "status_code": fault.status,
                "request_id": request_id,
                "body": error_body(fault.status, fault.message, fault.code),
            }
            batch.failed += 1
            target = batch.error_lines
        else:
            body, completion = success_body(
                batch.endpoint,
                request.body,
                prompt_tokens=request.prompt_tokens,
                counter=self.counter,
                created=int(at),
                seed=f"{batch.id}:{request.custom_id}",
            )
            response = {"status_code": 200, "request_id": request_id, "body": body}
            batch.completed += 1
            batch.input_tokens += request.prompt_tokens
            batch.output_tokens += completion
            target = batch.output_lines
            self.journal.record_billed(
                Billed(
                    batch.id,
                    request.custom_id,
                    batch.model or "",
                    request.prompt_tokens,
                    at,
                    completion,
                )
            )
        line = {"id": line_id, "custom_id": request.custom_id, "response": response, "error": None}
        target.append(json.dumps(line).encode() + b"\n")


def _jsonable(value: Any) -> Any:
    """value as it reads back from the log (tuples become lists, and so on)."""
    return json.loads(canonical_json(value))


def _page(items: list[dict[str, Any]], limit: int, after: str | None) -> dict[str, Any]:
    start = 0
    if after:
        ids = [item["id"] for item in items]
        start = ids.index(after) + 1 if after in ids else len(items)
    data = items[start : start + limit]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": start + limit < len(items),
    }
