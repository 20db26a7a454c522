"""What the simulator saw and did: every API call, every billed request, every status change."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["ApiCall", "BatchEvent", "Billed", "Journal"]


@dataclass(frozen=True)
class ApiCall:
    """One HTTP call the server answered (or dropped, when `fault` says so)."""

    method: str
    path: str
    status: int
    at: float  # simulated time
    query: str = ""
    retry_count: int = 0  # the SDK's x-stainless-retry-count header
    fault: str | None = None  # the fault that shaped the answer, if any


@dataclass(frozen=True)
class Billed:
    """A request the simulator produced a successful (200) result for, and so charged."""

    batch_id: str
    custom_id: str
    model: str
    prompt_tokens: int
    at: float
    completion_tokens: int = 0


@dataclass(frozen=True)
class BatchEvent:
    """A batch entering a status."""

    batch_id: str
    status: str
    at: float


class Journal:
    """Append-only, thread-safe records a test can query."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: list[ApiCall] = []
        self._billed: list[Billed] = []
        self._events: list[BatchEvent] = []
        self._listeners: list[Callable[[ApiCall], None]] = []

    @property
    def calls(self) -> list[ApiCall]:
        """Every API call, in order."""
        with self._lock:
            return list(self._calls)

    @property
    def billed(self) -> list[Billed]:
        """Every billed request, in order."""
        with self._lock:
            return list(self._billed)

    @property
    def events(self) -> list[BatchEvent]:
        """Every batch status change, in order."""
        with self._lock:
            return list(self._events)

    def count(self, method: str | None = None, path_prefix: str = "") -> int:
        """Calls with this method (None or "*": any) whose path starts with path_prefix."""
        want = None if method in (None, "*") else method.upper()
        with self._lock:
            return sum(
                1
                for c in self._calls
                if (want is None or c.method == want) and c.path.startswith(path_prefix)
            )

    def billed_counts(self) -> Counter[str]:
        """How many times each custom_id was billed (a correct client keeps every count 1)."""
        with self._lock:
            return Counter(b.custom_id for b in self._billed)

    def on_call(self, listener: Callable[[ApiCall], None]) -> None:
        """Call `listener` with every recorded API call (the CLI prints them)."""
        with self._lock:
            self._listeners.append(listener)

    def record_call(self, call: ApiCall) -> None:
        """Append an API call."""
        with self._lock:
            self._calls.append(call)
            listeners = list(self._listeners)
        for listener in listeners:
            listener(call)

    def record_billed(self, billed: Billed) -> None:
        """Append a billed request."""
        with self._lock:
            self._billed.append(billed)

    def record_event(self, event: BatchEvent) -> None:
        """Append a status change."""
        with self._lock:
            self._events.append(event)
