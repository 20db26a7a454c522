"""Every API route the build uses, crossed with every way a call can go wrong; then batch faults.

Routes: upload (POST /v1/files), find an interrupted upload (GET /v1/files), create
(POST /v1/batches), retrieve (GET /v1/batches/ID), list (GET /v1/batches), content
(GET /v1/files/ID/content). The build never cancels a batch (Remote.cancel has no caller),
so POST /v1/batches/ID/cancel has no row.

Faults: 429 and 500 (both with a short retry-after, to keep the suite fast), each three
times in a row (one more than the SDK's two retries, so the build itself must recover;
batches.create has no SDK retry at all);
"timeout": a slow answer that is then dropped after the server acted, which is what a
client timeout looks like (the client's timeout is a fixed 120 s with no setting to shorten
it, so the test cannot wait for a real one); "lost": the server acts and the reply is lost,
three times in a row (for file content: the connection drops mid-body).

Each cell checks: exit 0, the fault fired in full, every request in exactly one live batch
and billed exactly once, outputs complete and in input order.
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import Any

import pytest
from buildkit import (
    batch_members,
    billed_ids,
    chat,
    creates,
    make_project,
    padded_chat,
    submissions,
    write_jsonl,
)

from gptbatch.canonical import canonical_json
from gptbatch.errors import EXIT_ERROR, EXIT_FAILED_REQUESTS, EXIT_OK, EXIT_PENDING, InputError
from gptbatch.inputs.requests import read_requests
from gptbatch.simulator import Fault, request_digest
from gptbatch.simulator.validation import parse_input

MODEL = "gpt-4o-mini"
SHORT_WINDOW = 100.0  # simulated seconds: a stalled batch expires after ~1 real second

ROUTES = {
    "upload": ("POST", "/v1/files"),
    "find_upload": ("GET", "/v1/files"),
    "create": ("POST", "/v1/batches"),
    "retrieve": ("GET", "/v1/batches/*"),
    "list": ("GET", "/v1/batches"),
    "content": ("GET", "/v1/files/*/content"),
}
KINDS = ("429", "500", "timeout", "lost")
# Faults that put a shard in `uploading` with its file at the API (a lost upload reply, then
# two 429s on the SDK's retries), so the next pass looks the upload up with GET /v1/files.
INTERRUPTED_UPLOAD = (
    Fault.lost_reply(method="POST", path="/v1/files", count=1),
    Fault.http(429, method="POST", path="/v1/files", count=2, retry_after=0.05),
)


def route_faults(route: str, kind: str) -> tuple[Fault, ...]:
    method, path = ROUTES[route]
    if kind == "429":
        return (Fault.http(429, method=method, path=path, count=3, retry_after=0.05),)
    if kind == "500":
        return (Fault.http(500, method=method, path=path, count=3, retry_after=0.05),)
    slow = Fault.slow(0.5, method=method, path=path, count=1)
    if route == "content":  # a file body, not JSON: the connection drops instead
        if kind == "timeout":
            return (slow, Fault.drop_download(after_bytes=0, path=path, count=1))
        return (Fault.drop_download(after_bytes=200, path=path, count=3),)
    if kind == "timeout":
        return (slow, Fault.lost_reply(method=method, path=path, count=1))
    # batches.create is called once per shard (never retried): lose both replies.
    return (Fault.lost_reply(method=method, path=path, count=2 if route == "create" else 3),)


def ids(rows: list[dict[str, Any]]) -> list[str]:
    return [r["custom_id"] for r in rows]


def four_requests_two_batches(tmp_path: Path) -> tuple[list[dict[str, Any]], Any]:
    reqs = [padded_chat(f"r{i}", 90) for i in range(4)]
    project = make_project(
        tmp_path,
        {"requests.jsonl": reqs},
        limits={"enqueued_tokens": 260, "safety_margin": 0, "pipeline": 1},
    )
    return reqs, project


def live_batches(sim: Any) -> dict[str, list[dict[str, Any]]]:
    """Members of every batch that ran (not failed at validation or refused)."""
    statuses = {b["id"]: b["status"] for b in sim.service.batches()}
    return {k: v for k, v in batch_members(sim).items() if statuses[k] != "failed"}


def check_outputs(project: Any, expected: list[dict[str, Any]]) -> None:
    """The output holds exactly these requests' results, in this order, each whole."""
    out = project.output()
    assert ids(out) == ids(expected)
    for line, req in zip(out, expected, strict=True):
        assert line["response"]["status_code"] == 200 and line["error"] is None
        assert request_digest(req["body"]) in json.dumps(line["response"]["body"])


def check_once_each(sim: Any, reqs: list[dict[str, Any]]) -> None:
    counts = sim.journal.billed_counts()
    assert sorted(counts) == sorted(ids(reqs))
    assert set(counts.values()) == {1}


