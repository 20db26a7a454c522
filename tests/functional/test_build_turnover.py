"""A wave's turnover: shards cut already take freed room before a plan runs, and finished
batches are recorded a slice at a time with polls between, each exactly once."""

from __future__ import annotations

from pathlib import Path

import pytest
from buildkit import billed_ids, json_events, make_project, padded_chat, tail_project

from gptbatch.engine import build
from gptbatch.errors import EXIT_OK

MODEL = "gpt-4o-mini"


@pytest.mark.timeout(90)
def test_shards_cut_already_are_created_before_the_next_plan(
    tmp_path: Path, simulator_factory, capsys
) -> None:
    """Whenever a batch completes while uploaded shards wait, the next thing the build
    does of creating and planning is to create one (a plan walks the open requests: at 1M
    the queue stood empty 3-5 s a wave through it)."""
    sim, reqs, project = tail_project(tmp_path, simulator_factory, seed=11)
    assert project.build("--json") == EXIT_OK
    events = json_events(capsys.readouterr().out)
    waiting: set[str] = set()
    checked = 0
    for i, event in enumerate(events):
        kind = event["event"]
        if kind == "uploaded":
            waiting.add(event["shard"])
        elif kind == "submitted":
            waiting.discard(event["shard"])
        elif kind == "status" and event["status"] == "completed" and waiting:
            after = [e["event"] for e in events[i + 1 :] if e["event"] in ("planned", "submitted")]
            if after:
                assert after[0] == "submitted", events[i : i + 8]
                checked += 1
    assert checked >= 1, "no batch completed while uploaded shards waited"
    assert sorted(billed_ids(sim)) == sorted(r["custom_id"] for r in reqs)


@pytest.mark.timeout(60)
def test_finished_batches_recorded_one_a_round_are_each_recorded_once(
    tmp_path: Path, simulator, capsys, monkeypatch
) -> None:
    """With no time for a slice, each round records one finished batch and polls again:
    every batch is still recorded once, and the outputs are whole and in order."""
    monkeypatch.setattr(build, "COLLECT_SLICE_SECONDS", 0.0)
    reqs = [padded_chat(f"r{i}", 30) for i in range(12)]
    project = make_project(tmp_path, {"requests.jsonl": reqs}, limits={"max_requests_per_batch": 1})
    assert project.build("--json") == EXIT_OK
    events = json_events(capsys.readouterr().out)
    collected = [e["batch"] for e in events if e["event"] == "collected"]
    assert sorted(collected) == sorted(b["id"] for b in simulator.service.batches())
    assert len(collected) == 12
    assert max(simulator.journal.billed_counts().values()) == 1
    assert sorted(billed_ids(simulator)) == sorted(r["custom_id"] for r in reqs)
    assert [o["custom_id"] for o in project.output()] == [r["custom_id"] for r in reqs]


@pytest.mark.timeout(60)
def test_one_pass_records_every_finished_batch_whatever_the_slice(
    tmp_path: Path, simulator, monkeypatch
) -> None:
    """`build --no-wait` ends after one pass: that pass records every batch it finds
    finished, not one slice of them."""
    from buildkit import wait_until

    monkeypatch.setattr(build, "COLLECT_SLICE_SECONDS", 0.0)
    reqs = [padded_chat(f"r{i}", 30) for i in range(6)]
    project = make_project(tmp_path, {"requests.jsonl": reqs}, limits={"max_requests_per_batch": 1})
    project.build("--no-wait")
    assert wait_until(lambda: all(b["status"] == "completed" for b in simulator.service.batches()))
    assert project.build("--no-wait") == EXIT_OK
    assert [o["custom_id"] for o in project.output()] == [r["custom_id"] for r in reqs]


@pytest.mark.timeout(90)
def test_the_first_plan_stops_after_two_queues_and_they_go_before_the_rest_is_cut(
    tmp_path: Path, simulator_factory, capsys
) -> None:
    """A waiting build's first plan cuts two queues' worth of shards (pipeline 4: eight),
    and creates them before it cuts more, also where every shard is cut from what is left
    after the reading (a small input: the limit was ignored there, and all were cut)."""
    sim, reqs, project = tail_project(tmp_path, simulator_factory, seed=5, limit=4_000)
    assert project.build("--json") == EXIT_OK
    events = [e["event"] for e in json_events(capsys.readouterr().out) if e["event"] != "uploaded"]
    assert events.count("planned") > 8, events
    first = events.index("planned")
    assert events[first : first + 9] == ["planned"] * 8 + ["submitted"], events
    assert max(sim.journal.billed_counts().values()) == 1
    assert sorted(billed_ids(sim)) == sorted(r["custom_id"] for r in reqs)
