"""Anthropic's Message Batches, as the `anthropic` SDK calls them, on the simulator's clock.

Requests come inline (`{custom_id, params}`); a batch is `in_progress` (request_counts all
`processing`, no progress to see) until it ends, `canceling` after a cancel, then `ended`
with every request's result at once. Results are JSONL in no fixed order (shuffled per
batch), each `{custom_id, result: {type: succeeded|errored|canceled|expired, ...}}`. Every
succeeded request is billed in the shared journal, like an OpenAI batch's. A create and a
cancel are records (`apply`): with a state directory the service saves them (the create's
body as a blob) before they take effect and replays them on restart, as it does OpenAI's.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import random
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gptbatch.simulator.journal import BatchEvent, Billed, Journal
from gptbatch.simulator.validation import ApiError

__all__ = ["AnthropicBatches", "AnthropicError"]

MAX_REQUESTS = 100_000
MAX_BYTES = 256 * 1000 * 1000
EXPIRES_AFTER = 86_400.0  # a batch ends 24 h after creation, expired requests and all
RESULTS_KEPT = 29 * 86_400.0  # results stay downloadable 29 days after creation
CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


class AnthropicError(ApiError):
    """An error in Anthropic's shape: {"type": "error", "error": {"type", "message"}}."""

    def body(self) -> dict[str, Any]:
        return {"type": "error", "error": {"type": self.type, "message": self.message}}


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat().replace("+00:00", "Z")


@dataclass
class _Batch:
    id: str
    created: float
    ends: float  # when processing ends by itself
    requests: list[dict[str, Any]]
    status: str = "in_progress"
    cancel_at: float | None = None
    ended: float | None = None
    counts: dict[str, int] = field(default_factory=dict)
    results: bytes = b""