CELLS = [(route, kind) for route in ROUTES for kind in KINDS]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("route", "kind"), CELLS, ids=[f"{r}-{k}" for r, k in CELLS])
def test_route_fault(tmp_path: Path, simulator, route: str, kind: str) -> None:
    faults = route_faults(route, kind)
    for fault in (INTERRUPTED_UPLOAD if route == "find_upload" else ()) + faults:
        simulator.add_fault(fault)
    reqs, project = four_requests_two_batches(tmp_path)
    assert project.build() == EXIT_OK

    assert simulator.service.faults() == [], "the fault did not fire in full"
    method, path = ROUTES[route]
    shaped = [
        c
        for c in simulator.journal.calls
        if c.method == method and fnmatch.fnmatchcase(c.path, path) and c.fault
    ]
    assert len(shaped) >= sum(f.count for f in faults if f.kind != "slow")
    check_once_each(simulator, reqs)
    live = live_batches(simulator)
    assert len(live) == 2, "a shard went to the API twice"
    assert sorted(c for rows in live.values() for c in ids(rows)) == sorted(ids(reqs))
    check_outputs(project, reqs)
    assert project.errors() == []
    # Up to date: a rebuild makes no new batch.
    before = creates(simulator)
    assert project.build() == EXIT_OK
    assert creates(simulator) == before


