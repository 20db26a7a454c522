"""Packing requests into shards under per-batch caps, with content-defined (stable) boundaries.

Pure functions and a streaming packer: no I/O.

Why not greedy: the original splitter bin-packed all requests globally, so one added request
could reshuffle every shard, change every shard's hash and get everything paid for again. A
"fill each shard, then cut at the request with the smallest content hash" rule fixes most of
that, but not all: once an insertion moves one cut, the next shard starts elsewhere, and the
offset between the old and the new chain of cuts wanders like a random walk, sometimes for
dozens of shards, before the chains meet again (bench/split_stability.py measures both).

What we do instead: within one (model, url) group, in input order, choose the cuts that
maximise the total *weight* of the cut positions, where a cut after a request weighs
`min(u ** -0.5, WEIGHT_CAP) - BOUNDARY_COST` and u in (0, 1] comes from the request's content
key. Every shard must fit every cap; a shard below `alpha` fill (on its fullest dimension)
costs UNDERFULL_PENALTY, except the first and the last of the group, which may be short. This
is a dynamic programme over positions with sliding-window maxima, O(n). Rare, heavy
positions pull the optimal path through them from several shards away, so the paths before
and after an edit pass through the same heavy positions and agree again right after the edit:
an insertion changes its own shard and now and then a few neighbours. The cost per cut keeps
the count near the minimum. Example: cap 100, alpha 0.9; each shard ends somewhere its fill
is in [90, 100]; among those ends, the programme prefers the ones whose keys hash low, as
long as the rest of the group can still be cut into shards that are full enough.

Streaming: the last UNRESOLVED_SHARDS shards of the best path to the newest request may still
change. When that path holds COMMIT_SHARDS more, the older cuts are emitted as final and the
programme restarts from the newest of them (replaying the requests after it). Memory is a few
dozen shards' worth of numbers, not the input.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from gptbatch.canonical import content_hash
from gptbatch.errors import GptbatchError

DEFAULT_MAX_REQUESTS = 50_000  # Batch API: requests per batch file
DEFAULT_MAX_BYTES = 200_000_000  # Batch API: 200 MB per batch input file
EMBEDDING_MAX_INPUTS = 50_000  # Batch API: embedding inputs across all requests of a batch
DEFAULT_ALPHA = 0.93  # shards are at least this full, but for the first and last of a group

BOUNDARY_COST = 60.0  # per cut: only cuts at rare, heavy positions pay for an extra shard
WEIGHT_CAP = 1e4  # keeps sums of weights exact enough to compare in floating point
UNDERFULL_PENALTY = 1e9  # a shard below alpha, where no other packing exists
# Streaming: the best path to the newest request is kept open for UNRESOLVED_SHARDS shards (its
# cuts there may still move); older cuts are final and emitted COMMIT_SHARDS at a time.
UNRESOLVED_SHARDS = 16
COMMIT_SHARDS = 16
MAX_BUFFERED = 1 << 18  # positions held before committing regardless (huge shards only)
CHECK_EVERY = 256  # positions between looks at the path
_DIMENSIONS = ("tokens", "requests", "bytes", "inputs")
_TWO_64 = float(1 << 64)


@dataclass(frozen=True)
class Caps:
    """Per-shard limits; None means unlimited."""

    max_tokens: int | None
    max_requests: int = DEFAULT_MAX_REQUESTS
    max_bytes: int = DEFAULT_MAX_BYTES
    max_inputs: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_tokens", "max_requests", "max_bytes", "max_inputs"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"Caps.{name} must be at least 1, got {value}")


@dataclass(frozen=True)
class Item:
    """One request as the packer sees it: content key, estimated tokens, line bytes, inputs."""

    key: str
    tokens: int
    nbytes: int
    inputs: int = 1


class ItemTooLarge(GptbatchError):
    """A single request exceeds a per-shard cap; the caller names its file and line."""

    def __init__(self, item: Item, dimension: str, value: int, cap: int) -> None:
        self.item = item
        self.dimension = dimension
        self.value = value
        self.cap = cap
        super().__init__(f"request {item.key[:12]} has {value:,} {dimension}, over the cap {cap:,}")


def anchor(key: str) -> int:
    """A 64-bit number drawn from a content key (hex keys directly, others via sha256)."""
    try:
        return int(key[:16], 16)
    except ValueError:
        return int(content_hash(key)[:16], 16)


def cut_weight(key: str) -> float:
    """How much the packer wants a shard to end after this request: heavy-tailed, by content."""
    u = (anchor(key) + 1) / _TWO_64
    return min(u**-0.5, WEIGHT_CAP) - BOUNDARY_COST


def embedding_inputs(body: object) -> int:
    """How many inputs an /v1/embeddings body counts against the per-batch inputs cap."""
    value = body.get("input") if isinstance(body, Mapping) else None
    if isinstance(value, list):
        # A list of token ids is one input; a list of strings or of token lists is many.
        if value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return 1
        return max(len(value), 1)
    return 1


def _limits(caps: Caps) -> tuple[tuple[int, int], ...]:
    """(index into the usage vector, cap) for every limited dimension."""
    limits = [(1, caps.max_requests), (2, caps.max_bytes)]
    if caps.max_tokens is not None:
        limits.insert(0, (0, caps.max_tokens))
    if caps.max_inputs is not None:
        limits.append((3, caps.max_inputs))
    return tuple(limits)


class _MaxQueue:
    """Sliding-window argmax of scores over positions pushed in increasing order."""

    __slots__ = ("next", "queue")

    def __init__(self, start: int) -> None:
        self.queue: deque[int] = deque()
        self.next = start  # the next position to push

    def push_until(self, last: int, score: list[float], base: int) -> None:
        queue = self.queue
        while self.next <= last:
            pos = self.next
            value = score[pos - base]
            while queue and score[queue[-1] - base] <= value:
                queue.pop()
            queue.append(pos)
            self.next += 1

    def drop_before(self, first: int) -> None:
        queue = self.queue
        while queue and queue[0] < first:
            queue.popleft()


class Packer:
    """Streaming packer for one (model, url) group: feed items in order, collect shard sizes."""

    def __init__(self, caps: Caps, *, alpha: float = DEFAULT_ALPHA) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.caps = caps
        self.alpha = alpha
        self._limits = _limits(caps)
        self._dims = tuple((index, cap, alpha * cap) for index, cap in self._limits)
        self._reset(0, free_start=True)

    def _reset(self, start: int, *, free_start: bool) -> None:
        """Start a fresh programme at absolute position start."""
        self._base = start  # absolute position of index 0 of the arrays below
        self._end = start  # absolute position after the last item added
        self._start = start if free_start else -1  # the free first shard starts here
        self._emitted = start  # the last cut already returned
        self._cum: list[list[int]] = [[0] for _ in self._limits]  # prefix sums per dimension
        self._usage: list[tuple[int, int, int, int]] = []  # kept for a forced restart
        self._weight: list[float] = [0.0]
        self._score: list[float] = [0.0]
        self._back: list[int] = [-1]
        self._lo = [start] * len(self._limits)
        self._hi = [start - 1] * len(self._limits)
        self._full = _MaxQueue(start)  # predecessors whose shard would be at least alpha full
        self._under = _MaxQueue(start)  # predecessors whose shard would be underfull
        self._next_check = start + CHECK_EVERY

    # -- the programme ----------------------------------------------------------------------

    def _advance(self, usage: tuple[int, int, int, int]) -> tuple[int, int]:
        """Append a position; return (lo, hi): feasible starts are >= lo, full shards from <= hi."""
        j = self._end = self._end + 1
        base = self._base
        los, his, cums = self._lo, self._hi, self._cum
        lo_all, hi_all = base, base - 1
        for d, (index, cap, floor) in enumerate(self._dims):
            cum = cums[d]
            total = cum[-1] + usage[index]
            cum.append(total)
            lo = los[d]
            while total - cum[lo - base] > cap:
                lo += 1
            los[d] = lo
            hi = his[d]
            while hi + 1 < j and total - cum[hi + 1 - base] >= floor:
                hi += 1
            his[d] = hi
            if lo > lo_all:
                lo_all = lo
            if hi > hi_all:
                hi_all = hi
        return lo_all, hi_all

    def _best_predecessor(self, lo: int, hi: int, *, last: bool) -> tuple[int, float]:
        """The best start for a shard ending at the newest position, and the path's score."""
        score, base = self._score, self._base
        full, under = self._full, self._under
        full.push_until(hi, score, base)
        full.drop_before(lo)
        if under.next <= hi:
            under.next = hi + 1
        under.push_until(self._end - 1, score, base)
        under.drop_before(lo if lo > hi else hi + 1)
        best, best_value = -1, -math.inf
        if full.queue:
            best = full.queue[0]
            best_value = score[best - base]
        if under.queue:
            candidate = under.queue[0]
            value = score[candidate - base] - (0.0 if last else UNDERFULL_PENALTY)
            if value > best_value:
                best, best_value = candidate, value
        start = self._start
        if start >= lo and score[start - base] >= best_value:
            # The first shard of the group may be underfull.
            best, best_value = start, score[start - base]
        return best, best_value

    def _push(self, usage: tuple[int, int, int, int], weight: float) -> None:
        lo, hi = self._advance(usage)
        self._usage.append(usage)
        best, value = self._best_predecessor(lo, hi, last=False)
        self._score.append(value + weight)
        self._back.append(best)
        self._weight.append(weight)

    # -- emitting final cuts ----------------------------------------------------------------

    def _emit_through(self, cut: int) -> list[int]:
        """Return the sizes of the shards on the path up to cut, and forget what is before it."""
        path = [cut]
        while path[-1] > self._emitted:
            path.append(self._back[path[-1] - self._base])
        path.reverse()
        sizes = [b - a for a, b in itertools.pairwise(path)]
        if path[0] != self._emitted:  # pragma: no cover - an invariant of the programme
            raise AssertionError("shard path does not reach the last emitted cut")
        drop = cut - self._base
        if drop > 0:
            for cum in self._cum:
                del cum[:drop]
            for column in (self._weight, self._score, self._back):
                del column[:drop]
            del self._usage[:drop]
            self._base = cut
            # Nothing before the frontier is a start any more; keep indices inside the arrays.
            self._lo = [max(lo, cut) for lo in self._lo]
            self._hi = [max(h, cut - 1) for h in self._hi]
            for queue in (self._full, self._under):
                queue.drop_before(cut)
                queue.next = max(queue.next, cut)
        self._emitted = cut
        return sizes

    def _restart_at(self, cut: int) -> None:
        """Force a cut (the frontier did not converge): replay what follows it from scratch."""
        rel = cut - self._base
        replay = list(zip(self._usage[rel:], self._weight[rel + 1 :], strict=True))
        self._reset(cut, free_start=False)
        for usage, weight in replay:
            self._push(usage, weight)

    def _check(self) -> list[int]:
        """Emit the older part of the best path once it holds enough unresolved shards."""
        self._next_check = self._end + CHECK_EVERY
        back, base = self._back, self._base
        cuts = []  # cuts on the best path to the newest position, newest first
        pos = self._end
        while pos > self._emitted:
            pos = back[pos - base]
            cuts.append(pos)
        unresolved = len(cuts) - 1
        crowded = self._end - base > MAX_BUFFERED and unresolved > 1
        if unresolved <= UNRESOLVED_SHARDS + COMMIT_SHARDS and not crowded:
            return []
        commit = cuts[min(UNRESOLVED_SHARDS, unresolved - 1)]
        sizes = self._emit_through(commit)
        self._restart_at(commit)
        return sizes

    # -- public -----------------------------------------------------------------------------

    def _usage_of(self, item: Item) -> tuple[int, int, int, int]:
        if item.tokens < 0 or item.nbytes < 0 or item.inputs < 0:
            raise ValueError(f"item {item.key[:12]} has a negative size")
        usage = (item.tokens, 1, item.nbytes, item.inputs)
        for index, cap in self._limits:
            if usage[index] > cap:
                raise ItemTooLarge(item, _DIMENSIONS[index], usage[index], cap)
        return usage

    def add(self, item: Item) -> list[int]:
        """Add the next item; return the sizes of shards that became final, in order."""
        self._push(self._usage_of(item), cut_weight(item.key))
        if self._end >= self._next_check:
            return self._check()
        return []

    def finish(self) -> list[int]:
        """Close the group: return the sizes of its remaining shards, in order."""
        if self._end == self._emitted:
            return []
        lo = max(self._lo)
        if self._start >= lo:
            last = self._start  # everything left fits one shard
        else:
            last, _ = self._best_predecessor(lo, max(self._hi), last=True)
        sizes = self._emit_through(last) if last > self._emitted else []
        sizes.append(self._end - last)
        self._reset(self._end, free_start=True)
        return sizes


def shard_sizes(
    items: Iterable[Item], caps: Caps, *, alpha: float = DEFAULT_ALPHA
) -> Iterator[int]:
    """Stream the request count of each shard, in order."""
    packer = Packer(caps, alpha=alpha)
    for item in items:
        yield from packer.add(item)
    yield from packer.finish()


def pack(items: Iterable[Item], caps: Caps, *, alpha: float = DEFAULT_ALPHA) -> list[range]:
    """Pack one group's items (in order) into shards: contiguous index ranges."""
    ranges: list[range] = []
    start = 0
    for size in shard_sizes(items, caps, alpha=alpha):
        ranges.append(range(start, start + size))
        start += size
    return ranges


def shard_key(model: str | None, url: str, keys: Iterable[str]) -> str:
    """Content hash of a shard: its group and its members' keys in order."""
    return content_hash({"model": model, "url": url, "keys": list(keys)})
