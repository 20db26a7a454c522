"""Tests for gptbatch.shards: caps, order, determinism, stability under insertions, streaming."""

from __future__ import annotations

import hashlib
import heapq
import math
import random
import statistics
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gptbatch import shards
from gptbatch.errors import ItemTooLarge
from gptbatch.shards import (
    Caps,
    Item,
    Packer,
    embedding_inputs,
    pack,
    shard_key,
)


def key(n: int) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()


def usage(items: Sequence[Item], r: range) -> tuple[int, int, int, int]:
    part = [items[i] for i in r]
    return (
        sum(i.tokens for i in part),
        len(part),
        sum(i.nbytes for i in part),
        sum(i.inputs for i in part),
    )


def assert_valid(items: Sequence[Item], ranges: list[range], caps: Caps) -> None:
    """Every item exactly once, in order, in contiguous shards that each fit every cap."""
    assert [i for r in ranges for i in r] == list(range(len(items)))
    for r in ranges:
        assert len(r) >= 1
        tokens, count, nbytes, inputs = usage(items, r)
        assert caps.max_tokens is None or tokens <= caps.max_tokens
        assert count <= caps.max_requests
        assert nbytes <= caps.max_bytes
        assert caps.max_inputs is None or inputs <= caps.max_inputs


@st.composite
def packing_cases(draw: st.DrawFn) -> tuple[list[Item], Caps]:
    max_tokens = draw(st.one_of(st.none(), st.integers(1, 5_000)))
    caps = Caps(
        max_tokens=max_tokens,
        max_requests=draw(st.integers(1, 60)),
        max_bytes=draw(st.integers(50, 20_000)),
        max_inputs=draw(st.one_of(st.none(), st.integers(1, 200))),
    )
    token_top = max_tokens if max_tokens is not None else 10_000
    sizes = draw(
        st.lists(
            st.tuples(
                st.integers(0, token_top),
                st.integers(1, caps.max_bytes),
                st.integers(1, caps.max_inputs or 50),
            ),
            max_size=300,
        )
    )
    items = [Item(key(n), t, b, i) for n, (t, b, i) in enumerate(sizes)]
    return items, caps


@settings(max_examples=200, deadline=None)
@given(packing_cases())
def test_every_item_once_in_order_and_every_shard_within_every_cap(
    case: tuple[list[Item], Caps],
) -> None:
    items, caps = case
    ranges = pack(items, caps)
    assert_valid(items, ranges, caps)
    assert pack(list(items), caps) == ranges  # deterministic


@settings(max_examples=100, deadline=None)
@given(packing_cases())
def test_streaming_packer_matches_pack_and_is_reusable(case: tuple[list[Item], Caps]) -> None:
    items, caps = case
    packer = Packer(caps)
    sizes: list[int] = []
    for item in items:
        sizes += packer.add(item)
    sizes += packer.finish()
    assert sizes == [len(r) for r in pack(items, caps)]
    # A packer is reusable after finish, and packs the same input the same way.
    again = [size for item in items for size in packer.add(item)] + packer.finish()
    assert again == sizes


class _LoopPacker(Packer):
    """Packer.add as it was before its quick checks: the general loops for every item."""

    def add(self, item: Item) -> list[int]:
        usage = self._usage_of(item)
        closed: list[int] = []
        while self._anchors and self._overflows(usage):
            closed.append(self._cut())
        self._usage.append(usage)
        self._anchors.append(shards.anchor(item.key))
        for d in range(4):
            self._used[d] += usage[d]
        return closed


