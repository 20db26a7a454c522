"""Collecting and retrying: expiry, per-request and whole-batch failures, flaky transport."""

from __future__ import annotations

from pathlib import Path

import pytest
from buildkit import (
    batch_members,
    billed_ids,
    chat,
    creates,
    make_project,
    submissions,
    write_jsonl,
)

from gptbatch.errors import EXIT_FAILED_REQUESTS, EXIT_OK
from gptbatch.simulator import Fault

# Batches on the fast simulator finish in ~30 simulated seconds; a 100 s window lets a stalled
# batch expire after about one real second.
SHORT_WINDOW = 100.0


def ids(rows: list[dict]) -> list[str]:
    return [r["custom_id"] for r in rows]


@pytest.mark.timeout(30)
def test_expired_batch_keeps_partial_results_and_resubmits_the_rest(
    tmp_path: Path, simulator_factory
) -> None:
    sim = simulator_factory(
        completion_window_seconds=SHORT_WINDOW, faults=(Fault.batch_expire(after_requests=3),)
    )
    reqs = [chat(f"r{i}") for i in range(10)]
    project = make_project(tmp_path, {"requests.jsonl": reqs})
    assert project.build() == EXIT_OK

    first, second = sim.service.batches()
    assert first["status"] == "expired" and second["status"] == "completed"
    done_first = {b.custom_id for b in sim.journal.billed if b.batch_id == first["id"]}
    assert len(done_first) == 3
    # Only the seven unfinished requests went into the new shard.
    assert sorted(ids(batch_members(sim)[second["id"]])) == sorted(set(ids(reqs)) - done_first)
    assert sorted(billed_ids(sim)) == sorted(ids(reqs))
    assert ids(project.output()) == ids(reqs)
    assert all(o["response"]["status_code"] == 200 for o in project.output())
    assert project.errors() == []


@pytest.mark.timeout(30)
def test_expiry_past_the_retry_limit_is_a_final_failure(tmp_path: Path, simulator_factory) -> None:
    # Every batch stalls after 3 results: 10 -> 3 done, 7 retried -> 3 done, 4 given up.
    sim = simulator_factory(
        completion_window_seconds=SHORT_WINDOW,
        faults=(Fault.batch_expire(after_requests=3, count=0),),
    )
    reqs = [chat(f"r{i}") for i in range(10)]
    project = make_project(tmp_path, {"requests.jsonl": reqs}, retries=1)
    assert project.build() == EXIT_FAILED_REQUESTS

    assert [b["status"] for b in sim.service.batches()] == ["expired", "expired"]
    billed = billed_ids(sim)
    assert len(billed) == len(set(billed)) == 6
    out, errors = project.output(), project.errors()
    assert sorted(ids(out)) == sorted(billed)
    assert sorted(ids(errors)) == sorted(set(ids(reqs)) - set(billed))
    for e in errors:
        assert "batch_expired" in e["error"]
        assert e["attempts"] == 2
        assert submissions(sim, e["custom_id"]) == 2
    # Output and errors keep input order.
    order = ids(reqs)
    assert ids(out) == [c for c in order if c in set(ids(out))]
    assert ids(errors) == [c for c in order if c in set(ids(errors))]


