"""The scheduler's pure parts: shard targets, first-fit filling, backoff; slow finalizing."""

from __future__ import annotations

import random
from collections import namedtuple

import pytest

from gptbatch.api.remote import BatchInfo
from gptbatch.engine.budget import refusal_delay
from gptbatch.engine.collect import Collector
from gptbatch.engine.scheduler import Room, fill_shard, shard_target

Row = namedtuple("Row", "name tokens nbytes inputs")


def rows(*tokens: int) -> list[Row]:
    return [Row(f"r{i}", t, 10, 1) for i, t in enumerate(tokens)]


def room(tokens: int, requests: int = 1_000, alone: bool = True) -> Room:
    return Room(tokens, tokens, requests, 10_000, None, alone)


def test_target_is_a_kth_of_the_budget_and_shrinks_at_the_tail() -> None:
    assert shard_target(28_500, 4, 200_000) == 7_125
    assert shard_target(28_500, 1, 200_000) == 28_500
    assert shard_target(28_500, 4, 57_000) == 7_125  # two queue-fulls left: still full size
    assert shard_target(28_500, 4, 40_000) == 5_000  # the tail: a 2k-th of what is left
    assert shard_target(28_500, 4, 20_000) == 2_500
    assert shard_target(28_500, 4, 2_000) == 890  # never below an eighth of B / k
    # Through the tail the target only shrinks as the work runs out.
    targets = [shard_target(28_500, 4, left) for left in range(60_000, 0, -500)]
    assert targets == sorted(targets, reverse=True)
    # Any k shards at the target fit the budget together.
    assert all(k * shard_target(28_500, k, 10**6) <= 28_500 for k in range(1, 65))


def test_fill_takes_in_order_then_first_fit_within_the_aim() -> None:
    chosen = fill_shard(rows(400, 400, 300, 500, 150, 90), room(1_000))
    assert [r.tokens for r in chosen] == [400, 400, 150]  # 300 and 500 do not fit; 150 does
    assert sum(r.tokens for r in chosen) <= 1_000


def test_fill_sends_a_request_larger_than_the_aim_alone() -> None:
    assert [r.tokens for r in fill_shard(rows(1_500, 10), room(1_000))] == [1_500]


def test_fill_respects_the_request_cap() -> None:
    assert len(fill_shard(rows(*[1] * 50), room(1_000, requests=7))) == 7


def test_backoff_grows_with_jitter_and_stays_under_the_cap() -> None:
    rng = random.Random(1)
    delays = [refusal_delay(1.0, 30.0, n, rng) for n in range(8)]
    assert 0.5 <= delays[0] <= 1.0 and 2.0 <= delays[2] <= 4.0
    assert all(d <= 30.0 for d in delays)
    assert len({round(refusal_delay(1.0, 30.0, 3, rng), 6) for _ in range(5)}) > 1


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []

    def event(self, kind: str, **fields: object) -> None:
        self.events.append((kind, fields))


def test_a_batch_long_in_finalizing_is_reported_once() -> None:
    now = [1_000.0]
    report = Recorder()
    collector = Collector.__new__(Collector)
    collector.report, collector.clock, collector.slow_finalizing = report, lambda: now[0], 600.0
    collector.finalizing_since, collector.slow_reported = {}, set()
    info = BatchInfo("batch_1", "finalizing", "/v1/chat/completions", "file-1", None, None, 0)
    for step in range(0, 1_300, 100):
        now[0] = 1_000.0 + step
        collector.watch_finalizing(info)
    slow = [f for k, f in report.events if k == "slow_finalizing"]
    assert slow == [{"batch": "batch_1", "seconds": 600}]


