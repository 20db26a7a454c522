"""The batch lifecycle as a discrete-event simulation: statuses on the clock, results, usage.

Status is never advanced by polling. The service runs the world forward (`run_to`) before
every call: events (a batch finishing validation, reaching the end of its requests,
finishing finalization or cancellation, expiring) are applied in order of their simulated
time, ties broken by kind (freeing events before admissions) and then by creation order.
Between events every running batch processes tokens at
min(tokens_per_second, total_tokens_per_second / running batches), and its requests finish
in a seeded shuffled order. So the outcome depends only on the simulated times of the calls,
never on how often anyone looks.

The enqueued-token budget is checked when a batch leaves `validating`: it fails with
token_limit_exceeded if its prompt tokens plus those of the batches of the same model that
are in_progress, finalizing or cancelling at that instant exceed the limit. Batches created
earlier finish validating earlier, so admission happens in creation order.

Ids made while processing are derived from the seed and the batch id, so a replay of the
service's records rebuilds results exactly.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from gptbatch.simulator.config import SimConfig
from gptbatch.simulator.faults import FaultTable
from gptbatch.simulator.files import FileStore, StoredFile
from gptbatch.simulator.journal import BatchEvent, Billed, Journal
from gptbatch.simulator.results import (
    BASE62,
    HEX,
    TokenCounter,
    base_digits,
    error_body,
    result_order,
    success_body,
)
from gptbatch.simulator.validation import (
    ApiError,
    InputRequest,
    ParsedInput,
    line_error,
    parse_input,
)

__all__ = ["ACTIVE_STATUSES", "FAIL_MESSAGE", "TERMINAL_STATUSES", "Batch", "BatchEngine"]

ACTIVE_STATUSES = ("validating", "in_progress", "finalizing", "cancelling")
TERMINAL_STATUSES = ("completed", "failed", "expired", "cancelled")
EPS = 1e-9

FAIL_MESSAGE = "The batch failed because of a simulated server error."
EXPIRED_ERROR = {
    "code": "batch_expired",
    "message": "This request could not be executed before the completion window expired.",
}


@dataclass
class Batch:
    """One batch: its requests, status and times, how far processing got, its results."""

    id: str
    seq: int
    endpoint: str
    input_file_id: str
    completion_window: str
    metadata: dict[str, str] | None
    created_at: float
    expires_at: float
    # The input file read (ParsedInput), or its reading under way on the engine's validation
    # thread (SimConfig.background_validation): taken when first needed.
    parsed: ParsedInput | Future[ParsedInput]
    output_ttl: float | None
    validated_later: bool = False  # read in the background: its model is shown from in_progress
    status: str = "validating"
    times: dict[str, float] = field(default_factory=dict)
    errors: list[dict[str, Any]] | None = None
    order: list[int] = field(default_factory=list)  # processing order (indexes of requests)
    prefix: list[float] = field(default_factory=list)  # cumulative token cost along order
    processed: float = 0.0  # tokens processed so far
    anchor: float = 0.0  # tokens processed at the last event (see BatchEngine._plan)
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

    def _input(self) -> ParsedInput:
        parsed = self.parsed
        if isinstance(parsed, Future):
            parsed = self.parsed = parsed.result()
        return parsed

    @property
    def model(self) -> str | None:
        return self._input().model

    @property
    def requests(self) -> list[InputRequest]:
        return self._input().requests

    @property
    def validation_errors(self) -> list[dict[str, Any]]:
        return self._input().errors

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
            # Not waited for while validating in the background: create answers at once.
            "model": None if self.validated_later and self.status == "validating" else self.model,
            "usage": {
                "input_tokens": self.input_tokens,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": self.output_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": self.input_tokens + self.output_tokens,
            },
        }


class BatchEngine:
    """Batches over simulated time: admission, processing, transitions, results and usage.

    It takes no lock and records nothing: `BatchService` holds the lock, records each change
    from outside and then calls in. `unsaved` says something visible happened since the
    service last saved the time.
    """

    def __init__(
        self,
        config: SimConfig,
        journal: Journal,
        counter: TokenCounter,
        files: FileStore,
        faults: FaultTable,
        seq: Iterator[int],
        start: float,
    ) -> None:
        """`seq` numbers batches in creation order (shared with `files`); `start`: time."""
        self.config = config
        self.journal = journal
        self.counter = counter
        self.files = files
        self.faults = faults
        self._seq = seq
        self.batches: dict[str, Batch] = {}
        self.token_limits: dict[str, int] = {}
        self.request_limits: dict[str, int] = {}
        self.unsaved = False  # something visible happened since the time was last saved
        self.t = start  # the simulated time the world has been run to
        self._anchor_t, self._rate = start, config.tokens_per_second
        self._validator: ThreadPoolExecutor | None = None  # see SimConfig.background_validation

    def close(self) -> None:
        """Stop the thread that reads inputs in the background, after the readings asked of
        it (a later batch starts another): it outlived its simulator before, and a test
        process that forks saw it."""
        validator, self._validator = self._validator, None
        if validator is not None:
            validator.shutdown(wait=True)

    def reset_time(self, t: float) -> None:
        """Start a world with nothing in it at t."""
        self.t = self._anchor_t = t

    def _invalid_json(self, request: InputRequest, seed: str) -> bool:
        """Does this attempt of a request get a reply that is not JSON (a fault, or the
        configured fraction, drawn from the seed so a replay draws the same)?"""
        if self.faults.request_fault(request, "invalid_json") is not None:
            return True
        share = self.config.invalid_json
        if share <= 0:
            return False
        draw = hashlib.sha256(f"{self.config.seed}:{seed}:invalid".encode()).digest()
        return int.from_bytes(draw[:8], "big") / 2**64 < share

    def _derived_id(self, prefix: str, length: int, alphabet: str, *parts: object) -> str:
        """An id that is a function of the seed and `parts`, so replaying gives the same one."""
        text = ":".join(str(part) for part in (self.config.seed, *parts))
        return prefix + base_digits(hashlib.sha256(text.encode()).digest(), length, alphabet)

    # --- batches from outside ----------------------------------------------------------

    def add_batch(self, record: dict[str, Any], source: StoredFile) -> Batch:
        """A new batch in `validating` at the engine's time, from a "batch" record."""
        parsed: ParsedInput | Future[ParsedInput]
        if self.config.background_validation:
            if self._validator is None:
                self._validator = ThreadPoolExecutor(1, thread_name_prefix="sim-validation")
            parsed = self._validator.submit(
                parse_input, source.data, record["endpoint"], self.config, self.counter
            )
        else:
            parsed = parse_input(source.data, record["endpoint"], self.config, self.counter)
        batch = Batch(
            id=record["id"],
            seq=next(self._seq),
            endpoint=record["endpoint"],
            input_file_id=source.id,
            completion_window=record["completion_window"],
            metadata=record["metadata"],
            created_at=self.t,
            expires_at=self.t + self.config.completion_window_seconds,
            parsed=parsed,
            output_ttl=record["output_ttl"],
            validated_later=self.config.background_validation,
        )
        self.batches[batch.id] = batch
        self._event(batch, "validating", self.t)
        return batch

    def batch(self, batch_id: str) -> Batch:
        """A batch; ApiError 404 if unknown."""
        batch = self.batches.get(batch_id)
        if batch is None:
            raise ApiError(404, f"No batch found with id '{batch_id}'.")
        return batch

    def enqueued(self, model: str, exclude: Batch | None = None) -> tuple[int, int]:
        """(tokens, requests) of `model` held by batches (in_progress/finalizing/cancelling)."""
        holding = ("in_progress", "finalizing", "cancelling")
        if self.config.hold_from_creation:
            holding += ("validating",)
        held = [
            b
            for b in self.batches.values()
            if b.status in holding and b is not exclude and b.model == model
        ]
        return sum(b.total_tokens for b in held), sum(len(b.requests) for b in held)

    # --- the event loop ----------------------------------------------------------------

    def run_to(self, now: float) -> None:
        """Run the world forward to `now`, event by event (never back)."""
        while True:
            event = self._next_event()
            if event is None or event[0] > now:
                self._process_until(now)
                break
            at, _priority, _seq, action, batch = event
            self._process_until(max(at, self.t))
            action(batch, self.t)
            self._plan()

    def _plan(self) -> None:
        """Fix which batches process, and how fast, from now until the next event.

        Progress between events is computed from this anchor, never from the last time
        someone looked, so the outcome is the same to the last bit however often anyone
        polls (and when a log is replayed).
        """
        running = [b for b in self.batches.values() if b.status == "in_progress" and not b.reached]
        rate = self.config.tokens_per_second
        if running and self.config.total_tokens_per_second > 0:
            rate = min(rate, self.config.total_tokens_per_second / len(running))
        for b in self.batches.values():
            b.anchor = b.processed
            b.running = False
        for b in running:
            b.running = True
        self._anchor_t, self._rate = self.t, rate

    def _next_event(self) -> tuple[float, int, int, Any, Batch] | None:
        cfg = self.config
        best: tuple[float, int, int, Any, Batch] | None = None
        for b in self.batches.values():
            candidates: list[tuple[float, int, Any]] = []
            if b.status == "validating":
                candidates.append((b.created_at + cfg.validating_seconds, 2, self._admit))
            elif b.status == "in_progress":
                if b.running:  # even if a poll or an equal batch took it to its target
                    reach = self._anchor_t + (b.target - b.anchor) / self._rate
                    candidates.append((reach, 0, self._reach_target))
                candidates.append((b.expires_at, 1, self.expire))
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
        if t <= self.t:
            return
        rate = self._rate
        finished: list[tuple[float, int, int, Batch]] = []
        for b in self.batches.values():
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
        self.t = t

    def _finish_through(self, batch: Batch, at: float) -> None:
        """Record results for every request whose tokens are already processed."""
        while batch.done < len(batch.order) and batch.prefix[batch.done] <= batch.processed + EPS:
            self._record_result(batch, at)

    # --- transitions -------------------------------------------------------------------

    def _event(self, batch: Batch, status: str, at: float) -> None:
        batch.status = status
        self.journal.record_event(BatchEvent(batch.id, status, at))
        self.unsaved = True
        self._plan()

    def fail(self, batch: Batch, at: float, errors: list[dict[str, Any]]) -> None:
        batch.errors = errors
        batch.times["failed_at"] = at
        if batch.status == "in_progress":  # failed from outside mid-run: keep what was billed
            self._finish_through(batch, at)
            self._write_files(batch, at)
        self._event(batch, "failed", at)

    def _admit(self, batch: Batch, at: float) -> None:
        """validating -> in_progress, or failed (bad input, a fault, or over a budget)."""
        if batch.validation_errors:
            self.fail(batch, at, batch.validation_errors)
            return
        fault = self.faults.take_batch_fault("batch_fail", batch.requests)
        if fault is not None:
            self.fail(
                batch,
                at,
                [line_error(fault.code or "server_error", None, fault.message or FAIL_MESSAGE)],
            )
            return
        model = batch.model or ""
        org = self.config.organization
        held_tokens, held_requests = self.enqueued(model, exclude=batch)
        token_limit = self.token_limits.get(model)
        if token_limit is not None and held_tokens + batch.total_tokens > token_limit:
            self.fail(
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
        request_limit = self.request_limits.get(model)
        if request_limit is not None and held_requests + len(batch.requests) > request_limit:
            self.fail(
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
        stall = self.faults.take_batch_fault("batch_expire", batch.requests)
        if stall is not None and stall.after_requests < len(order):
            batch.target = batch.prefix[stall.after_requests - 1] if stall.after_requests else 0.0
        cancel = self.faults.take_batch_fault("batch_cancel", batch.requests)
        if cancel is not None and cancel.after_requests < len(order):
            point = batch.prefix[cancel.after_requests - 1] if cancel.after_requests else 0.0
            if point <= batch.target:
                batch.target, batch.cancel_at_target = point, True
        batch.times["in_progress_at"] = at
        self._event(batch, "in_progress", at)
        if batch.cancel_at_target and batch.target <= EPS:
            self.start_cancelling(batch, at)

    def _reach_target(self, batch: Batch, at: float) -> None:
        batch.processed, batch.reached = batch.target, True
        self._finish_through(batch, at)
        if batch.cancel_at_target:
            self.start_cancelling(batch, at)
        elif batch.done == len(batch.order):
            batch.times["finalizing_at"] = at
            self._event(batch, "finalizing", at)
        # else: stalled by a batch_expire fault; it waits for its expiry

    def start_cancelling(self, batch: Batch, at: float) -> None:
        if batch.status == "in_progress":
            self._finish_through(batch, at)
        batch.times["cancelling_at"] = at
        self._event(batch, "cancelling", at)

    def _cancelled(self, batch: Batch, at: float) -> None:
        batch.times["cancelled_at"] = at
        self._write_files(batch, at)
        self._event(batch, "cancelled", at)

    def _complete(self, batch: Batch, at: float) -> None:
        batch.times["completed_at"] = at
        self._write_files(batch, at)
        self._event(batch, "completed", at)

    def expire(self, batch: Batch, at: float) -> None:
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

    def _write_files(self, batch: Batch, at: float) -> None:
        def store(kind: str, lines: list[bytes]) -> str | None:
            if not lines:
                return None
            name = f"{batch.id}_{kind}.jsonl"
            file_id = next(  # derived from the batch, so a replay finds the same id
                candidate
                for n in itertools.count()
                if (candidate := self._derived_id("file-", 22, BASE62, batch.id, name, n))
                not in self.files
            )
            data = b"".join(lines)
            return self.files.add(file_id, name, "batch_output", data, at, batch.output_ttl).id

        batch.output_file_id = store("output", batch.output_lines) or batch.output_file_id
        batch.error_file_id = store("error", batch.error_lines) or batch.error_file_id
        batch.output_lines, batch.error_lines = [], []

    # --- one request's result ----------------------------------------------------------

    def _record_result(self, batch: Batch, at: float) -> None:
        index = batch.order[batch.done]
        request = batch.requests[index]
        batch.done += 1
        self.unsaved = True
        line_id = self._derived_id("batch_req_", 32, HEX, batch.id, "line", index)
        request_id = self._derived_id("", 32, HEX, batch.id, "request", index)
        fault = self.faults.request_fault(request)
        if fault is not None:
            response = {
                "status_code": fault.status,
                "request_id": request_id,
                "body": error_body(fault.status, fault.message, fault.code),
            }
            batch.failed += 1
            target = batch.error_lines
        else:
            seed = f"{batch.id}:{request.custom_id}"
            body, completion = success_body(
                batch.endpoint,
                request.body,
                prompt_tokens=request.prompt_tokens,
                counter=self.counter,
                created=int(at),
                seed=seed,
                invalid_json=self._invalid_json(request, seed),
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
