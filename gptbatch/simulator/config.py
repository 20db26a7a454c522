"""Simulator settings and scripted faults, including the `--fault SPEC` mini-language."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from gptbatch.errors import UsageError

__all__ = ["FAULT_HELP", "FAULT_KINDS", "Fault", "SimConfig", "parse_fault", "parse_limit"]

MiB = 1024 * 1024


@dataclass(frozen=True)
class Fault:
    """One scripted misbehaviour. Build them with the class methods, or `parse_fault(spec)`.

    `count` is how many times the fault fires (0 = every time). Route faults match the
    HTTP method and a glob on the path; batch and request faults match a glob on custom_id
    (a batch matches when any of its requests does).
    """

    kind: str
    method: str = "*"
    path: str = "/v1/*"
    status: int = 500
    count: int = 1
    retry_after: float | None = None
    after_bytes: int = 0
    delay: float = 0.0
    custom_id: str = "*"
    attempts: int | None = None
    after_requests: int = 0
    code: str | None = None
    message: str | None = None
    limit: int = 0  # queue_full: the limit the 429 states (0: the model's configured one)
    unit: str = "tokens"  # queue_full: "tokens" or "requests"

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; one of {', '.join(FAULT_KINDS)}")
        if self.count < 0 or self.after_bytes < 0 or self.after_requests < 0 or self.delay < 0:
            raise ValueError(f"fault {self.kind}: count, sizes and delays must be >= 0")
        if self.attempts is not None and self.attempts < 1:
            raise ValueError(f"fault {self.kind}: attempts must be >= 1")
        if self.unit not in ("tokens", "requests"):
            raise ValueError(f"fault {self.kind}: unit must be tokens or requests")
        if not 100 <= self.status <= 599:
            raise ValueError(f"fault {self.kind}: status {self.status} is not an HTTP status")

    # -- constructors, one per kind ------------------------------------------------------

    @classmethod
    def http(
        cls,
        status: int = 500,
        *,
        method: str = "*",
        path: str = "/v1/*",
        count: int = 1,
        retry_after: float | None = None,
    ) -> Fault:
        """Answer matching calls with an HTTP error (429, 500, ...) instead of handling them."""
        return cls(
            "http", method=method, path=path, status=status, count=count, retry_after=retry_after
        )

    @classmethod
    def drop_download(
        cls, after_bytes: int = 0, *, path: str = "/v1/files/*/content", count: int = 1
    ) -> Fault:
        """Close the connection after sending `after_bytes` bytes of a file's content."""
        return cls("drop", method="GET", path=path, after_bytes=after_bytes, count=count)

    @classmethod
    def slow(cls, delay: float, *, method: str = "*", path: str = "/v1/*", count: int = 0) -> Fault:
        """Wait `delay` real seconds before answering matching calls."""
        return cls("slow", method=method, path=path, delay=delay, count=count)

    @classmethod
    def lost_reply(
        cls, *, method: str = "POST", path: str = "/v1/batches", count: int = 1
    ) -> Fault:
        """Handle the call (the batch IS created), then drop the connection without replying."""
        return cls("lost_reply", method=method, path=path, count=count)

    @classmethod
    def queue_full(
        cls, limit: int = 0, *, unit: str = "tokens", count: int = 1, path: str = "/v1/batches"
    ) -> Fault:
        """Answer batches.create with 429 "Enqueued token (or request) limit reached"."""
        return cls(
            "queue_full", method="POST", path=path, status=429, count=count, limit=limit, unit=unit
        )

    @classmethod
    def request_error(
        cls,
        custom_id: str = "*",
        *,
        status: int = 400,
        attempts: int | None = None,
        message: str | None = None,
        code: str | None = None,
    ) -> Fault:
        """Fail matching requests inside a batch: for ever, or only their first `attempts`."""
        return cls(
            "request",
            custom_id=custom_id,
            status=status,
            attempts=attempts,
            message=message,
            code=code,
            count=0,
        )

    @classmethod
    def batch_fail(
        cls,
        custom_id: str = "*",
        *,
        count: int = 1,
        code: str = "server_error",
        message: str | None = None,
    ) -> Fault:
        """Make the next `count` matching batches fail at the end of validation."""
        return cls("batch_fail", custom_id=custom_id, count=count, code=code, message=message)

    @classmethod
    def invalid_json(cls, custom_id: str = "*", *, attempts: int | None = None) -> Fault:
        """Answer matching requests that ask for JSON with text that does not parse: for
        ever, or only their first `attempts`."""
        return cls("invalid_json", custom_id=custom_id, attempts=attempts, count=0)

    @classmethod
    def batch_expire(
        cls, custom_id: str = "*", *, count: int = 1, after_requests: int = 0
    ) -> Fault:
        """Stall matching batches after `after_requests` results so they expire."""
        return cls("batch_expire", custom_id=custom_id, count=count, after_requests=after_requests)

    @classmethod
    def batch_cancel(
        cls, custom_id: str = "*", *, count: int = 1, after_requests: int = 0
    ) -> Fault:
        """Cancel matching batches from outside once `after_requests` results are done."""
        return cls("batch_cancel", custom_id=custom_id, count=count, after_requests=after_requests)