@pytest.mark.timeout(30)
def test_permanent_failures_are_final_transient_ones_are_retried(tmp_path: Path, simulator) -> None:
    simulator.add_fault(Fault.request_error("bad*", status=400, message="Invalid request."))
    simulator.add_fault(Fault.request_error("flaky*", status=500, attempts=1))
    simulator.add_fault(Fault.request_error("limited*", status=429, attempts=2))
    good = [chat(f"r{i}") for i in range(6)]
    bad = [chat("bad0"), chat("bad1")]
    flaky = [chat("flaky0"), chat("flaky1")]
    limited = [chat("limited0")]
    reqs = [*good[:3], *bad[:1], *flaky, *good[3:], *limited, *bad[1:]]
    project = make_project(tmp_path, {"requests.jsonl": reqs})
    assert project.build() == EXIT_FAILED_REQUESTS

    counts = simulator.journal.billed_counts()
    assert all(counts[c] == 1 for c in ids(good + flaky + limited))
    assert all(counts[c] == 0 for c in ids(bad))

    errors = project.errors()
    assert ids(errors) == ["bad0", "bad1"]  # once each, in input order
    assert all("400" in e["error"] and "Invalid request." in e["error"] for e in errors)
    assert all(submissions(simulator, c) == 1 for c in ids(bad))  # never resubmitted
    assert all(submissions(simulator, c) == 2 for c in ids(flaky))
    assert submissions(simulator, "limited0") == 3

    out = project.output()
    assert ids(out) == [c for c in ids(reqs) if not c.startswith("bad")]
    assert all(o["response"]["status_code"] == 200 for o in out)

    # Final failures are up to date: a rebuild submits nothing.
    before = creates(simulator)
    assert project.build() == EXIT_FAILED_REQUESTS
    assert creates(simulator) == before


@pytest.mark.timeout(30)
def test_transient_failure_that_persists_fails_after_retries(tmp_path: Path, simulator) -> None:
    simulator.add_fault(Fault.request_error("flaky*", status=500))  # every attempt
    reqs = [chat("r0"), chat("flaky0"), chat("r1")]
    project = make_project(tmp_path, {"requests.jsonl": reqs}, retries=1)
    assert project.build() == EXIT_FAILED_REQUESTS

    assert sorted(billed_ids(simulator)) == ["r0", "r1"]
    assert submissions(simulator, "flaky0") == 2
    assert creates(simulator) == 2
    (error,) = project.errors()
    assert error["custom_id"] == "flaky0"
    assert error["attempts"] == 2
    assert "500" in error["error"]
    assert ids(project.output()) == ["r0", "r1"]


@pytest.mark.timeout(30)
def test_batch_with_no_output_file(tmp_path: Path, simulator) -> None:
    """Every request of the batch fails: the batch has an error file and no output file."""
    simulator.add_fault(Fault.request_error("*", status=400, message="Nope."))
    reqs = [chat(f"r{i}") for i in range(5)]
    project = make_project(tmp_path, {"requests.jsonl": reqs})
    assert project.build() == EXIT_FAILED_REQUESTS

    (batch,) = simulator.service.batches()
    assert batch["status"] == "completed"
    assert batch["output_file_id"] is None and batch["error_file_id"] is not None
    assert project.output() == []
    errors = project.errors()
    assert ids(errors) == ids(reqs)
    assert all("Nope." in e["error"] and e["batch_id"] == batch["id"] for e in errors)
    assert billed_ids(simulator) == []


@pytest.mark.timeout(30)
def test_failed_batch_is_retried(tmp_path: Path, simulator) -> None:
    simulator.add_fault(Fault.batch_fail(count=2, code="server_error"))
    reqs = [chat(f"r{i}") for i in range(6)]
    project = make_project(tmp_path, {"requests.jsonl": reqs})  # retries: 3 (default)
    assert project.build() == EXIT_OK

    statuses = [b["status"] for b in simulator.service.batches()]
    assert statuses == ["failed", "failed", "completed"]
    assert sorted(billed_ids(simulator)) == sorted(ids(reqs))
    assert ids(project.output()) == ids(reqs)
    assert project.errors() == []


@pytest.mark.timeout(30)
def test_failing_batch_gives_up_after_retries(tmp_path: Path, simulator) -> None:
    simulator.add_fault(Fault.batch_fail(count=0, code="server_error", message="Boom."))
    reqs = [chat(f"r{i}") for i in range(4)]
    project = make_project(tmp_path, {"requests.jsonl": reqs}, retries=1)
    assert project.build() == EXIT_FAILED_REQUESTS

    assert creates(simulator) == 2  # the first try and one retry, no more
    assert billed_ids(simulator) == []
    errors = project.errors()
    assert ids(errors) == ids(reqs)
    assert all("server_error" in e["error"] and e["attempts"] == 2 for e in errors)


