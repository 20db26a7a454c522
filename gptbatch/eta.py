"""When will a batch in flight finish? A forecast from its progress, on our own clock.

The build polls on an interval that grows while nothing changes; a batch that finishes just
after a poll would hold its queue room, unseen, for most of an interval. So each poll feeds
the forecast a batch's `request_counts` and status, timed by the build's own clock (the
API's timestamps may be skewed, or, in the simulator, run faster than ours):

- in progress: the rate of completed requests between the first and the latest poll that
  saw it in progress gives when its last request should be done;
- finalizing: how long batches of this build took to finalize (first seen finalizing to
  seen finished) gives when this one should be finished.

The build wakes at the earliest forecast finish that is still ahead, never before a floor;
a forecast that passed without the batch finishing is dropped, so a wrong forecast costs at
most one extra poll per batch and status.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from gptbatch.remote import BatchInfo

__all__ = ["Forecast"]

FINALIZE_SAMPLES = 16  # recent finalizing durations kept
SLACK = 0.05  # wake this share of the remaining time after the forecast, so it has finished


@dataclass
class _Seen:
    first_at: float | None = None  # first poll that saw it in progress, with progress then
    first_done: int = 0
    finalizing_at: float | None = None
    due: float | None = None  # forecast finish, on our clock
    expired: bool = False  # the forecast passed without the batch finishing


@dataclass
class Forecast:
    """Forecast finish times of the batches in flight, from what each poll saw."""

    seen: dict[str, _Seen] = field(default_factory=dict)
    finalize_seconds: list[float] = field(default_factory=list)

    def observe(self, info: BatchInfo, now: float) -> None:
        """Take one poll's view of a batch."""
        seen = self.seen.setdefault(info.id, _Seen())
        if info.terminal:
            if seen.finalizing_at is not None and info.status == "completed":
                self.finalize_seconds.append(now - seen.finalizing_at)
                del self.finalize_seconds[:-FINALIZE_SAMPLES]
            del self.seen[info.id]
            return
        due = seen.due
        if info.status == "in_progress":
            due = self._processing_done(seen, info, now)
            if due is not None:
                due += self.finalizing()
        elif info.status == "finalizing" and seen.finalizing_at is None:
            # It began finalizing at some moment since the last poll: a forecast made while
            # it was in progress (which includes finalizing) is the better guess if still
            # ahead; else count from now.
            seen.finalizing_at = now
            if due is None or due <= now:
                due = now + self.finalizing() if self.finalize_seconds else None
        if due != seen.due:
            seen.due, seen.expired = due, False

    def _processing_done(self, seen: _Seen, info: BatchInfo, now: float) -> float | None:
        done = info.completed + info.failed
        if seen.first_at is None:
            seen.first_at, seen.first_done = now, done
            return None
        elapsed, progress = now - seen.first_at, done - seen.first_done
        if info.total and info.total <= done:
            return now  # every request is done: finalizing is next
        if elapsed <= 0 or progress <= 0:
            return None
        return now + (info.total - done) * elapsed / progress

    def finalizing(self) -> float:
        """Typical seconds from finalizing to finished in this build (0 until one is seen)."""
        return statistics.median(self.finalize_seconds) if self.finalize_seconds else 0.0

    def next_due(self, now: float) -> float | None:
        """The earliest forecast finish still ahead (with a little slack), if any."""
        ahead = []
        for seen in self.seen.values():
            if seen.due is None or seen.expired:
                continue
            if seen.due <= now:
                seen.expired = True  # it did not finish when forecast: poll as usual
                continue
            ahead.append(seen.due + SLACK * (seen.due - now))
        return min(ahead, default=None)