FAULT_KINDS = (
    "http",
    "drop",
    "slow",
    "lost_reply",
    "request",
    "invalid_json",
    "batch_fail",
    "batch_expire",
    "batch_cancel",
    "queue_full",
)

# Which keys each kind takes in the spec language (beyond the kind itself).
_SPEC_KEYS: dict[str, tuple[str, ...]] = {
    "http": ("status", "method", "path", "count", "retry_after"),
    "drop": ("after_bytes", "path", "count"),
    "slow": ("delay", "method", "path", "count"),
    "lost_reply": ("method", "path", "count"),
    "request": ("custom_id", "status", "attempts", "message", "code"),
    "invalid_json": ("custom_id", "attempts"),
    "batch_fail": ("custom_id", "count", "code", "message"),
    "batch_expire": ("custom_id", "count", "after_requests"),
    "batch_cancel": ("custom_id", "count", "after_requests"),
    "queue_full": ("limit", "unit", "count"),
}

_SPEC_DEFAULTS: dict[str, dict[str, Any]] = {
    "drop": {"method": "GET", "path": "/v1/files/*/content"},
    "slow": {"count": 0},
    "lost_reply": {"method": "POST", "path": "/v1/batches"},
    "request": {"status": 400, "count": 0},
    "invalid_json": {"count": 0},
    "batch_fail": {"code": "server_error"},
    "queue_full": {"method": "POST", "path": "/v1/batches", "status": 429},
}

FAULT_HELP = """\
Fault SPEC mini-language: KIND[:KEY=VALUE,KEY=VALUE...]  (count=0 means every time)
  http:status=429,method=POST,path=/v1/batches,count=2,retry_after=1
                        answer matching calls with an HTTP error (default 500, path /v1/*)
  drop:after_bytes=1000,count=1
                        close the connection mid-download of a file's content
  slow:delay=2,path=/v1/batches*
                        wait DELAY real seconds before answering
  lost_reply:count=1    create the batch, then drop the connection without replying
                        (the SDK retries and creates a second batch)
  request:custom_id=req-1*,status=400
                        fail matching requests inside batches for ever (error file)
  request:custom_id=req-2*,status=500,attempts=1
                        fail only the first ATTEMPTS tries of each matching request
  invalid_json:custom_id=rv*,attempts=1
                        answer matching requests that ask for JSON with text that is not
                        JSON (for ever, or only their first ATTEMPTS tries)
  batch_fail:custom_id=*,count=1,code=server_error
                        fail the next matching batch at the end of validation
  batch_expire:after_requests=3
                        stall the next matching batch after 3 results so it expires
  batch_cancel:after_requests=3
                        cancel the next matching batch from outside after 3 results
  queue_full:limit=90000,unit=tokens,count=1
                        answer the next batches.create with 429 "Enqueued token limit
                        reached ... Limit: 90,000" (limit 0: the model's configured one)
Paths and custom_ids are shell-style globs (*, ?, [...]); dashes in KIND are accepted."""


def _convert(kind: str, key: str, raw: str, spec: str) -> Any:
    ints = {"status", "count", "after_bytes", "attempts", "after_requests", "limit"}
    floats = {"retry_after", "delay"}
    try:
        if key in ints:
            return int(raw)
        if key in floats:
            return float(raw)
    except ValueError:
        raise UsageError(
            f"--fault {spec!r}: {key}={raw!r} is not a number: write e.g. {key}=2"
        ) from None
    if key == "method":
        return raw.upper()
    return raw


def parse_fault(spec: str) -> Fault:
    """Parse one `--fault` SPEC (see FAULT_HELP) into a Fault; raise UsageError if invalid."""
    head, _, rest = spec.strip().partition(":")
    kind = head.strip().lower().replace("-", "_")
    if kind not in _SPEC_KEYS:
        raise UsageError(
            f"--fault {spec!r}: unknown kind {head!r}: use one of {', '.join(FAULT_KINDS)}"
        )
    values: dict[str, Any] = dict(_SPEC_DEFAULTS.get(kind, {}))
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, raw = item.partition("=")
        key = key.strip().lower().replace("-", "_")
        if not eq or key not in _SPEC_KEYS[kind]:
            raise UsageError(
                f"--fault {spec!r}: {item!r} is not KEY=VALUE with a key of {kind}: "
                f"use {', '.join(_SPEC_KEYS[kind])}"
            )
        values[key] = _convert(kind, key, raw.strip(), spec)
    try:
        return Fault(kind, **values)
    except ValueError as exc:
        raise UsageError(f"--fault {spec!r}: {exc}") from None


