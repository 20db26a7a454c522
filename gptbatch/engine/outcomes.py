"""The outcomes of one collected batch: the rules for recording them, a chunk at a time."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gptbatch.engine import usage
from gptbatch.state.rows import FINAL_RESULT_STATES
from gptbatch.state.store import Store


class Outcomes:
    """Outcomes of one batch, written a chunk at a time (one executemany per chunk).

    Applies Collector.record's rules: a final result is never overwritten (but by a final
    outcome of a shard sent again on purpose, `replacing`: build -B / --retry-failed), and
    a retryable outcome past the retry limit becomes final. `spent` sums the usage of the
    ok lines written.
    """

    CHUNK = 5_000

    def __init__(
        self,
        store: Store,
        keys: list[str],
        retries: int,
        batch_id: str,
        prices: Mapping[str, Mapping[str, float]] | None = None,
        *,
        replacing: bool = False,
    ) -> None:
        self.store = store
        self.replacing = replacing
        self.resent: list[str] = []  # final results replaced by a resend's
        self.retried: list[str] = []  # resends back retryable: the old result stays
        self.retries = retries
        self.prices = prices
        self.batch_id = batch_id
        self.known = store.result_states(keys)
        # keys with a results row: those found now and those this batch flushed (every key
        # written is one of `keys`), so write_results need not look them up again
        self.stored = set(self.known)
        # (key, state, attempts, line, error, batch): the line as text, or packed (bytes)
        self.rows: list[tuple[str, str, int, str | bytes | None, str | None, str | None]] = []
        self.price = usage.price_lookup(prices)
        # The usage of the ok lines written, summed in place (a Usage per line added to
        # another made a third object per result).
        self._counts = [0, 0, 0, 0, 0]
        self._cost: float | None = 0.0
        self._unpriced: set[str] = set()

    def add(
        self, key: str, state: str, line: str | None, error: str | None, obj: Any = None
    ) -> str:
        """Queue one outcome (obj: the line parsed); return the state the key ends in."""
        end, queued = self._queue(key, state, line, error)
        if queued and end == "ok" and line is not None:
            if obj is None:
                self._spend(usage.line_usage(line, self.prices))
            else:
                self._spend(usage.result_usage(obj, lookup=self.price))
        return self._maybe_flush(end)

    def add_packed(
        self, key: str, state: str, zline: bytes, error: str | None, used: tuple[Any, ...] | None
    ) -> str:
        """add, for a line the read-ahead worker prepared: packed, its usage read."""
        end, queued = self._queue(key, state, zline, error)
        if queued and end == "ok" and used is not None:
            self._spend(usage.Usage(*used))
        return self._maybe_flush(end)

    def _maybe_flush(self, end: str) -> str:
        if len(self.rows) >= self.CHUNK:
            self.flush()
        return end

    def _queue(
        self, key: str, state: str, line: str | bytes | None, error: str | None
    ) -> tuple[str, bool]:
        """Apply the rules: the state the key ends in, and whether a row was queued."""
        old = self.known.get(key)
        if old is not None and old[0] in FINAL_RESULT_STATES:
            if not self.replacing:
                return old[0], False
            if state == "retry":  # the old result stays the output until replaced
                self.retried.append(key)
                return old[0], False
            self.resent.append(key)
            old = None
        attempts = (old[1] if old else 0) + 1
        if state == "retry" and attempts > self.retries:
            state = "failed"
            error = f"gave up after {attempts} attempts: {error}"
        self.known[key] = (state, attempts)
        self.rows.append((key, state, attempts, line, error, self.batch_id))
        return state, True

    def _spend(self, used: usage.Usage) -> None:
        counts = self._counts
        counts[0] += used.requests
        counts[1] += used.input
        counts[2] += used.cached
        counts[3] += used.output
        counts[4] += used.reasoning
        if self._cost is not None:
            self._cost = None if used.cost is None else self._cost + used.cost
        self._unpriced.update(used.unpriced)

    @property
    def spent(self) -> usage.Usage:
        """The usage of the ok lines written (what usage.add_written adds to the totals)."""
        return usage.Usage(*self._counts, self._cost, tuple(sorted(self._unpriced)))

    def flush(self) -> None:
        self.store.write_results(self.rows, stored=self.stored)
        self.stored.update(row[0] for row in self.rows)
        self.rows = []
        if self.resent or self.retried:
            self.store.resend_done(self.resent)
            self.store.resend_retried(self.retried, self.retries)
            self.resent, self.retried = [], []
