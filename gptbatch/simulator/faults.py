"""Armed faults: which fault a route, a batch or a request meets, and how many uses are left.

A plain table: it keeps no clock and takes no lock. A route fault's use is a change that
`BatchService` records (so a restart does not give it back); batch and request faults are
taken while the event engine runs, which a replay repeats exactly.
"""

from __future__ import annotations

import fnmatch
import itertools
from collections.abc import Iterable
from dataclasses import dataclass

from gptbatch.simulator.config import Fault
from gptbatch.simulator.validation import ApiError, InputRequest

__all__ = ["ArmedFault", "FaultTable", "queue_full_error"]


@dataclass
class ArmedFault:
    """A fault with its remaining count (None: unlimited)."""

    id: int
    fault: Fault
    remaining: int | None


class FaultTable:
    """The faults armed, in the order they were armed; each has an id for its uses."""

    def __init__(self) -> None:
        self._faults: list[ArmedFault] = []
        self._fault_ids = itertools.count(1)
        # Attempts seen per (armed fault id, custom_id): a request fault fails the first few.
        self._attempts: dict[tuple[int, str], int] = {}

    def arm(self, fault: Fault) -> None:
        remaining = None if fault.count == 0 else fault.count
        self._faults.append(ArmedFault(next(self._fault_ids), fault, remaining))

    def clear(self) -> None:
        """Disarm every fault (ids go on counting, attempts stay counted)."""
        self._faults.clear()

    def use(self, fault_id: int) -> None:
        """Take one of the count of the armed fault `fault_id` (a replayed or live use)."""
        for armed in self._faults:
            if armed.id == fault_id and armed.remaining:
                armed.remaining -= 1

    def active(self) -> list[Fault]:
        """The faults still armed."""
        return [a.fault for a in self._faults if a.remaining != 0]

    def route_fault(self, kind: str, method: str, path: str) -> ArmedFault | None:
        """The first armed fault of `kind` matching this call (its use not yet taken)."""
        for armed in self._faults:
            f = armed.fault
            if f.kind != kind or armed.remaining == 0:
                continue
            if f.method not in ("*", method.upper()) or not fnmatch.fnmatchcase(path, f.path):
                continue
            return armed
        return None

    def take_batch_fault(self, kind: str, requests: Iterable[InputRequest]) -> Fault | None:
        """The first armed fault of `kind` matching a request of a batch, taking one use."""
        for armed in self._faults:
            if armed.fault.kind != kind or armed.remaining == 0:
                continue
            pattern = armed.fault.custom_id
            if any(fnmatch.fnmatchcase(r.custom_id, pattern) for r in requests):
                if armed.remaining is not None:
                    armed.remaining -= 1
                return armed.fault
        return None

    def request_fault(self, request: InputRequest, kind: str = "request") -> Fault | None:
        """The request fault (or invalid_json fault) hitting this attempt of the request, if
        any (counts attempts)."""
        for armed in self._faults:
            fault = armed.fault
            if fault.kind != kind or not fnmatch.fnmatchcase(request.custom_id, fault.custom_id):
                continue
            if fault.attempts is None:
                return fault
            key = (armed.id, request.custom_id)
            self._attempts[key] = self._attempts.get(key, 0) + 1
            if self._attempts[key] <= fault.attempts:
                return fault
        return None


def queue_full_error(
    fault: Fault, model: str, limits: dict[str, int], organization: str
) -> ApiError:
    """The 429 a full queue gives batches.create for `model` (`limits`: those of fault.unit)."""
    limit = fault.limit or limits.get(model, 0)
    unit = "token" if fault.unit == "tokens" else "request"
    return ApiError(
        429,
        f"Enqueued {unit} limit reached for {model} in organization "
        f"{organization}. Limit: {limit:,} enqueued {fault.unit}. "
        "Please try again once some in_progress batches have been completed.",
        type="invalid_request_error",
        code=f"{unit}_limit_exceeded",
    )
