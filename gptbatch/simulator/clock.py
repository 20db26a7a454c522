"""The simulator's clock: simulated epoch seconds that run `time_scale` times faster than real."""

from __future__ import annotations

import threading
import time


class SimClock:
    """Simulated time: `now()` advances at `time_scale` simulated seconds per real second.

    `time_scale = 0` freezes time so a test moves it only with `advance()`. Changing the
    scale keeps `now()` continuous; simulated time never runs backwards.
    """

    def __init__(self, time_scale: float = 1.0, *, start: float | None = None) -> None:
        if time_scale < 0:
            raise ValueError(f"time_scale must be >= 0, got {time_scale}")
        self._lock = threading.Lock()
        self._base = time.time() if start is None else float(start)
        self._anchor = time.monotonic()
        self._scale = float(time_scale)

    def now(self) -> float:
        """Current simulated time in epoch seconds."""
        with self._lock:
            return self._now_locked()

    def _now_locked(self) -> float:
        return self._base + (time.monotonic() - self._anchor) * self._scale

    def advance(self, seconds: float) -> float:
        """Jump simulated time forward by `seconds`; return the new time."""
        if seconds < 0:
            raise ValueError(f"cannot move the clock backwards ({seconds} s)")
        with self._lock:
            self._base += seconds
            return self._now_locked()

    @property
    def time_scale(self) -> float:
        """Simulated seconds per real second."""
        return self._scale

    @time_scale.setter
    def time_scale(self, value: float) -> None:
        if value < 0:
            raise ValueError(f"time_scale must be >= 0, got {value}")
        with self._lock:
            self._base = self._now_locked()
            self._anchor = time.monotonic()
            self._scale = float(value)

    def real_seconds(self, simulated: float) -> float:
        """Real seconds it takes for `simulated` seconds to pass (inf when frozen)."""
        return simulated / self._scale if self._scale > 0 else float("inf")
