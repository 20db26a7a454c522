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
"""

from __future__ import annotations

import contextlib
import fnmatch
import itertools
import json
import random
import threading
from dataclasses import dataclass, field
from typing import Any

from gptbatch.simulator.clock import SimClock
from gptbatch.simulator.config import Fault, SimConfig
from gptbatch.simulator.journal import BatchEvent, Billed, Journal
from gptbatch.simulator.results import ENDPOINTS, TokenCounter, error_body, success_body
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
_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_HEX = "0123456789abcdef"

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
    target: float = 0.0  # processing stops here (all requests, or a fault's stall point)
    cancel_at_target: bool = False
    reached: bool = False  # _reach_target ran (batches reaching it together each need it)
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

    def __init__(self, config: SimConfig | None = None, clock: SimClock | None = None) -> None:
        self.config = config or SimConfig()
        self.clock = clock or SimClock(self.config.time_scale, start=self.config.start_time)
        self.journal = Journal()
        self.counter = TokenCounter()
        self._lock = threading.RLock()
        self._rng = random.Random(self.config.seed)
        self._files: dict[str, _File] = {}
        self._batches: dict[str, _Batch] = {}
        self._seq = 0
        self._t = self.clock.now()
        self._token_limits = dict(self.config.token_limits)
        self._request_limits = dict(self.config.request_limits)
        self._faults: list[_Armed] = []
        self._fault_ids = itertools.count(1)
        self._attempts: dict[tuple[int, str], int] = {}
        for fault in self.config.faults:
            self.add_fault(fault)

    # --- ids, time -------------------------------------------------------------------

    def _new_id(self, prefix: str, length: int, alphabet: str = _ALNUM) -> str:
        if alphabet == _HEX:
            return prefix + format(self._rng.getrandbits(4 * length), f"0{length}x")
        number = self._rng.getrandbits(6 * length)
        digits = []
        for _ in range(length):
            number, digit = divmod(number, len(alphabet))
            digits.append(alphabet[digit])
        return prefix + "".join(digits)

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
        with self._lock:
            self._advance()
            if limit is None:
                self._token_limits.pop(model, None)
            else:
                self._token_limits[model] = int(limit)

    def set_request_limit(self, model: str, limit: int | None) -> None:
        """Set (None: remove) the enqueued-request limit for a model."""
        with self._lock:
            self._advance()
            if limit is None:
                self._request_limits.pop(model, None)
            else:
                self._request_limits[model] = int(limit)

    def add_fault(self, fault: Fault) -> None:
        """Arm a fault."""
        with self._lock:
            remaining = None if fault.count == 0 else fault.count
            self._faults.append(_Armed(next(self._fault_ids), fault, remaining))

    def clear_faults(self) -> None:
        """Disarm every fault."""
        with self._lock:
            self._faults.clear()

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
                    armed.remaining -= 1
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

    def create_file(self, filename: str, purpose: str, data: bytes) -> dict[str, Any]:
        """Store an uploaded file; validate purpose, name and size like the real API."""
        with self._lock:
            self._advance()
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
                raise ApiError(
                    400, "Invalid file format for Batch API. Must be .jsonl", param="file"
                )
            return self._store_file(filename, purpose, data, self._t, FILE_TTL_SECONDS).public()

    def _store_file(
        self, filename: str, purpose: str, data: bytes, at: float, ttl: float | None
    ) -> _File:
        record = _File(
            id=self._new_id("file-", 22),
            seq=self._next_seq(),
            filename=filename,
            purpose=purpose,
            data=data,
            created_at=at,
            expires_at=None if ttl is None else at + ttl,
        )
        self._files[record.id] = record
        return record

    def _file(self, file_id: str) -> _File:
        record = self._files.get(file_id)
        if record is None:
            raise ApiError(404, f"No such File object: {file_id}", param="id")
        return record

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
        """Every file, oldest first."""
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
            if purpose:
                records = [f for f in records if f.purpose == purpose]
            return _page([f.public() for f in records], limit, after)

    def delete_file(self, file_id: str) -> dict[str, Any]:
        """Delete a file; ApiError 404 if unknown."""
        with self._lock:
            self._advance()
            self._file(file_id)
            del self._files[file_id]
            return {"id": file_id, "object": "file", "deleted": True}

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
            if window != "24h":
                raise ApiError(
                    400,
                    f"Invalid value: '{window}'. Supported values are: '24h'.",
                    param="completion_window",
                    code="invalid_value",
                )
            metadata = check_metadata(params.get("metadata"))
            output_ttl = check_output_expiry(params.get("output_expires_after"))
            file_id = params["input_file_id"]
            source = self._files.get(file_id) if isinstance(file_id, str) else None
            if source is None:
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
            parsed = parse_input(source.data, endpoint, self.config, self.counter)
            batch = _Batch(
                id=self._new_id("batch_", 32, _HEX),
                seq=self._next_seq(),
                endpoint=endpoint,
                input_file_id=file_id,
                completion_window=window,
                metadata=metadata,
                created_at=self._t,
                expires_at=self._t + self.config.completion_window_seconds,
                model=parsed.model,
                requests=parsed.requests,
                validation_errors=parsed.errors,
                output_ttl=output_ttl,
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
                self._start_cancelling(batch, self._t)
            return batch.public()

    def expire_batch(self, batch_id: str) -> dict[str, Any]:
        """Expire a running batch now, from outside (keeps its finished results)."""
        with self._lock:
            self._advance()
            batch = self._batch(batch_id)
            if batch.status not in ("validating", "in_progress"):
                raise ApiError(409, f"Cannot expire a batch with status '{batch.status}'.")
            self._expire(batch, self._t)
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
            self._fail(batch, self._t, [line_error(code, None, message or FAIL_MESSAGE)])
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

    def _advance(self) -> None:
        """Run the world forward to clock.now(), applying events in simulated-time order."""
        now = max(self._t, self.clock.now())
        while True:
            event = self._next_event()
            if event is None or event[0] > now:
                self._process_until(now)
                return
            at, _priority, _seq, action, batch = event
            self._process_until(max(at, self._t))
            action(batch, self._t)

    def _rate(self) -> float:
        running = sum(1 for b in self._batches.values() if self._is_processing(b))
        rate = self.config.tokens_per_second
        if running and self.config.total_tokens_per_second > 0:
            rate = min(rate, self.config.total_tokens_per_second / running)
        return rate

    @staticmethod
    def _is_processing(batch: _Batch) -> bool:
        return batch.status == "in_progress" and batch.processed < batch.target - EPS

    def _next_event(self) -> tuple[float, int, int, Any, _Batch] | None:
        cfg = self.config
        rate = self._rate()
        best: tuple[float, int, int, Any, _Batch] | None = None
        for b in self._batches.values():
            candidates: list[tuple[float, int, Any]] = []
            if b.status == "validating":
                candidates.append((b.created_at + cfg.validating_seconds, 2, self._admit))
            elif b.status == "in_progress":
                if self._is_processing(b):
                    candidates.append(
                        (self._t + (b.target - b.processed) / rate, 0, self._reach_target)
                    )
                elif not b.reached:  # got to its target in the same step as another batch
                    candidates.append((self._t, 0, self._reach_target))
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
        """Process tokens from self._t to t (no event lies in between) and record results."""
        dt = t - self._t
        if dt <= 0:
            self._t = max(self._t, t)
            return
        rate = self._rate()
        finished: list[tuple[float, int, int, _Batch]] = []
        for b in self._batches.values():
            if not self._is_processing(b):
                continue
            start = b.processed
            b.processed = min(b.target, start + rate * dt)
            index = b.done
            while index < len(b.order) and b.prefix[index] <= b.processed + EPS:
                finished.append(
                    (self._t + max(0.0, b.prefix[index] - start) / rate, b.seq, index, b)
                )
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
        order = list(range(len(batch.requests)))
        random.Random(f"{self.config.seed}:{batch.id}").shuffle(order)
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
        batch.reached = True
        batch.processed = batch.target
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
        for index in batch.order[batch.done :]:
            request = batch.requests[index]
            line = {
                "id": self._new_id("batch_req_", 32, _HEX),
                "custom_id": request.custom_id,
                "response": None,
                "error": dict(EXPIRED_ERROR),
            }
            batch.error_lines.append(json.dumps(line).encode() + b"\n")
            batch.failed += 1
        if batch.status == "validating":  # expired before it ever ran: every request expires
            for request in batch.requests:
                line = {
                    "id": self._new_id("batch_req_", 32, _HEX),
                    "custom_id": request.custom_id,
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
            return self._store_file(name, "batch_output", b"".join(lines), at, batch.output_ttl).id

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
        request = batch.requests[batch.order[batch.done]]
        batch.done += 1
        line_id = self._new_id("batch_req_", 32, _HEX)
        request_id = self._new_id("", 32, _HEX)
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