@settings(max_examples=200, deadline=None)
@given(packing_cases(), st.integers(0, 3))
def test_the_quick_checks_cut_where_the_general_loops_cut(
    case: tuple[list[Item], Caps], oversize: int
) -> None:
    items, caps = case
    if items and oversize:  # one item past a cap (or negative): both refuse it alike
        bad = items[len(items) // 2]
        over = {1: (caps.max_tokens or 0) + 1, 2: -1, 3: bad.tokens}[oversize]
        nbytes = caps.max_bytes + 1 if oversize == 3 else bad.nbytes
        items[len(items) // 2] = Item(bad.key, over, nbytes, bad.inputs)
    outcomes = []
    for packer in (Packer(caps), _LoopPacker(caps)):
        sizes: list[int] = []
        try:
            for item in items:
                sizes += packer.add(item)
            sizes += packer.finish()
        except (ItemTooLarge, ValueError) as exc:
            sizes.append(-1)
            sizes.append(str(exc))  # type: ignore[arg-type]
        outcomes.append(sizes)
    assert outcomes[0] == outcomes[1]


@settings(max_examples=100, deadline=None)
@given(
    st.integers(10, 1_000),
    st.lists(st.integers(-3, 3), min_size=1, max_size=200),
    st.sampled_from([2, 3]),
)
def test_sizes_just_around_a_fraction_of_the_cap_never_overflow(
    cap: int, offsets: list[int], parts: int
) -> None:
    # The original tool rebalanced into a fixed bin count afterwards and could overflow here.
    items = [Item(key(n), max(0, min(cap, cap // parts + d)), 1) for n, d in enumerate(offsets)]
    caps = Caps(cap, max_requests=10_000, max_bytes=10**9)
    assert_valid(items, pack(items, caps), caps)


def rebalanced_like_the_original(tokens: Sequence[int], cap: int) -> list[int]:
    """First-fit decreasing for the bin count, then each item into the lightest bin."""
    order = sorted(tokens, reverse=True)
    free: list[int] = []
    for t in order:
        for b, room in enumerate(free):
            if t <= room:
                free[b] -= t
                break
        else:
            free.append(cap - t)
    heap = [(0, b) for b in range(len(free))]
    for t in order:
        load, b = heapq.heappop(heap)
        heapq.heappush(heap, (load + t, b))
    return [load for load, _ in heap]


def test_the_original_rebalancing_overflow_cannot_happen() -> None:
    tokens = [50, 50, 34, 33, 33]
    assert max(rebalanced_like_the_original(tokens, 100)) > 100  # the input is adversarial
    items = [Item(key(n), t, 1) for n, t in enumerate(tokens)]
    caps = Caps(100)
    ranges = pack(items, caps)
    assert_valid(items, ranges, caps)
    assert len(ranges) <= 3


def test_a_single_item_over_a_cap_is_refused_with_its_sizes() -> None:
    packer = Packer(Caps(100))
    packer.add(Item(key(1), 60, 1))
    with pytest.raises(ItemTooLarge) as info:
        packer.add(Item(key(2), 101, 1))
    assert (info.value.dimension, info.value.value, info.value.cap) == ("tokens", 101, 100)
    with pytest.raises(ItemTooLarge) as info:
        Packer(Caps(None, max_bytes=10)).add(Item(key(3), 1, 11))
    assert info.value.dimension == "bytes"
    with pytest.raises(ItemTooLarge) as info:
        Packer(Caps(None, max_inputs=5)).add(Item(key(4), 1, 1, inputs=6))
    assert info.value.dimension == "inputs"


def test_edge_sizes() -> None:
    assert pack([], Caps(10)) == []
    assert pack([Item(key(0), 10, 1)], Caps(10)) == [range(0, 1)]
    # Everything that fits in one shard is one shard.
    items = [Item(key(n), 1, 1) for n in range(50)]
    assert pack(items, Caps(50)) == [range(0, 50)]
    # Zero-token requests still count against the request cap.
    zero = [Item(key(n), 0, 1) for n in range(25)]
    assert [len(r) for r in pack(zero, Caps(10, max_requests=10))] == [10, 10, 5]


def test_shards_are_full_when_requests_are_small() -> None:
    rng = random.Random(7)
    items = [Item(key(n), rng.randrange(1, 60), 1) for n in range(20_000)]
    caps = Caps(5_000, max_requests=100_000, max_bytes=10**9)
    ranges = pack(items, caps)
    assert_valid(items, ranges, caps)
    # No request is bigger than the room between alpha and the cap, so every shard but the
    # last is at least alpha full, and the count follows.
    for r in ranges[:-1]:
        assert usage(items, r)[0] >= shards.DEFAULT_ALPHA * 5_000
    total = sum(i.tokens for i in items)
    assert len(ranges) <= math.floor(total / (shards.DEFAULT_ALPHA * 5_000)) + 1


def test_request_bytes_and_inputs_caps_bind_too() -> None:
    items = [Item(key(n), 1, 1_000, inputs=7) for n in range(1_000)]
    for caps, per_shard in (
        (Caps(None, max_requests=100), 100),
        (Caps(None, max_bytes=10_000), 10),
        (Caps(None, max_inputs=70), 10),
    ):
        ranges = pack(items, caps)
        assert_valid(items, ranges, caps)
        minimum = 1_000 // per_shard
        assert minimum <= len(ranges) <= math.floor(minimum / shards.DEFAULT_ALPHA) + 2


def test_the_packer_streams() -> None:
    rng = random.Random(3)
    items = [Item(key(n), rng.randrange(1, 400), 1) for n in range(30_000)]
    caps = Caps(20_000, max_requests=100_000, max_bytes=10**9)
    packer = Packer(caps)
    emitted = 0
    held = []
    for n, item in enumerate(items, 1):
        emitted += sum(packer.add(item))
        held.append(n - emitted)
    final = packer.finish()
    assert emitted + sum(final) == len(items) and len(final) == 1
    # The packer holds one open shard (and the few requests past its cut), never more.
    assert max(held) < 2 * max(len(r) for r in pack(items, caps))


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"input": "one string"}, 1),
        ({"input": ["a", "b", "c"]}, 3),
        ({"input": [1, 2, 3, 4]}, 1),  # one input given as token ids
        ({"input": [[1, 2], [3]]}, 2),
        ({"input": []}, 1),
        ({}, 1),
    ],
)
def test_embedding_inputs(body: dict[str, object], expected: int) -> None:
    assert embedding_inputs(body) == expected


def test_shard_key_depends_on_members_their_order_and_group() -> None:
    keys = [key(n) for n in range(3)]
    base = shard_key("gpt-4o-mini", "/v1/chat/completions", keys)
    assert base == shard_key("gpt-4o-mini", "/v1/chat/completions", iter(keys))
    assert base != shard_key("gpt-4o-mini", "/v1/chat/completions", keys[::-1])
    assert base != shard_key("gpt-4o", "/v1/chat/completions", keys)
    assert base != shard_key("gpt-4o-mini", "/v1/responses", keys)
    assert base != shard_key("gpt-4o-mini", "/v1/chat/completions", keys[:2])


# --- stability: one added request changes one or two shards, not all ------------------------


def synthetic(rng: random.Random, count: int) -> list[Item]:
    """Requests with log-normal prompt tokens like real chat prompts (median ~550)."""
    items = []
    for _ in range(count):
        tokens = min(60_000, max(20, int(rng.lognormvariate(6.3, 0.9))))
        items.append(Item(hashlib.sha256(rng.randbytes(16)).hexdigest(), tokens, 4 * tokens + 200))
    return items


def shard_keys(items: Sequence[Item], ranges: list[range]) -> set[str]:
    return {shard_key("m", "/v1/chat/completions", (items[i].key for i in r)) for r in ranges}


def insertion_changes(insertions: int, seed: int) -> tuple[list[int], int, int]:
    """Changed shards per random single insertion into 100,000 requests; shard count; minimum."""
    rng = random.Random(seed)
    items = synthetic(rng, 100_000)
    caps = Caps(1_900_000)
    ranges = pack(items, caps)
    base = shard_keys(items, ranges)
    minimum = math.ceil(sum(i.tokens for i in items) / 1_900_000)
    changed = []
    for _ in range(insertions):
        at = rng.randrange(len(items) + 1)
        edited = [*items[:at], synthetic(rng, 1)[0], *items[at:]]
        new_ranges = pack(edited, caps)
        # Cuts depend only on what came before: shards before the insertion never change.
        before = [r for r in ranges if r.stop <= at]
        assert new_ranges[: len(before)] == before
        changed.append(len(shard_keys(edited, new_ranges) - base))
    return changed, len(ranges), minimum


def test_single_insertions_change_few_shards() -> None:
    changed, count, minimum = insertion_changes(20, seed=0)
    assert statistics.median(changed) <= 2
    assert max(changed) <= 5
    assert min(changed) >= 1  # the shard that holds the new request is new
    assert count <= 1.10 * minimum


@pytest.mark.slow
def test_one_hundred_single_insertions_change_few_shards() -> None:
    changed, count, minimum = insertion_changes(100, seed=12)
    assert statistics.median(changed) <= 2
    assert max(changed) <= 5
    assert count <= 1.10 * minimum