class AnthropicBatches:
    """The /v1/messages/batches routes' state: batches by id, in creation order."""

    def __init__(
        self,
        now: Callable[[], float],
        journal: Journal,
        *,
        processing_seconds: float = 10.0,
        entropy: Callable[[int], bytes] | None = None,
    ) -> None:
        self.now = now
        self.journal = journal
        self.processing_seconds = processing_seconds
        self._entropy = entropy
        self._lock = threading.RLock()
        self._batches: dict[str, _Batch] = {}
        self._serial = 0
        # custom_ids whose next result is `errored` (type), once each: {custom_id: error type}
        self.errored: dict[str, str] = {}
        # Saves a record (and its blob) then applies it; the service's, with a state directory.
        self.commit: Callable[[dict[str, Any], bytes | None], Any] = self.apply

    # --- routes ----------------------------------------------------------------------------

    def create(self, body: bytes, base: str) -> dict[str, Any]:
        if len(body) > MAX_BYTES:
            raise AnthropicError(
                413, f"request body is over {MAX_BYTES:,} bytes", type="request_too_large"
            )
        try:
            params = json.loads(body or b"{}")
        except ValueError:
            raise AnthropicError(400, "request body is not valid JSON") from None
        requests = params.get("requests") if isinstance(params, dict) else None
        if not isinstance(requests, list) or not requests:
            raise AnthropicError(400, "requests: Field required (a non-empty list)")
        if len(requests) > MAX_REQUESTS:
            raise AnthropicError(400, f"requests: at most {MAX_REQUESTS:,} requests per batch")
        seen: set[str] = set()
        for i, req in enumerate(requests):
            _check_request(i, req, seen)
        with self._lock:
            now = self.now()
            batch_id = ""
            while not batch_id or batch_id in self._batches:
                self._serial += 1
                seed = self._entropy(12) if self._entropy else f"{now}:{self._serial}".encode()
                batch_id = "msgbatch_01" + hashlib.sha256(seed + body[:4096]).hexdigest()[:22]
            record = {
                "op": "anthropic_batch",
                "at": now,
                "id": batch_id,
                "ends": now + self.processing_seconds,
                "bytes": len(body),
            }
            return self._public(self.commit(record, body), base)

    def apply(self, record: dict[str, Any], data: bytes | None = None) -> _Batch:
        """Make a create or cancel happen at its record's time (live, or replayed)."""
        at = float(record["at"])
        with self._lock:
            if record["op"] == "anthropic_batch":
                if data is None:
                    raise ValueError("an anthropic_batch record needs its body")
                requests = json.loads(data)["requests"]
                batch = _Batch(record["id"], at, float(record["ends"]), requests)
                self._batches[batch.id] = batch
                self.journal.record_event(BatchEvent(batch.id, "in_progress", at))
                return batch
            if record["op"] == "anthropic_cancel":
                self._advance(at)
                batch = self._batches[record["id"]]
                if batch.status == "in_progress":
                    batch.status = "canceling"
                    batch.cancel_at = at
                    self.journal.record_event(BatchEvent(batch.id, "canceling", at))
                return batch
        raise ValueError(f"unknown record {record['op']!r}")

    def retrieve(self, batch_id: str, base: str) -> dict[str, Any]:
        with self._lock:
            return self._public(self._get(batch_id), base)

    def list(
        self, base: str, *, limit: int, after_id: str | None, before_id: str | None
    ) -> dict[str, Any]:
        """Newest first; after_id: the page after that id; before_id: the page before it."""
        limit = max(1, min(limit, 1000))
        with self._lock:
            self._advance()
            order = list(reversed(self._batches.values()))  # newest first: creation order
            ids = [b.id for b in order]
            if after_id is not None:
                start = ids.index(self._get(after_id).id) + 1
                page, more = order[start : start + limit], len(order) > start + limit
            elif before_id is not None:
                end = ids.index(self._get(before_id).id)
                page, more = order[max(0, end - limit) : end], end - limit > 0
            else:
                page, more = order[:limit], len(order) > limit
            data = [self._public(b, base) for b in page]
        return {
            "data": data,
            "has_more": more,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }

    def cancel(self, batch_id: str, base: str) -> dict[str, Any]:
        with self._lock:
            batch = self._get(batch_id)
            if batch.status == "in_progress":
                record = {"op": "anthropic_cancel", "at": self.now(), "id": batch.id}
                batch = self.commit(record, None)
            return self._public(batch, base)

    def results(self, batch_id: str) -> bytes:
        with self._lock:
            batch = self._get(batch_id)
            if batch.status != "ended":
                raise AnthropicError(
                    404, f"batch {batch_id} has not ended: no results yet", type="not_found_error"
                )
            if self.now() > batch.created + RESULTS_KEPT:
                raise AnthropicError(404, "results have expired", type="not_found_error")
            return batch.results

    # --- for tests -------------------------------------------------------------------------

    def ids(self) -> list[str]:
        with self._lock:
            return list(self._batches)

    def requests_of(self, batch_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._get(batch_id).requests)

    def finish_now(self, batch_id: str) -> None:
        """Process a batch now, ahead of the others (the service's order is its own)."""
        with self._lock:
            batch = self._get(batch_id)
            batch.ends = min(batch.ends, self.now())

    # --- the world -------------------------------------------------------------------------

    def _get(self, batch_id: str) -> _Batch:
        self._advance()
        batch = self._batches.get(batch_id)
        if batch is None:
            raise AnthropicError(404, f"batch {batch_id} not found", type="not_found_error")
        return batch

    def _advance(self, until: float | None = None) -> None:
        now = self.now() if until is None else until
        for batch in self._batches.values():
            if batch.status == "canceling":
                self._end(batch, max(now, batch.cancel_at or now), "canceled")
            elif batch.status == "in_progress" and now >= min(
                batch.ends, expiry := batch.created + EXPIRES_AFTER
            ):
                if batch.ends <= expiry:  # processed in time
                    self._end(batch, batch.ends, None)
                else:  # still unprocessed 24 h after creation
                    self._end(batch, expiry, "expired")

    def _end(self, batch: _Batch, at: float, unfinished: str | None) -> None:
        """Every request's result at once, shuffled: no order is promised."""
        counts = dict.fromkeys(("succeeded", "errored", "canceled", "expired"), 0)
        lines = []
        for req in batch.requests:
            cid = req["custom_id"]
            if unfinished is not None:
                result: dict[str, Any] = {"type": unfinished}
            elif cid in self.errored:
                kind = self.errored.pop(cid)
                err = {"type": kind, "message": f"simulated {kind}"}
                result = {"type": "errored", "error": {"type": "error", "error": err}}
            else:
                message, prompt, completion = _message(req["params"])
                result = {"type": "succeeded", "message": message}
                self.journal.record_billed(
                    Billed(batch.id, cid, str(req["params"]["model"]), prompt, at, completion)
                )
            counts[result["type"]] += 1
            lines.append(json.dumps({"custom_id": cid, "result": result}).encode() + b"\n")
        random.Random(batch.id).shuffle(lines)
        batch.results = b"".join(lines)
        batch.counts = counts
        batch.status = "ended"
        batch.ended = at
        self.journal.record_event(BatchEvent(batch.id, "ended", at))

    def _public(self, batch: _Batch, base: str) -> dict[str, Any]:
        counts = batch.counts or {"succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        ended = batch.status == "ended"
        return {
            "id": batch.id,
            "type": "message_batch",
            "processing_status": batch.status,
            "request_counts": {"processing": 0 if ended else len(batch.requests), **counts},
            "created_at": _iso(batch.created),
            "expires_at": _iso(batch.created + EXPIRES_AFTER),
            "ended_at": _iso(batch.ended),
            "cancel_initiated_at": _iso(batch.cancel_at),
            "archived_at": None,
            "results_url": f"{base}/v1/messages/batches/{batch.id}/results" if ended else None,
        }


def _check_request(index: int, req: Any, seen: set[str]) -> None:
    where = f"requests.{index}"
    if not isinstance(req, dict) or set(req) != {"custom_id", "params"}:
        raise AnthropicError(400, f"{where}: each request is {{custom_id, params}}")
    cid = req["custom_id"]
    if not isinstance(cid, str) or not CUSTOM_ID.match(cid):
        raise AnthropicError(400, f"{where}.custom_id: must match ^[a-zA-Z0-9_-]{{1,64}}$")
    if cid in seen:
        raise AnthropicError(400, f"{where}.custom_id: duplicate custom_id {cid!r} in the batch")
    seen.add(cid)
    params = req["params"]
    if not isinstance(params, dict):
        raise AnthropicError(400, f"{where}.params: must be an object")
    if not isinstance(params.get("model"), str):
        raise AnthropicError(400, f"{where}.params.model: Field required")
    if not isinstance(params.get("max_tokens"), int) or params["max_tokens"] < 1:
        raise AnthropicError(400, f"{where}.params.max_tokens: Field required (>= 1)")
    if not isinstance(params.get("messages"), list) or not params["messages"]:
        raise AnthropicError(400, f"{where}.params.messages: a non-empty list is required")
    if params.get("stream"):
        raise AnthropicError(400, f"{where}.params.stream: batches do not stream")


def _message(params: dict[str, Any]) -> tuple[dict[str, Any], int, int]:
    """A deterministic Message for params (its text derives from the params' digest)."""
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":")).encode()
    digest = hashlib.sha256(canonical).hexdigest()
    prompt = max(1, len(canonical) // 4)  # the simulator's own rough count
    text = f"reply {digest[:16]}"
    completion = min(int(params["max_tokens"]), 4)
    return (
        {
            "id": "msg_01" + digest[:22],
            "type": "message",
            "role": "assistant",
            "model": params["model"],
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": prompt, "output_tokens": completion},
        },
        prompt,
        completion,
    )