@pytest.mark.timeout(30)
def test_dropped_download_is_retried(tmp_path: Path, simulator) -> None:
    simulator.add_fault(Fault.drop_download(after_bytes=300, count=2))
    reqs = [chat(f"r{i}") for i in range(10)]
    project = make_project(tmp_path, {"requests.jsonl": reqs})
    assert project.build() == EXIT_OK

    drops = [c for c in simulator.journal.calls if c.fault == "drop"]
    assert len(drops) == 2
    assert creates(simulator) == 1
    assert sorted(billed_ids(simulator)) == sorted(ids(reqs))
    out = project.output()
    assert ids(out) == ids(reqs)
    assert all(o["response"]["status_code"] == 200 for o in out)


@pytest.mark.timeout(30)
def test_build_survives_429_and_500_bursts(tmp_path: Path, simulator) -> None:
    bursts = [
        Fault.http(429, method="POST", path="/v1/files", count=2, retry_after=0.01),
        Fault.http(500, method="POST", path="/v1/batches", count=1, retry_after=0.01),
        Fault.http(500, method="GET", path="/v1/batches/*", count=4, retry_after=0.01),
        Fault.http(429, method="GET", path="/v1/batches", count=1, retry_after=0.01),
        Fault.http(503, method="GET", path="/v1/files/*/content", count=2, retry_after=0.01),
    ]
    for fault in bursts:
        simulator.add_fault(fault)
    reqs = [chat(f"r{i}") for i in range(10)]
    project = make_project(tmp_path, {"requests.jsonl": reqs})
    assert project.build() == EXIT_OK

    assert simulator.service.faults() == []  # every burst fired in full
    assert sum(1 for c in simulator.journal.calls if c.fault == "http") == 10
    live = [b for b in simulator.service.batches() if b["status"] != "failed"]
    assert len(live) == 1
    assert sorted(billed_ids(simulator)) == sorted(ids(reqs))
    assert ids(project.output()) == ids(reqs)


@pytest.mark.timeout(30)
def test_validation_errors_are_mapped_to_input_lines(tmp_path: Path, simulator, capsys) -> None:
    """A line the local check accepts but the API rejects: reported at its input file:line."""
    reqs = [chat(f"r{i}") for i in range(10)]
    project = make_project(tmp_path, {"requests.jsonl": reqs})
    assert project.build() == EXIT_OK

    no_messages = chat("n2")  # valid JSON and shape; the API knows no role "robot"
    no_messages["body"]["messages"] = [{"role": "robot", "content": "Hi"}]
    added = [chat("n0"), chat("n1"), no_messages, chat("n3"), chat("n4")]
    write_jsonl(project.input(), reqs + added)
    capsys.readouterr()
    assert project.build() == EXIT_FAILED_REQUESTS
    err = capsys.readouterr().err

    rejected = [b for b in simulator.service.batches() if b["status"] == "failed"]
    assert len(rejected) == 1
    (line_error,) = rejected[0]["errors"]["data"]
    assert line_error["line"] == 3  # third line of the shard, thirteenth of the input

    (error,) = project.errors()
    assert error["custom_id"] == "n2"
    assert error["input"].endswith("requests.jsonl:13")
    assert "requests.jsonl:13" in error["error"]
    assert "Invalid value: 'robot'" in error["error"]
    assert "requests.jsonl:13" in err and "Invalid value: 'robot'" in err

    # The rest of the rejected shard went through in a new batch, once each.
    assert sorted(billed_ids(simulator)) == sorted([*ids(reqs), "n0", "n1", "n3", "n4"])
    assert ids(project.output()) == [*ids(reqs), "n0", "n1", "n3", "n4"]
    assert submissions(simulator, "n2") == 1
