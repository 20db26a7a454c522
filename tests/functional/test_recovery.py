"""Recovery after a lost state adopts every batch of the project, however it is rebuilt.

Issue 15, item 1: a partial first rebuild (a subset build, or inputs edited meanwhile) must
not hide older batches from later builds, and no time window may be measured with the local
clock against the API's `created_at`.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from buildkit import (
    batch_count,
    billed_ids,
    billed_twice,
    chat,
    creates,
    make_project,
    padded_chat,
    uploads,
    wait_until,
    write_jsonl,
)

from gptbatch.errors import EXIT_OK, EXIT_PENDING
from gptbatch.simulator import Fault

DAY = 86400.0


def two_inputs(tmp_path: Path, **config: object):
    a = [chat(f"a{i}") for i in range(20)]
    b = [chat(f"b{i}") for i in range(20)]
    return make_project(
        tmp_path,
        {"a.jsonl": a, "b.jsonl": b},
        limits={"max_requests_per_batch": 5},
        **config,
    )


def test_subset_rebuild_after_lost_state_does_not_hide_the_other_inputs_batches(
    tmp_path: Path, simulator_factory
) -> None:
    # The API's clock is 4 days behind ours: seen from here, every batch is 4 days old.
    sim = simulator_factory(start_time=time.time() - 4 * DAY)
    project = two_inputs(tmp_path)
    assert project.build() == EXIT_OK
    assert len(billed_ids(sim)) == 40
    shutil.rmtree(project.out / ".gptbatch")
    assert project.build(str(project.input("a.jsonl"))) == EXIT_OK
    assert project.build() == EXIT_OK
    assert billed_twice(sim) == []
    assert len(billed_ids(sim)) == 40
    assert sorted(o["custom_id"] for o in project.output("b")) == sorted(f"b{i}" for i in range(20))
    assert all(o["response"] is not None for o in project.output("b"))


def test_lines_removed_during_the_recovering_build_are_not_billed_again(
    tmp_path: Path, simulator_factory
) -> None:
    sim = simulator_factory(start_time=time.time() - 4 * DAY)
    rows = [chat(f"r{i}") for i in range(30)]
    project = make_project(tmp_path, {"requests.jsonl": rows}, limits={"max_requests_per_batch": 3})
    assert project.build() == EXIT_OK
    shutil.rmtree(project.out / ".gptbatch")
    write_jsonl(project.input(), rows[:10])  # 20 of 30 lines removed while recovering
    assert project.build() == EXIT_OK
    write_jsonl(project.input(), rows)  # and back
    assert project.build() == EXIT_OK
    assert billed_twice(sim) == []
    assert len(billed_ids(sim)) == 30
    assert [o["custom_id"] for o in project.output()] == [f"r{i}" for i in range(30)]
    assert all(o["response"] is not None for o in project.output())


def test_a_foreign_project_sharing_the_id_never_marks_our_requests_done(
    tmp_path: Path, simulator_factory
) -> None:
    # Two unrelated projects with one project id (a default id made from the same layout):
    # adopting the other's batches must not give our requests its answers.
    sim = simulator_factory()
    ours = make_project(tmp_path / "ours", {"requests.jsonl": [chat("x", "ours")]}, project="p")
    theirs = make_project(
        tmp_path / "theirs", {"requests.jsonl": [chat("x", "theirs")]}, project="p"
    )
    assert theirs.build() == EXIT_OK
    assert ours.build() == EXIT_OK
    assert billed_ids(sim) == ["x", "x"]  # ours was sent: their answer is not ours
    before = ours.output()
    shutil.rmtree(ours.out / ".gptbatch")
    assert ours.build() == EXIT_OK  # adopts both batches: only ours answers our request
    assert billed_ids(sim) == ["x", "x"]
    assert ours.output() == before
    shutil.rmtree(theirs.out / ".gptbatch")
    assert theirs.build() == EXIT_OK
    assert billed_ids(sim) == ["x", "x"]
    assert theirs.output() != before


def test_lost_create_reply_is_adopted_when_the_api_clock_is_behind(
    tmp_path: Path, simulator_factory
) -> None:
    sim = simulator_factory(start_time=time.time() - 4 * DAY)
    sim.add_fault(Fault.lost_reply(method="POST", path="/v1/batches", count=1))
    project = make_project(tmp_path, {"requests.jsonl": [chat(f"r{i}") for i in range(10)]})
    assert project.build() == EXIT_OK
    assert billed_twice(sim) == []
    assert batch_count(sim) == 1
    assert len(project.output()) == 10


# --- issue 15, item 5: a result file that 404s is waited for, not bought again ---------------


def all_completed(sim) -> bool:
    return all(b["status"] == "completed" for b in sim.service.batches())


def test_three_404s_on_a_result_file_do_not_rebuy_the_batch(
    tmp_path: Path, simulator, capsys
) -> None:
    reqs = [chat(f"r{i}") for i in range(6)]
    project = make_project(tmp_path, {"requests.jsonl": reqs})
    assert project.build("--no-wait") == EXIT_PENDING
    assert wait_until(lambda: all_completed(simulator))
    simulator.add_fault(Fault.http(404, method="GET", path="/v1/files/*/content", count=3))
    capsys.readouterr()
    assert project.build() == EXIT_OK
    assert billed_twice(simulator) == []
    assert creates(simulator) == 1
    assert [o["custom_id"] for o in project.output()] == [f"r{i}" for i in range(6)]
    seen = capsys.readouterr()
    assert "waiting for it (nothing is sent again)" in seen.out + seen.err


def test_a_result_file_that_keeps_404ing_is_waited_for_with_a_message(
    tmp_path: Path, simulator, capsys
) -> None:
    reqs = [chat(f"r{i}") for i in range(3)]
    project = make_project(tmp_path, {"requests.jsonl": reqs})
    simulator.add_fault(Fault.http(404, method="GET", path="/v1/files/*/content", count=0))
    assert project.build("--no-wait") == EXIT_PENDING
    assert wait_until(lambda: all_completed(simulator))
    for _ in range(4):
        assert project.build("--no-wait") == EXIT_PENDING
    assert creates(simulator) == 1
    assert billed_twice(simulator) == []
    seen = capsys.readouterr()
    assert "the API lists it but would not serve it yet" in seen.out + seen.err
    simulator.clear_faults()
    assert project.build() == EXIT_OK
    assert creates(simulator) == 1
    assert len(project.output()) == 3


def test_an_output_file_expired_by_the_apis_clock_is_sent_again(
    tmp_path: Path, simulator_factory
) -> None:
    # The API's clock runs days behind ours: expiry is judged by the API's time, not ours.
    sim = simulator_factory(start_time=time.time() - 4 * DAY)
    reqs = [chat(f"r{i}") for i in range(3)]
    project = make_project(tmp_path, {"requests.jsonl": reqs}, output_expires_after=3600)
    assert project.build("--no-wait") == EXIT_PENDING
    assert wait_until(lambda: all_completed(sim))
    sim.clock.advance(2 * 3600)  # the output file expired at the API
    assert project.build() == EXIT_OK
    assert creates(sim) == 2  # the expired results had to be bought again
    assert len(project.output()) == 3
    assert all(o["response"] is not None for o in project.output())


# --- issue 15, item 7: an upload the API forgot is uploaded again; results come first -------


def test_a_waiting_shard_whose_upload_expired_is_uploaded_again(
    tmp_path: Path, simulator, capsys
) -> None:
    reqs = [padded_chat(f"r{i}") for i in range(6)]
    project = make_project(
        tmp_path,
        {"requests.jsonl": reqs},
        upload_expires_after=3600,
        limits={"enqueued_tokens": 400, "safety_margin": 0, "max_requests_per_batch": 3},
    )
    assert project.build("--no-wait") == EXIT_PENDING
    sent, waiting = creates(simulator), uploads(simulator) - creates(simulator)
    assert sent >= 1 and waiting >= 1  # some shards wait for room, already uploaded
    simulator.clock.advance(2 * 3600)  # the first batches complete; the waiting uploads expire
    assert project.build() == EXIT_OK
    assert billed_twice(simulator) == []
    assert uploads(simulator) >= sent + 2 * waiting  # each forgotten upload was made again
    assert [o["custom_id"] for o in project.output()] == [f"r{i}" for i in range(6)]
    assert all(o["response"] is not None for o in project.output())


def test_finished_batches_are_collected_before_a_failing_submit(tmp_path: Path, simulator) -> None:
    reqs = [padded_chat(f"r{i}") for i in range(6)]
    project = make_project(
        tmp_path,
        {"requests.jsonl": reqs},
        limits={"enqueued_tokens": 400, "safety_margin": 0, "max_requests_per_batch": 3},
    )
    assert project.build("--no-wait") == EXIT_PENDING
    assert wait_until(lambda: all_completed(simulator))
    # The next create fails for good (a 400 nothing can fix by retrying).
    simulator.add_fault(Fault.http(400, method="POST", path="/v1/batches", count=0))
    assert project.build() != EXIT_OK
    done = [o for o in project.output() if o["response"] is not None]
    assert [o["custom_id"] for o in done] == ["r0", "r1", "r2"]  # the paid results are out


def test_recovery_pages_past_other_projects_newer_batches(tmp_path: Path, simulator) -> None:
    project = make_project(tmp_path, {"requests.jsonl": [chat(f"r{i}") for i in range(4)]})
    assert project.build() == EXIT_OK
    data = json.dumps(chat("other")).encode() + b"\n"
    for _ in range(150):  # another project's batches, newer than ours: ours are on page 2
        upload = simulator.service.create_file("other.jsonl", "batch", data)
        simulator.service.create_batch(
            {
                "input_file_id": upload["id"],
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
                "metadata": {"gptbatch_project": "someone-else", "gptbatch_shard": "x"},
            }
        )
    shutil.rmtree(project.out / ".gptbatch")
    assert project.build() == EXIT_OK
    billed = simulator.journal.billed_counts()
    assert [billed[f"r{i}"] for i in range(4)] == [1, 1, 1, 1]
    assert len(project.output()) == 4


def test_a_subset_rebuild_does_not_wait_for_the_other_inputs_batches(
    tmp_path: Path, simulator_factory
) -> None:
    # A frozen clock: b's batch is still running when the state is lost.
    sim = simulator_factory(time_scale=0.0, tokens_per_second=2.0, total_tokens_per_second=50.0)
    project = make_project(
        tmp_path,
        {"a.jsonl": [chat("a0")], "b.jsonl": [chat("b0", "word " * 400)]},
        limits={"max_requests_per_batch": 1},
    )
    assert project.build("--no-wait") == EXIT_PENDING
    sim.clock.advance(60)  # a's small batch is done, b's is not
    assert sorted(b["status"] for b in sim.service.batches()) == ["completed", "in_progress"]
    shutil.rmtree(project.out / ".gptbatch")
    assert project.build(str(project.input("a.jsonl"))) == EXIT_OK  # does not wait for b
    sim.clock.advance(1000)
    assert project.build() == EXIT_OK
    assert billed_twice(sim) == []
    assert [o["custom_id"] for o in project.output("b")] == ["b0"]
