"""When will a batch in flight finish? A forecast from what the polls saw, on our own clock.

The build polls on an interval that grows while nothing changes, and a batch that finishes
just after a poll holds its queue room, unseen, until the next one. So each poll feeds the
forecast a batch's status and `request_counts`, timed by the build's own clock (the API's
timestamps may be skewed, or, in the simulator, run faster than ours), and the forecast
gives a window in which the batch should finish:

- in progress: from the rate of completed requests since the first poll that saw it in
  progress, its last request is done within one request's time of the extrapolation;
- finalizing: it began finalizing between the previous poll and this one, and finalizing
  takes about as long as it took this build's earlier batches.

Both add the learned finalizing time. The build wakes at the start of the earliest window
and polls a few times across it (a quarter of its width apart, never below a floor), so a
finish is seen soon after it happens. A window that passes without the batch finishing is
dropped until a later poll gives a new one, so a wrong forecast costs a few calls at most.

It also learns, from the API's own timestamps, how long this queue takes to validate a
batch (created_at -> in_progress_at) and to finalize one (finalizing_at -> completed_at).
Where validation has never been faster than the slowest finalizing seen, a batch created
once another is seen finalizing is admitted after that one completes (`early_release`):
then the build may create it then (scheduler.py), and, with `watch_start`, wakes for the
moment an in-progress batch should begin finalizing too, so that is seen promptly.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from gptbatch.api.remote import BatchInfo

__all__ = ["Forecast"]

FINALIZE_SAMPLES = 16  # recent finalizing durations kept
STEPS = 4  # polls across a window
TIMING_SAMPLES = 32  # recent validating / finalizing durations (API time) kept
EARLY_SAMPLES = 2  # ... needed of each before a batch is created for a finalizing one's room


@dataclass
class _Seen:
    last_at: float | None = None  # the previous poll that saw it
    first_at: float | None = None  # the first poll that saw it in progress ...
    first_done: int = 0  # ... and how many of its requests were done then
    finalizing_from: float | None = None  # when it began finalizing (midpoint estimate)
    window: tuple[float, float] | None = None  # it should finish within this span
    start: tuple[float, float] | None = None  # it should begin finalizing within this span


@dataclass
class Forecast:
    """Windows in which the batches in flight should finish, from what each poll saw."""

    seen: dict[str, _Seen] = field(default_factory=dict)
    finalize_seconds: list[float] = field(default_factory=list)
    # batch id -> seconds (API time) it validated / finalized; keyed so a batch seen again
    # (its download failed) is not counted twice
    validated: dict[str, int] = field(default_factory=dict)
    finalized: dict[str, int] = field(default_factory=dict)
    watch_start: bool = False  # also wake when a batch should begin finalizing
    began_finalizing: dict[str, int] = field(default_factory=dict)  # id -> API time, while so

    def observe(self, info: BatchInfo, now: float) -> None:
        """Take one poll's view of a batch."""
        self._time(info)
        seen = self.seen.setdefault(info.id, _Seen())
        previous, seen.last_at = seen.last_at, now
        since = previous if previous is not None else now  # it changed within [since, now]
        if info.terminal:
            if info.status == "completed" and seen.finalizing_from is not None:
                self.finalize_seconds.append((since + now) / 2 - seen.finalizing_from)
                del self.finalize_seconds[:-FINALIZE_SAMPLES]
            del self.seen[info.id]
            return
        if info.status == "in_progress":
            seen.window = self._in_progress(seen, info, now)
        else:
            seen.start = None
        if info.status == "finalizing" and seen.finalizing_from is None:
            seen.finalizing_from = (since + now) / 2
            known = self.finalizing()
            seen.window = (since + known, now + known) if known is not None else None

    def _in_progress(self, seen: _Seen, info: BatchInfo, now: float) -> tuple[float, float] | None:
        done = info.completed + info.failed
        if seen.first_at is None:
            seen.first_at, seen.first_done = now, done
            return None
        elapsed, progress = now - seen.first_at, done - seen.first_done
        if elapsed <= 0 or progress <= 0:
            return None
        per_request = elapsed / progress
        start = now + max(0, info.total - done) * per_request
        seen.start = (start - per_request, start + per_request)
        end = start + (self.finalizing() or 0.0)
        return (end - per_request, end + per_request)

    def _time(self, info: BatchInfo) -> None:
        """Learn how long the API took to validate and to finalize this batch."""
        if info.status == "finalizing" and info.finalizing_at:
            self.began_finalizing[info.id] = info.finalizing_at
        else:
            self.began_finalizing.pop(info.id, None)
        if info.in_progress_at and info.created_at and info.id not in self.validated:
            self.validated[info.id] = info.in_progress_at - info.created_at
            _trim(self.validated)
        finished = info.status == "completed" and info.finalizing_at and info.finished_at
        if finished and info.id not in self.finalized:
            self.finalized[info.id] = (info.finished_at or 0) - (info.finalizing_at or 0)
            _trim(self.finalized)

    def early_release(self) -> bool:
        """Is a batch created now, for the room a batch seen finalizing frees, admitted only
        after that one completes? So far as this queue has shown: its fastest validation
        was no shorter than its slowest finalizing (EARLY_SAMPLES of each at least)."""
        validated, finalized = self.validated.values(), self.finalized.values()
        if len(validated) < EARLY_SAMPLES or len(finalized) < EARLY_SAMPLES:
            return False
        return min(validated) >= max(finalized)

    def finalizing(self) -> float | None:
        """Typical seconds from finalizing to finished in this build (None until seen)."""
        return statistics.median(self.finalize_seconds) if self.finalize_seconds else None

    def next_poll(self, now: float) -> float | None:
        """When to poll next for the earliest forecast finish, if any window is open."""
        wake = None
        for seen in self.seen.values():
            if seen.window is not None:
                at = _due(seen.window, now)
                if at is None:
                    seen.window = None  # it did not finish when forecast: poll as usual
                else:
                    wake = at if wake is None else min(wake, at)
            if seen.start is not None and self.watch_start:
                at = _due(seen.start, now)
                if at is None:
                    seen.start = None
                else:
                    wake = at if wake is None else min(wake, at)
        return wake


def _due(window: tuple[float, float], now: float) -> float | None:
    """When to poll for a window (None: it has passed)."""
    low, high = window
    if high < now:
        return None
    return low if now < low else now + (high - low) / STEPS


def _trim(samples: dict[str, int]) -> None:
    """Keep the TIMING_SAMPLES most recent (dicts keep insertion order)."""
    for key in list(samples)[:-TIMING_SAMPLES]:
        del samples[key]