def parse_limit(text: str, option: str) -> tuple[str, int]:
    """Parse MODEL=N (N may use _ or , separators) for --token-limit/--request-limit."""
    model, eq, raw = text.rpartition("=")
    try:
        value = int(raw.replace(",", "").replace("_", ""))
    except ValueError:
        value = -1
    if not eq or not model or value < 0:
        raise UsageError(f"{option} {text!r}: expected MODEL=N, e.g. {option} gpt-4o-mini=2000000")
    return model, value


@dataclass(frozen=True)
class SimConfig:
    """How the simulated service behaves. Times are simulated seconds."""

    time_scale: float = 1.0  # simulated seconds per real second
    tokens_per_second: float = 2_000.0  # processing speed of one batch
    total_tokens_per_second: float = 20_000.0  # shared by all running batches (0 = no cap)
    validating_seconds: float = 5.0
    finalizing_seconds: float = 5.0
    cancelling_seconds: float = 5.0
    completion_window_seconds: float = 86_400.0  # how long any window lasts here
    completion_windows: tuple[str, ...] = ("24h",)  # what batches.create accepts
    # Which service's wire quirks to serve (simulator/flavours.py): openai, groq, together,
    # perplexity.
    flavour: str = "openai"
    token_limits: dict[str, int] = field(default_factory=dict)  # enqueued tokens per model
    # True: a batch holds its tokens from creation (validating included), as the real
    # queue does. False, the default (the simulator's behaviour before this option, which
    # earlier tests were written against; `--simulate` and `gptbatch simulator` keep it): only
    # from in_progress until it ends, so a validating batch leaves room the real queue would
    # not.
    hold_from_creation: bool = False
    request_limits: dict[str, int] = field(default_factory=dict)  # enqueued requests per model
    # Models the service knows besides gptbatch's list (gptbatch.pricing.known_model): a batch
    # naming any other fails validation with model_not_found, as at the real API. any_model:
    # accept every name (tests with made-up models, deployments of other providers).
    models: tuple[str, ...] = ()
    any_model: bool = False
    max_requests_per_batch: int = 50_000
    max_bytes_per_batch: int = 200 * MiB
    max_embedding_inputs: int = 50_000
    max_upload_bytes: int = 512 * MiB
    organization: str = "org-simulator"
    seed: int = 0
    # The fraction of requests asking for JSON that get text that does not parse instead,
    # drawn per attempt (a request sent again may come back valid).
    invalid_json: float = 0.0
    faults: tuple[Fault, ...] = ()
    start_time: float | None = None  # simulated epoch at start (None: the real time)
    # Where to save state so a simulator restarted on it continues (None: memory only; see
    # gptbatch.simulator.state). A restart needs the same settings, except time_scale,
    # start_time, limits and faults: changed limits and faults apply from the restart on.
    state_dir: str | None = None
    # Count tokens with fastokens where it is exact (results.TokenCounter): the same counts,
    # ~10x faster, for a simulator serving millions of requests (benchmarks).
    fast_counter: bool = False
    # Read each batch's input file on a thread of its own, so batches.create answers at once
    # (as the real API does: validation happens after). Outcomes are the same: the engine
    # waits for the reading wherever it needs the requests (admission at the end of
    # validating, a listing that shows them); only the reply's `model` waits for in_progress.
    background_validation: bool = False

    @classmethod
    def fast(cls, **overrides: Any) -> SimConfig:
        """A config for tests: a small batch completes in about 0.2 s of real time."""
        values: dict[str, Any] = {
            "time_scale": 100.0,
            "validating_seconds": 10.0,
            "finalizing_seconds": 10.0,
            "cancelling_seconds": 10.0,
            "tokens_per_second": 5_000.0,
            "total_tokens_per_second": 50_000.0,
        }
        values.update(overrides)
        return cls(**values)

    def replay_settings(self) -> dict[str, Any]:
        """The settings a saved state can only be replayed with (all but the per-run ones)."""
        per_run = (
            "time_scale",
            "start_time",
            "state_dir",
            "token_limits",
            "request_limits",
            "faults",
            "invalid_json",
            "models",
            "any_model",
            "fast_counter",
            "background_validation",
        )
        return {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in per_run
        }

    def replace(self, **changes: Any) -> SimConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)
