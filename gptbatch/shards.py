"""Packing requests into shards under per-batch caps, with content-defined (stable) boundaries.

Pure functions and a streaming packer: no I/O.

Why: the original splitter bin-packed all requests globally, so one added request could
reshuffle every shard, change every shard's hash and get everything paid for again.

How: within one (model, url) group and in input order, a shard grows until its *fill* (the
largest used/cap ratio over tokens, requests, bytes and embedding inputs) reaches `alpha`;
from then on the end of every further request is a candidate cut. When the next request
would overflow any cap, the shard ends after the candidate with the smallest *anchor* (a
number taken from the request's content key) and the requests after it open the next shard.
The cut depends on content, not on position, so an insertion changes its own shard, and the
next cut usually falls on the same request as before. Example: cap 100, alpha 0.9, fills
after each request 40, 85, 91*, 94*, 99* (* = candidates); a request of 5 tokens arrives,
104 > 100, so the shard ends after whichever of the three candidates has the smallest anchor.

Limits (bench/split_stability.py; 100,000 requests, limit 1.9M, 300 insertions per input):
an insertion moves a cut only when it lands near a shard's end; the old and new chains of
cuts then usually meet at the next shard, but can drift apart for many shards (one input had
a spot where 4 insertions in 300 changed 27 of 45 shards). A global optimum over all cuts
(dynamic programming) was tried and dropped: it re-plans earlier shards too and reshuffled
whole inputs more often than this rule.

Memory is one open shard per group; every shard but the last of a group is at least `alpha`
full unless a single request larger than the remaining room arrives before it is.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from gptbatch.canonical import content_hash
from gptbatch.errors import ItemTooLarge

DEFAULT_MAX_REQUESTS = 50_000  # Batch API: requests per batch file
DEFAULT_MAX_BYTES = 200_000_000  # Batch API: 200 MB per batch input file
EMBEDDING_MAX_INPUTS = 50_000  # Batch API: embedding inputs across all requests of a batch
DEFAULT_ALPHA = 0.93  # cuts are made once a shard is this full

_DIMENSIONS = ("tokens", "requests", "bytes", "inputs")


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


def batch_caps(
    url: str,
    max_tokens: int | None,
    *,
    max_requests: int = DEFAULT_MAX_REQUESTS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    enqueued_requests: int | None = None,
) -> Caps:
    """The caps of one shard of `url` requests, as build, plan and split all cut them.

    max_tokens: the shard's token cap (a build's working budget, plan's pipelined share of
    it, split's LIMIT). An enqueued-request limit caps the requests too (a count is exact:
    no safety margin), and /v1/embeddings shards are capped in embedding inputs.
    """
    return Caps(
        max_tokens=max_tokens,
        max_requests=min(max_requests, enqueued_requests or 1 << 62),
        max_bytes=max_bytes,
        max_inputs=EMBEDDING_MAX_INPUTS if url == "/v1/embeddings" else None,
    )


@dataclass(frozen=True)
class Item:
    """One request as the packer sees it: content key, estimated tokens, line bytes, inputs."""

    key: str
    tokens: int
    nbytes: int
    inputs: int = 1


def anchor(key: str) -> int:
    """The cut priority of a request: 64 bits of its content key (others via sha256)."""
    try:
        return int(key[:16], 16)
    except ValueError:
        return int(content_hash(key)[:16], 16)


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


class Packer:
    """Streaming packer for one (model, url) group: feed items in order, collect shard sizes."""

    def __init__(self, caps: Caps, *, alpha: float = DEFAULT_ALPHA) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.caps = caps
        self.alpha = alpha
        self._limits = _limits(caps)
        # The open shard: per request its usage vector and anchor; and the running totals.
        self._usage: list[tuple[int, int, int, int]] = []
        self._anchors: list[int] = []
        self._used = [0, 0, 0, 0]  # tokens, requests, bytes, inputs
        # The caps as a vector, unlimited ones as a bound never reached: add's quick checks.
        bound = 1 << 62
        self._caps = (
            bound if caps.max_tokens is None else caps.max_tokens,
            caps.max_requests,
            caps.max_bytes,
            bound if caps.max_inputs is None else caps.max_inputs,
        )

    def _usage_of(self, item: Item) -> tuple[int, int, int, int]:
        if item.tokens < 0 or item.nbytes < 0 or item.inputs < 0:
            raise ValueError(f"item {item.key[:12]} has a negative size")
        usage = (item.tokens, 1, item.nbytes, item.inputs)
        for index, cap in self._limits:
            if usage[index] > cap:
                raise ItemTooLarge(item, _DIMENSIONS[index], usage[index], cap)
        return usage

    def _overflows(self, usage: tuple[int, int, int, int]) -> bool:
        used = self._used
        return any(used[i] + usage[i] > cap for i, cap in self._limits)

    def _cut(self) -> int:
        """End a shard at the best candidate of the open one; return its request count."""
        limits, alpha = self._limits, self.alpha
        used = [0, 0, 0, 0]
        best = len(self._anchors) - 1  # no candidate: the whole open shard
        best_anchor: int | None = None
        full = False
        for i, (usage, a) in enumerate(zip(self._usage, self._anchors, strict=True)):
            for d in range(4):
                used[d] += usage[d]
            if not full:
                full = any(used[d] >= alpha * cap for d, cap in limits)
            if full and (best_anchor is None or a < best_anchor):
                best, best_anchor = i, a
        size = best + 1
        del self._usage[:size]
        del self._anchors[:size]
        self._used = [sum(u[d] for u in self._usage) for d in range(4)]
        return size

    def add(self, item: Item) -> list[int]:
        """Add the next item; return the sizes of shards that became final, in order."""
        return self.push(item.key, item.tokens, item.nbytes, item.inputs)

    def push(self, key: str, tokens: int, nbytes: int, inputs: int = 1) -> list[int]:
        """add(Item(key, tokens, nbytes, inputs)), without making the Item (a split's
        million requests: a frozen dataclass costs a microsecond to make)."""
        caps, used = self._caps, self._used
        # Quick checks first (once per request in a split of millions): within every cap,
        # and no overflow of the open shard; only otherwise the general loops, which decide.
        if not (0 <= tokens <= caps[0] and 0 <= nbytes <= caps[2] and 0 <= inputs <= caps[3]):
            self._usage_of(Item(key, tokens, nbytes, inputs))  # raises where it must
        usage = (tokens, 1, nbytes, inputs)
        closed: list[int] = []
        if self._anchors and (
            used[0] + tokens > caps[0]
            or used[1] + 1 > caps[1]
            or used[2] + nbytes > caps[2]
            or used[3] + inputs > caps[3]
        ):
            while self._anchors and self._overflows(usage):
                closed.append(self._cut())
            used = self._used
        self._usage.append(usage)
        self._anchors.append(anchor(key))
        used[0] += tokens
        used[1] += 1
        used[2] += nbytes
        used[3] += inputs
        return closed

    def finish(self) -> list[int]:
        """Close the open shard, if any: return its size as a one-element list."""
        size = len(self._anchors)
        self._usage.clear()
        self._anchors.clear()
        self._used = [0, 0, 0, 0]
        return [size] if size else []


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
