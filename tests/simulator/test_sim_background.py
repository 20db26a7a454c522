"""Background validation: batches.create answers before the input file is read, and every
outcome (statuses, refusals, results, billing) is what a simulator reading it at once gives."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Any

from simtools import chat, embedding, fixed_entropy, manual_service, read_lines, submit

from gptbatch.simulator import BatchService

WORKLOAD: list[tuple[list[Any], str]] = [
    ([chat(f"a{i}", "alpha " * (i + 1)) for i in range(6)], "/v1/chat/completions"),
    ([chat("b0", "beta"), {"custom_id": "b1", "method": "POST"}], "/v1/chat/completions"),
    ([chat("c0", "x", model="gpt-4"), chat("c1", "y")], "/v1/chat/completions"),  # two models
    ([chat(f"d{i}", "delta " * 40) for i in range(8)], "/v1/chat/completions"),  # over the limit
    ([embedding("e0", ["one", "two"])], "/v1/embeddings"),
]


def _run(background: bool) -> tuple[list[dict[str, Any]], list[Any], list[Any], BatchService]:
    service = manual_service(
        fixed_entropy(11),
        background_validation=background,
        token_limits={"gpt-4o-mini": 300},
    )
    created = [submit(service, lines, endpoint) for lines, endpoint in WORKLOAD]
    if background:
        assert all(b["status"] == "validating" and b["model"] is None for b in created)
    for _ in range(40):
        service.clock.advance(50)
        service.batches()  # a call runs the world forward, as a poll does
    batches = service.batches()
    files = [
        (read_lines(service, b["output_file_id"]), read_lines(service, b["error_file_id"]))
        for b in batches
    ]
    billed = sorted(
        (b.batch_id, b.custom_id, b.prompt_tokens, b.completion_tokens)
        for b in service.journal.billed
    )
    events = [(e.batch_id, e.status, e.at) for e in service.journal.events]
    return batches, files, [billed, events], service


def test_background_validation_gives_the_same_outcomes() -> None:
    plain, background = _run(False), _run(True)
    assert plain[0] == background[0]  # every batch object: statuses, counts, usage, model
    assert plain[1] == background[1]  # output and error files, line for line
    assert plain[2] == background[2]  # billing and the journal's events, with their times
    statuses = {b["status"] for b in plain[0]}
    assert {"completed", "failed"} <= statuses  # the workload does reach both
    refused = [
        b
        for b in plain[0]
        if b["errors"] and any(e["code"] == "token_limit_exceeded" for e in b["errors"]["data"])
    ]
    assert refused  # the limit is met, so admission's reading of requests is exercised


def test_create_answers_before_the_input_is_read() -> None:
    service = manual_service(background_validation=True)
    gate = threading.Event()
    counter = service.counter
    real_text = counter.text

    def slow_text(model: str, text: str) -> int:
        gate.wait(10)
        return real_text(model, text)

    counter.text = slow_text  # type: ignore[method-assign]
    try:
        batch = submit(service, [chat("r0", "hello"), chat("r1", "world")])
        assert batch["status"] == "validating" and batch["model"] is None
        pending = service._engine.batches[batch["id"]].parsed
        assert isinstance(pending, Future) and not pending.done()  # still reading
    finally:
        gate.set()
    service.clock.advance(1_000)
    done = service.batch(batch["id"])
    assert done["status"] == "completed" and done["model"] == "gpt-4o-mini"
    assert len(read_lines(service, done["output_file_id"])) == 2


def test_closing_the_service_stops_its_reading_thread() -> None:
    """The thread that reads inputs ends with its service (it outlived it, and a test that
    forks after other tests' simulators saw it), after the readings asked of it."""
    before = set(threading.enumerate())  # other tests' services may not be closed
    service = manual_service(background_validation=True)
    batch = submit(service, [chat("r0", "hello")])
    reading = [t for t in set(threading.enumerate()) - before if t.name.startswith("sim-")]
    assert reading
    service.close()
    assert not any(t.is_alive() for t in reading)
    service.clock.advance(1_000)  # memory-only from then on: it still works
    assert service.batch(batch["id"])["status"] == "completed"