# Both billed twice once: a single 404 was taken as proof that the batch (poll) or its output
# file (collect) was gone, and the work was sent again. Now a 404 must repeat to count.
SPURIOUS_404 = {
    "retrieve": "one 404 from GET /v1/batches/ID",
    "content": "one 404 from GET /v1/files/ID/content",
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("route", sorted(SPURIOUS_404))
def test_one_spurious_404_does_not_bill_twice(tmp_path: Path, simulator, route: str) -> None:
    """A single 404 for a batch or file that exists (a blip, or a request routed to the wrong
    project) must be confirmed before the work is paid for again."""
    method, path = ROUTES[route]
    simulator.add_fault(Fault.http(404, method=method, path=path, count=1))
    reqs, project = four_requests_two_batches(tmp_path)
    assert project.build() == EXIT_OK
    assert simulator.service.faults() == []
    check_once_each(simulator, reqs)
    check_outputs(project, reqs)


# --- batch-level faults ----------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_token_limit_storm_converges_and_bills_once(tmp_path: Path, simulator_factory) -> None:
    """The config claims 1,000 enqueued tokens; the API allows 250: refusals until it fits."""
    sim = simulator_factory(token_limits={MODEL: 250})
    reqs = [padded_chat(f"r{i}", 90) for i in range(8)]
    project = make_project(
        tmp_path,
        {"requests.jsonl": reqs},
        limits={"enqueued_tokens": 1000, "safety_margin": 0, "pipeline": 1},
    )
    assert project.build() == EXIT_OK

    refused = [
        b
        for b in sim.service.batches()
        if b["status"] == "failed" and b["errors"]["data"][0]["code"] == "token_limit_exceeded"
    ]
    assert refused, "the API never refused: the cell tests nothing"
    assert billed_ids(sim) and sorted(billed_ids(sim)) == sorted(ids(reqs))
    live = live_batches(sim)
    assert sorted(c for rows in live.values() for c in ids(rows)) == sorted(ids(reqs))
    check_outputs(project, reqs)


def accepted_here_rejected_there(sim: Any, tmp_path: Path) -> tuple[dict[str, Any], str]:
    """A chat request gptbatch's own checks accept and the simulator's validation rejects,
    with the simulator's message (which one depends on how far each check goes)."""
    robot = chat("r2")
    robot["body"]["messages"] = [{"role": "robot", "content": "Hi"}]
    no_messages = chat("r2")
    del no_messages["body"]["messages"]
    for candidate in (robot, no_messages):
        path = tmp_path / "candidate.jsonl"
        write_jsonl(path, [candidate])
        try:
            list(read_requests([path]))
        except InputError:
            continue  # refused locally: never reaches the API
        parsed = parse_input(
            canonical_json(candidate) + b"\n", candidate["url"], sim.config, sim.service.counter
        )
        if parsed.errors:
            return candidate, parsed.errors[0]["message"]
    pytest.fail("no request passes the local checks and fails the API's")


@pytest.mark.timeout(60)
def test_validation_failure_fails_one_request_for_good_and_builds_the_rest(
    tmp_path: Path, simulator
) -> None:
    bad, message = accepted_here_rejected_there(simulator, tmp_path)
    reqs = [chat("r0"), chat("r1"), bad, chat("r3")]
    project = make_project(tmp_path, {"requests.jsonl": reqs})
    assert project.build() == EXIT_FAILED_REQUESTS

    assert [b["status"] for b in simulator.service.batches()] == ["failed", "completed"]
    good = [r for r in reqs if r is not bad]
    check_once_each(simulator, good)
    check_outputs(project, good)
    (error,) = project.errors()
    assert error["custom_id"] == "r2" and error["input"].endswith("requests.jsonl:3")
    assert message in error["error"]
    assert submissions(simulator, "r2") == 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize("ending", ["expired", "cancelled"])
def test_a_cut_short_batch_keeps_partial_results_and_resubmits_only_the_rest(
    tmp_path: Path, simulator_factory, ending: str
) -> None:
    """Expiry, or a cancel from outside, after 2 results: those stay, the rest goes again."""
    if ending == "expired":
        sim = simulator_factory(
            completion_window_seconds=SHORT_WINDOW, faults=(Fault.batch_expire(after_requests=2),)
        )
    else:
        sim = simulator_factory(faults=(Fault.batch_cancel(after_requests=2),))
    reqs = [chat(f"r{i}") for i in range(6)]
    project = make_project(tmp_path, {"requests.jsonl": reqs})
    assert project.build() == EXIT_OK

    first, second = sim.service.batches()
    assert first["status"] == ending and second["status"] == "completed"
    kept = {b.custom_id for b in sim.journal.billed if b.batch_id == first["id"]}
    assert len(kept) == 2
    assert sorted(ids(batch_members(sim)[second["id"]])) == sorted(set(ids(reqs)) - kept)
    check_once_each(sim, reqs)
    check_outputs(project, reqs)


@pytest.mark.timeout(60)
def test_all_requests_failing_for_good_loses_none_of_them(tmp_path: Path, simulator) -> None:
    simulator.add_fault(Fault.request_error("*", status=400, message="Nope."))
    reqs = [chat(f"r{i}") for i in range(5)]
    project = make_project(tmp_path, {"requests.jsonl": reqs})
    assert project.build() == EXIT_FAILED_REQUESTS

    (batch,) = simulator.service.batches()
    assert batch["output_file_id"] is None and batch["error_file_id"] is not None
    assert billed_ids(simulator) == []
    assert project.output() == []
    errors = project.errors()
    assert ids(errors) == ids(reqs)
    assert all("Nope." in e["error"] for e in errors)


@pytest.mark.timeout(60)
def test_all_requests_failing_once_are_retried_and_billed_once(tmp_path: Path, simulator) -> None:
    simulator.add_fault(Fault.request_error("*", status=500, attempts=1))
    reqs = [chat(f"r{i}") for i in range(5)]
    project = make_project(tmp_path, {"requests.jsonl": reqs})
    assert project.build() == EXIT_OK

    first, second = simulator.service.batches()
    assert first["output_file_id"] is None  # every request of the first batch failed
    assert second["error_file_id"] is None
    assert all(submissions(simulator, c) == 2 for c in ids(reqs))
    check_once_each(simulator, reqs)
    check_outputs(project, reqs)


@pytest.mark.timeout(60)
def test_failed_batches_are_retried(tmp_path: Path, simulator) -> None:
    simulator.add_fault(Fault.batch_fail(count=2, code="server_error"))
    reqs = [chat(f"r{i}") for i in range(4)]
    project = make_project(tmp_path, {"requests.jsonl": reqs})
    assert project.build() == EXIT_OK

    assert [b["status"] for b in simulator.service.batches()] == ["failed", "failed", "completed"]
    check_once_each(simulator, reqs)
    check_outputs(project, reqs)


@pytest.mark.timeout(60)
def test_a_batch_stuck_in_finalizing_is_collected_by_a_later_build(
    tmp_path: Path, simulator_factory
) -> None:
    sim = simulator_factory(finalizing_seconds=1e6)
    reqs = [chat(f"r{i}") for i in range(4)]
    project = make_project(tmp_path, {"requests.jsonl": reqs})
    assert project.build("--no-wait") == EXIT_PENDING
    assert project.output() == []
    for _ in range(20):  # until the batch reaches finalizing, each run changing nothing
        if sim.service.batches()[0]["status"] == "finalizing":
            break
        assert project.build("--no-wait") == EXIT_PENDING
    (batch,) = sim.service.batches()
    assert batch["status"] == "finalizing"
    assert project.build("--no-wait") == EXIT_PENDING
    assert creates(sim) == 1, "a finalizing batch was resubmitted"
    assert project.output() == []

    sim.clock.advance(1e6)
    assert project.build("--no-wait") == EXIT_OK
    assert creates(sim) == 1
    check_once_each(sim, reqs)
    check_outputs(project, reqs)


@pytest.mark.timeout(60)
def test_a_refused_create_is_a_clear_error_and_a_rerun_completes(
    tmp_path: Path, simulator, capsys
) -> None:
    """A 4xx the build cannot work around stops it with the API's message; nothing is lost."""
    simulator.add_fault(Fault.http(400, method="POST", path="/v1/batches", count=1))
    reqs, project = four_requests_two_batches(tmp_path)
    assert project.build() == EXIT_ERROR
    err = capsys.readouterr().err
    assert "400 from the API: This call was rejected by a simulated fault." in err
    assert simulator.service.batches() == [] and billed_ids(simulator) == []
    assert project.build() == EXIT_OK
    check_once_each(simulator, reqs)
    check_outputs(project, reqs)