def _synced(root, texts: list[str], limit: int):  # type: ignore[no-untyped-def]
    """A project of chat requests (one per text) read into a new store, and its scheduler."""
    import json

    import yaml

    from gptbatch.config.spec import load_spec
    from gptbatch.engine.budget import Budget
    from gptbatch.engine.scheduler import Scheduler
    from gptbatch.engine.summary import BuildSummary
    from gptbatch.engine.sync import sync_inputs
    from gptbatch.report import NullReporter
    from gptbatch.state.store import Store

    root.mkdir()
    line = {"method": "POST", "url": "/v1/chat/completions"}
    (root / "in.jsonl").write_text(
        "".join(
            json.dumps(
                {
                    "custom_id": f"r{i}",
                    **line,
                    "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": t}]},
                }
            )
            + "\n"
            for i, t in enumerate(texts)
        )
    )
    (root / "batch.yaml").write_text(
        yaml.safe_dump(
            {
                "inputs": ["in.jsonl"],
                "output_dir": "out",
                "limits": {"enqueued_tokens": limit, "safety_margin": 0, "pipeline": 4},
            }
        )
    )
    spec = load_spec(root / "batch.yaml")
    store = Store(root / "state")
    sync_inputs(spec, store, NullReporter())
    return store, Scheduler(spec, store, NullReporter(), Budget(spec, store), BuildSummary())


def test_a_shard_holds_as_many_requests_as_its_token_share_needs(tmp_path) -> None:
    """The first-fit window grows with the target: a shard is not capped at the window's
    look-ahead (2,000 requests) when its share of the budget needs more."""
    from gptbatch.engine.scheduler import FILL_LOOKAHEAD

    limit = 96_000  # a share of 24,000 tokens: 3,000 requests; 240,000 left: not the tail
    store, scheduler = _synced(tmp_path / "p", ["hi"] * 30_000, limit)  # 8 tokens each
    try:
        scheduler.plan()
        shards = store.shards()
        assert shards, "nothing was planned"
        first = shards[0]
        assert first.tokens <= limit // 4
        assert first.tokens == limit // 4  # filled to its share
        assert first.requests > FILL_LOOKAHEAD
    finally:
        store.close()


def test_a_plan_stops_reading_once_every_group_waits_for_room(tmp_path) -> None:
    """In the tail, once no shard fits the queue, a plan reads no further (it runs at every
    turnover: reading and holding every pending request each time was quadratic)."""
    store, scheduler = _synced(tmp_path / "p", ["hi"] * 30_000, 48_000)  # 240,000 tokens
    read = [0]
    pending = store.pending_requests

    def counted():  # type: ignore[no-untyped-def]
        for row in pending():
            read[0] += 1
            yield row

    store.pending_requests = counted  # type: ignore[method-assign]
    try:
        made = scheduler.plan()
        packed = sum(s.requests for s in store.shards())
        assert made > 0 and 0 < packed < 30_000 and scheduler.tail_waiting
        assert read[0] < 30_000  # the first plan stopped where the tail waits
        read[0] = 0
        # The shards cut fill the room: nothing is cut, and no pending row is read.
        assert scheduler.plan() == 0
        assert scheduler.tail_waiting and read[0] == 0
        scheduler.room_changed()  # a poll saw batches move, but there is still no room
        assert not scheduler.dirty
        with store.transaction():  # the unsent shards go: their room is free again
            for shard in store.shards():
                store.update_shard(shard.id, state="dropped")
        scheduler.room_changed()
        assert scheduler.dirty
        assert scheduler.plan() > 0 and read[0] > 0
    finally:
        store.close()


@pytest.mark.parametrize("count", [6_000, 300])
def test_a_plan_stopped_at_its_limit_is_finished_by_the_next_as_one_plan_would(
    tmp_path, count: int
) -> None:
    """A build's first plan stops after a queue's worth of shards (they go while the rest
    is cut); the next plan cuts the same shards, with the same members, as one plan. With
    300 requests every shard is cut from the window left at the end of the reading."""
    rng = random.Random(7)
    texts = [" ".join(["word"] * rng.randint(1, 60)) for _ in range(count)]
    budget = 40_000 if count > 1_000 else 2_000
    whole, one = _synced(tmp_path / "whole", texts, budget)
    parts, pieces = _synced(tmp_path / "parts", texts, budget)
    try:
        made = one.plan()
        assert made > 6 and not one.dirty
        assert pieces.plan(limit=1) == 1 and pieces.dirty  # the rest is left for later
        assert pieces.plan(limit=1) == 1 and pieces.dirty
        assert pieces.plan() == made - 2 and not pieces.dirty

        def cut(store):  # type: ignore[no-untyped-def]
            return [(s.id, store.members(s.id)) for s in store.shards()]

        assert sorted(cut(parts)) == sorted(cut(whole))
        assert pieces.tail_waiting == one.tail_waiting
    finally:
        whole.close()
        parts.close()
