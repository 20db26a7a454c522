"""Keeping the queue full: pipelined shards, list-based polling, 429s at create, learned limits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from buildkit import (
    batch_members,
    billed_ids,
    chat,
    creates,
    creations_past,
    json_events,
    make_project,
    padded_chat,
    peak_in_flight,
    refused,
    tail_project,
    update_config,
    uploads,
    write_jsonl,
)

from gptbatch.errors import EXIT_OK, EXIT_PENDING
from gptbatch.inputs import tokens
from gptbatch.simulator import Fault

MODEL = "gpt-4o-mini"


def estimated(sim) -> dict[str, float]:
    """batch id -> prompt tokens of its input file, by gptbatch's own estimator."""
    return {
        bid: float(sum(tokens.estimate_request(r["url"], r["body"]).tokens for r in rows))
        for bid, rows in batch_members(sim).items()
    }


def status_calls(sim, since: int = 0) -> tuple[int, int]:
    """(batches.list pages, batches.retrieve calls) in the journal from call `since` on."""
    calls = sim.journal.calls[since:]
    pages = sum(1 for c in calls if c.method == "GET" and c.path == "/v1/batches")
    one = sum(1 for c in calls if c.method == "GET" and c.path.startswith("/v1/batches/"))
    return pages, one


@pytest.mark.timeout(60)
def test_estimated_tokens_in_flight_never_pass_the_working_budget(
    tmp_path: Path, simulator_factory
) -> None:
    """k = 4 shards of ~B/4 fly at once; at no instant of the journal do they pass B."""
    limit, margin = 2_000, 0.05
    sim = simulator_factory(
        token_limits={MODEL: limit}, hold_from_creation=True, finalizing_seconds=100.0
    )
    reqs = [padded_chat(f"r{i}") for i in range(48)]
    project = make_project(
        tmp_path,
        {"requests.jsonl": reqs},
        limits={"enqueued_tokens": limit, "safety_margin": margin},
    )
    assert project.build() == EXIT_OK
    weights = estimated(sim)
    working = int(limit * (1 - margin))
    assert all(w <= working // 4 for w in weights.values())
    peak, most = peak_in_flight(sim, weights)
    assert peak <= working
    assert most >= 3, "batches still went one at a time"
    assert all(b["status"] == "completed" for b in sim.service.batches())  # no refusal
    assert sorted(billed_ids(sim)) == sorted(r["custom_id"] for r in reqs)


@pytest.mark.timeout(60)
def test_queue_full_429_at_create_creates_nothing_twice_and_lowers_the_budget(
    tmp_path: Path, simulator_factory, capsys
) -> None:
    sim = simulator_factory(token_limits={MODEL: 1_000})
    sim.add_fault(Fault.queue_full(1_000, count=1))
    reqs = [padded_chat(f"r{i}") for i in range(12)]
    project = make_project(
        tmp_path,
        {"requests.jsonl": reqs},
        limits={"enqueued_tokens": 2_000, "safety_margin": 0.1},
    )
    assert project.build("--json") == EXIT_OK
    events = json_events(capsys.readouterr().out)

    refused = [c for c in sim.journal.calls if c.fault == "queue_full"]
    assert len(refused) == 1
    # Nothing was created by the refused call, and nothing twice afterwards.
    assert creates(sim) == len(sim.service.batches()) + 1
    assert sorted(billed_ids(sim)) == sorted(r["custom_id"] for r in reqs)
    assert uploads(sim) == len({b["input_file_id"] for b in sim.service.batches()})
    # Read as a full queue, not as an uncertain create that needs a listing to resolve.
    assert not [e for e in events if e["event"] == "create_uncertain"]
    (event,) = [e for e in events if e["event"] == "refused"]
    assert event["batch"] == "batches.create" and event["code"] == "token_limit_exceeded"
    lowered = [e for e in events if e["event"] == "budget" and e["new"] < e["old"]]
    assert lowered and lowered[0]["old"] == 1_800 and lowered[0]["new"] <= 900
    assert [e for e in events if e["event"] == "summary"][-1]["refusals"] == 1


@pytest.mark.timeout(60)
def test_plain_429_at_create_backs_off_without_listing(
    tmp_path: Path, simulator_factory, capsys
) -> None:
    sim = simulator_factory()
    sim.add_fault(Fault.http(429, method="POST", path="/v1/batches", count=2))
    reqs = [chat(f"r{i}") for i in range(4)]
    project = make_project(tmp_path, {"requests.jsonl": reqs})
    assert project.build("--json") == EXIT_OK
    events = json_events(capsys.readouterr().out)
    assert not [e for e in events if e["event"] in ("create_uncertain", "refused")]
    assert len([e for e in events if e["event"] == "api_retry"]) == 2
    assert creates(sim) == 3 and len(sim.service.batches()) == 1
    assert sorted(billed_ids(sim)) == sorted(r["custom_id"] for r in reqs)


@pytest.mark.timeout(60)
def test_list_polling_finds_every_batch_across_pages(tmp_path: Path, simulator_factory) -> None:
    """51 batches of ours in flight under 110 newer ones of someone else's: one poll round
    is 2 list pages, not 51 retrieves, and every batch of ours is found and collected."""
    sim = simulator_factory(time_scale=0.0)  # frozen: only the test moves the clock
    reqs = [chat(f"r{i}") for i in range(51)]
    project = make_project(tmp_path, {"requests.jsonl": reqs}, limits={"max_requests_per_batch": 1})
    assert project.build("--no-wait") == EXIT_PENDING
    assert len(sim.service.batches()) == 51
    sim.clock.advance(1.0)  # the others' batches are newer: ours sit on the second page
    line = json.dumps(chat("other")).encode() + b"\n"
    other = sim.service.create_file("other.jsonl", "batch", line)
    for _ in range(110):
        sim.service.create_batch(
            {
                "input_file_id": other["id"],
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
            }
        )

    before = len(sim.journal.calls)
    assert project.build("--no-wait") == EXIT_PENDING  # one poll round, all still validating
    assert status_calls(sim, before) == (2, 0)
    assert len(sim.journal.calls) - before == 2 < 51

    for _ in range(40):  # in steps, so each batch's processing and finalizing take place
        sim.clock.advance(1.0)
        sim.service.now()
    before = len(sim.journal.calls)
    assert project.build() == EXIT_OK
    assert status_calls(sim, before) == (2, 0)
    assert [o["custom_id"] for o in project.output()] == [r["custom_id"] for r in reqs]


@pytest.mark.timeout(60)
def test_limit_learned_from_a_429_is_remembered_by_the_next_run(
    tmp_path: Path, simulator_factory, capsys
) -> None:
    """No enqueued_tokens configured: one refusal teaches 600, and the next run starts there."""
    sim = simulator_factory(token_limits={MODEL: 600})
    sim.add_fault(Fault.queue_full(count=1))  # states the model's limit, 600
    first = [padded_chat(f"a{i}") for i in range(8)]
    project = make_project(tmp_path, {"requests.jsonl": first}, limits={"safety_margin": 0.1})
    assert project.build("--json") == EXIT_OK
    events = json_events(capsys.readouterr().out)
    assert next(e["new"] for e in events if e["event"] == "budget") <= 540

    second = [padded_chat(f"b{i}") for i in range(8)]
    write_jsonl(project.input(), first + second)
    update_config(project, polling={"initial_seconds": 0.02})
    calls = len(sim.journal.calls)
    batches = {b["id"] for b in sim.service.batches()}
    assert project.build("--json") == EXIT_OK
    events = json_events(capsys.readouterr().out)
    assert not [c for c in sim.journal.calls[calls:] if c.status == 429]
    assert not [e for e in events if e["event"] in ("refused", "budget")]
    new = {b: w for b, w in estimated(sim).items() if b not in batches}
    assert new and all(w <= 540 for w in new.values())
    assert sorted(billed_ids(sim)) == sorted(r["custom_id"] for r in first + second)


@pytest.mark.timeout(60)
def test_shards_waiting_for_room_are_uploaded_ahead(tmp_path: Path, simulator_factory) -> None:
    """While the queue is full the next shards are uploaded, so only their create waits."""
    from buildkit import make_project, padded_chat

    sim = simulator_factory(time_scale=50.0)
    reqs = [padded_chat(f"r{i}", 90) for i in range(8)]  # ~100 tokens each
    project = make_project(
        tmp_path,
        {"requests.jsonl": reqs},
        limits={"enqueued_tokens": 440, "safety_margin": 0, "pipeline": 2},
    )
    assert project.build() == 0
    uploads = [c.at for c in sim.journal.calls if c.method == "POST" and c.path == "/v1/files"]
    first_done = min(e.at for e in sim.journal.events if e.status == "completed")
    # Two batches fill the queue; at least one more shard was uploaded before either ended.
    assert sum(1 for t in uploads if t < first_done) >= 3
    assert max(sim.journal.billed_counts().values()) == 1


@pytest.mark.timeout(60)
def test_an_upload_ahead_that_fails_is_found_or_made_again_and_each_shard_sent_once(
    tmp_path: Path, simulator_factory
) -> None:
    """Uploads of waiting shards run on a thread: one that fails there (three 500s, past
    the SDK's retries) surfaces when its shard is sent; the shard is uploaded again and
    created once, and every request is billed once."""
    import threading

    from buildkit import wait_until

    sim = simulator_factory(time_scale=20.0)
    # Uploads take 0.3 s: the fault, added once two batches fill the queue, then meets the
    # uploads ahead on the thread.
    sim.add_fault(Fault.slow(0.3, method="POST", path="/v1/files"))
    reqs = [padded_chat(f"r{i}", 90) for i in range(12)]  # ~100 tokens each
    project = make_project(
        tmp_path,
        {"requests.jsonl": reqs},
        limits={"enqueued_tokens": 440, "safety_margin": 0, "pipeline": 2},
    )

    def fail_uploads_once_the_queue_is_full() -> None:
        if wait_until(lambda: creates(sim) >= 2):
            sim.add_fault(Fault.http(500, method="POST", path="/v1/files", count=3))

    adder = threading.Thread(target=fail_uploads_once_the_queue_is_full)
    adder.start()
    assert project.build() == EXIT_OK
    adder.join()
    assert [f.kind for f in sim.service.faults()] == ["slow"]  # the three 500s were answered
    batches = sim.service.batches()
    assert creates(sim) == len(batches)
    assert len({b["input_file_id"] for b in batches}) == len(batches)
    assert max(sim.journal.billed_counts().values()) == 1
    assert sorted(billed_ids(sim)) == sorted(r["custom_id"] for r in reqs)
    assert [o["custom_id"] for o in project.output()] == [r["custom_id"] for r in reqs]


@pytest.mark.timeout(60)
def test_a_finish_is_noticed_when_forecast_not_a_backed_off_interval_later(
    tmp_path: Path, simulator_factory
) -> None:
    """Polls back off while nothing changes; the forecast from request_counts still wakes
    the build when the batch should finish (see gptbatch/engine/eta.py)."""
    sim = simulator_factory(
        time_scale=1.0,
        validating_seconds=0.1,
        finalizing_seconds=0.05,
        tokens_per_second=500.0,
        total_tokens_per_second=0.0,
    )
    reqs = [chat(f"r{i}") for i in range(150)]  # ~14 tokens each: ~4 s of processing
    project = make_project(
        tmp_path,
        {"requests.jsonl": reqs},
        polling={"initial_seconds": 0.1, "max_seconds": 4.0, "factor": 2.0},
    )
    assert project.build() == EXIT_OK
    (done,) = [e.at for e in sim.journal.events if e.status == "completed"]
    (started,) = [e.at for e in sim.journal.events if e.status == "in_progress"]
    assert done - started > 2.5, "the batch ran too briefly for polls to back off"
    seen = min(c.at for c in sim.journal.calls if c.at >= done)  # the next poll
    # Backed off, the interval near the end is 1.6-3.2 s; the forecast wakes within ~0.3 s.
    assert seen - done < 0.8, f"noticed {seen - done:.2f} s after it finished"
    assert sorted(billed_ids(sim)) == sorted(r["custom_id"] for r in reqs)


@pytest.mark.timeout(90)
def test_tail_shards_are_cut_into_the_room_there_is_and_shrink_as_work_runs_out(
    tmp_path: Path, simulator_factory
) -> None:
    """In the tail a shard is cut when room appears, from what is left then, so no shard
    started late is larger than a 2k-th of what was left when it started."""
    limit, margin, k = 2_000, 0.05, 4
    sim, reqs, project = tail_project(tmp_path, simulator_factory, seed=7, limit=limit, k=k)
    assert project.build() == EXIT_OK
    weights = estimated(sim)
    working = int(limit * (1 - margin))
    floor = working // k // 8
    largest = max(
        tokens.estimate_request(r["url"], r["body"]).tokens for r in reqs
    )  # a shard may end one request past its aim
    left = sum(weights.values())
    tail = 0
    created: dict[str, float] = {}
    for event in sim.journal.events:
        created.setdefault(event.batch_id, event.at)
    for batch_id in sorted(created, key=created.__getitem__):
        w = weights[batch_id]
        if left <= 2 * working:
            tail += 1
            assert w <= max(left // (2 * k), floor) + largest, (w, left)
        left -= w
    assert tail >= 5, "the work never reached a tail"
    peak, _ = peak_in_flight(sim, weights)
    # Past the working budget only by early release (scheduler.py): a batch created while
    # one finalizes, one at a time, so by at most one batch.
    assert all(finalizing for _, finalizing in creations_past(sim, weights, working))
    assert peak <= working + max(weights.values())
    assert refused(sim) == []
    assert sorted(billed_ids(sim)) == sorted(r["custom_id"] for r in reqs)
