"""The simulator end to end through the real openai SDK: every endpoint and failure mode."""

from __future__ import annotations

import io
import json
import time
import urllib.error
import urllib.request

import openai
import pytest
from simtools import (
    chat,
    client,
    content_lines,
    embedding,
    jsonl,
    upload,
    wait,
)

from gptbatch.simulator import Fault, SimConfig, Simulator, request_digest
from gptbatch.simulator.server import parse_multipart
from gptbatch.simulator.validation import ApiError

EXPIRED = {
    "code": "batch_expired",
    "message": "This request could not be executed before the completion window expired.",
}


def create(api: openai.OpenAI, file_id: str, endpoint: str = "/v1/chat/completions", **kw):
    return api.batches.create(
        input_file_id=file_id, endpoint=endpoint, completion_window="24h", **kw
    )


def raw(sim, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """A plain HTTP call: (status, parsed JSON body)."""
    request = urllib.request.Request(
        sim.base_url.removesuffix("/v1") + path, data=body, method=method, headers=headers or {}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


# --- the happy path, every endpoint -------------------------------------------------------


def test_round_trip_with_the_environment_the_fixture_sets(simulator) -> None:
    api = openai.OpenAI()  # OPENAI_BASE_URL and OPENAI_API_KEY come from the fixture
    lines = [chat(f"r{i}", f"question {i}") for i in range(5)]
    uploaded = upload(api, lines)
    assert uploaded.purpose == "batch" and uploaded.bytes == len(jsonl(lines))
    assert api.files.retrieve(uploaded.id).filename == "input.jsonl"
    assert api.files.content(uploaded.id).content == jsonl(lines)
    batch = create(api, uploaded.id, metadata={"project": "demo", "shard": "abc"})
    assert batch.status == "validating" and batch.metadata == {"project": "demo", "shard": "abc"}
    started = time.monotonic()
    done = wait(api, batch.id)
    assert time.monotonic() - started < 2.0  # ~0.2 s when the machine is idle
    assert done.status == "completed" and done.error_file_id is None
    assert done.request_counts.total == done.request_counts.completed == 5
    assert done.in_progress_at <= done.finalizing_at <= done.completed_at
    output = content_lines(api, done.output_file_id)
    requests = {line["custom_id"]: line for line in lines}
    assert sorted(line["custom_id"] for line in output) == sorted(requests)
    for line in output:
        body = line["response"]["body"]
        request = requests[line["custom_id"]]["body"]
        assert request_digest(request) in body["choices"][0]["message"]["content"]
        assert body["usage"]["prompt_tokens"] == simulator.service.prompt_tokens(
            "/v1/chat/completions", request
        )
    assert done.usage.input_tokens == sum(
        line["response"]["body"]["usage"]["prompt_tokens"] for line in output
    )
    output_file = api.files.retrieve(done.output_file_id)
    assert output_file.purpose == "batch_output"
    assert api.files.delete(uploaded.id).deleted
    with pytest.raises(openai.NotFoundError):
        api.files.retrieve(uploaded.id)
    assert simulator.journal.billed_counts() == dict.fromkeys(requests, 1)


@pytest.mark.parametrize(
    ("endpoint", "line", "model_type"),
    [
        (
            "/v1/embeddings",
            embedding("e", ["one", "two"], dimensions=64),
            openai.types.CreateEmbeddingResponse,
        ),
        (
            "/v1/responses",
            {
                "custom_id": "r",
                "method": "POST",
                "url": "/v1/responses",
                "body": {"model": "gpt-4.1-mini", "input": "hi"},
            },
            openai.types.responses.Response,
        ),
        (
            "/v1/completions",
            {
                "custom_id": "c",
                "method": "POST",
                "url": "/v1/completions",
                "body": {"model": "gpt-3.5-turbo-instruct", "prompt": "hi"},
            },
            openai.types.Completion,
        ),
        (
            "/v1/moderations",
            {
                "custom_id": "m",
                "method": "POST",
                "url": "/v1/moderations",
                "body": {"model": "omni-moderation-latest", "input": "hi"},
            },
            openai.types.ModerationCreateResponse,
        ),
    ],
)
def test_each_endpoint_returns_what_the_sdk_types_expect(simulator, endpoint, line, model_type):
    api = client(simulator)
    done = wait(api, create(api, upload(api, [line]).id, endpoint).id)
    assert done.status == "completed" and done.endpoint == endpoint
    (result,) = content_lines(api, done.output_file_id)
    parsed = model_type.model_validate(result["response"]["body"])
    if endpoint == "/v1/embeddings":
        assert [len(item.embedding) for item in parsed.data] == [64, 64]


def test_list_endpoints_paginate_with_limit_after_and_has_more(simulator) -> None:
    api = client(simulator)
    ids = [create(api, upload(api, [chat(f"r{i}")]).id).id for i in range(5)]
    page = api.batches.list(limit=2)
    assert page.has_more and [b.id for b in page.data] == ids[::-1][:2]
    before = simulator.journal.count("GET", "/v1/batches")
    assert [b.id for b in api.batches.list(limit=2)] == ids[::-1]  # SDK auto-pagination
    assert simulator.journal.count("GET", "/v1/batches") - before == 3
    calls = [c for c in simulator.journal.calls if c.path == "/v1/batches" and c.method == "GET"]
    assert "after=" in calls[-1].query
    files = list(api.files.list(limit=2, purpose="batch"))
    assert len(files) == 5 and all(f.purpose == "batch" for f in files)


def test_validation_errors_reach_the_sdk_with_line_numbers(simulator) -> None:
    api = client(simulator)
    uploaded = upload(api, [chat("a"), "{oops", chat("a"), chat("b", stream=True)])
    done = wait(api, create(api, uploaded.id).id)
    assert done.status == "failed"
    assert [(e.code, e.line) for e in done.errors.data] == [
        ("invalid_json_line", 2),
        ("duplicate_custom_id", 3),
        ("streaming_unsupported", 4),
    ]


def test_restarted_simulators_hand_out_new_ids(simulator_factory) -> None:
    seen: list[set[str]] = []
    for _ in range(2):  # as two `gptbatch build --simulate` runs with the same settings
        api = client(simulator_factory())
        uploaded = upload(api, [chat("a")])
        done = wait(api, create(api, uploaded.id).id)
        seen.append({uploaded.id, done.id, done.output_file_id})
    assert len(seen[0]) == 3 and not seen[0] & seen[1]


# --- protocol errors ----------------------------------------------------------------------


def test_a_missing_key_is_refused_and_any_bearer_key_accepted(simulator) -> None:
    status, body = raw(simulator, "GET", "/v1/batches")
    assert status == 401
    assert body["error"]["message"].startswith("You didn't provide an API key.")
    assert set(body["error"]) == {"message", "type", "param", "code"}
    status, _ = raw(simulator, "GET", "/v1/batches", headers={"Authorization": "Bearer "})
    assert status == 401
    status, body = raw(simulator, "GET", "/v1/batches", headers={"Authorization": "Bearer x"})
    assert status == 200 and body["object"] == "list"
    assert simulator.journal.count("GET", "/v1/batches") == 3


def test_unknown_ids_are_404_and_bad_creates_400(simulator) -> None:
    api = client(simulator, max_retries=0)
    with pytest.raises(openai.NotFoundError) as info:
        api.batches.retrieve("batch_nope")
    assert info.value.body["message"] == "No batch found with id 'batch_nope'."
    with pytest.raises(openai.NotFoundError):
        api.files.content("file-nope")
    with pytest.raises(openai.NotFoundError):
        api.batches.cancel("batch_nope")
    uploaded = upload(api, [chat("a")])
    with pytest.raises(openai.BadRequestError) as info:
        create(api, uploaded.id, endpoint="/v1/nope")
    assert info.value.code == "invalid_value" and info.value.param == "endpoint"
    with pytest.raises(openai.BadRequestError) as info:
        api.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="1h"
        )
    assert info.value.param == "completion_window"
    with pytest.raises(openai.BadRequestError):
        create(api, uploaded.id, metadata={"k": "v" * 513})
    with pytest.raises(openai.BadRequestError):
        api.files.create(file=("notes.txt", io.BytesIO(b"x")), purpose="batch")
    status, body = raw(simulator, "GET", "/v1/nothing", headers={"Authorization": "Bearer x"})
    assert status == 404 and body["error"]["message"] == "Invalid URL (GET /v1/nothing)"
    assert simulator.service.batches() == []


def test_cancelling_a_finished_batch_is_409(simulator) -> None:
    api = client(simulator, max_retries=0)  # the SDK retries 409s by default
    done = wait(api, create(api, upload(api, [chat("a")]).id).id)
    with pytest.raises(openai.ConflictError) as info:
        api.batches.cancel(done.id)
    assert "Cannot cancel a batch with status 'completed'." in info.value.message


def test_multipart_parser_handles_quoted_boundaries_and_binary() -> None:
    data = b"\x00\r\n--not-a-boundary\xff"
    body = (
        b'--b"q\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        b'--b"q\r\nContent-Disposition: form-data; name="file"; filename="in.jsonl"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n" + data + b'\r\n--b"q--\r\n'
    )
    fields = parse_multipart(body, 'multipart/form-data; boundary="b\\"q"')
    assert fields == {"purpose": (None, b"batch"), "file": ("in.jsonl", data)}
    with pytest.raises(ApiError):
        parse_multipart(b"{}", "application/json")


def test_upload_without_a_file_part_is_400(simulator) -> None:
    body = b'--xx\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n--xx--\r\n'
    status, error = raw(
        simulator,
        "POST",
        "/v1/files",
        body,
        {"Authorization": "Bearer x", "Content-Type": "multipart/form-data; boundary=xx"},
    )
    assert status == 400 and error["error"]["param"] == "file"


# --- HTTP faults --------------------------------------------------------------------------


def test_429_with_retry_after_is_retried_by_the_sdk(simulator) -> None:
    simulator.add_fault(
        Fault.http(429, method="POST", path="/v1/batches", count=2, retry_after=0.05)
    )
    api = client(simulator)
    uploaded = upload(api, [chat("a")])
    batch = create(api, uploaded.id)
    calls = [c for c in simulator.journal.calls if c.path == "/v1/batches"]
    assert [(c.status, c.retry_count, c.fault) for c in calls] == [
        (429, 0, "http"),
        (429, 1, "http"),
        (200, 2, None),
    ]
    assert [b["id"] for b in simulator.service.batches()] == [batch.id]
    simulator.add_fault(Fault.http(429, method="POST", path="/v1/batches", retry_after=2))
    with pytest.raises(openai.RateLimitError) as info:
        create(client(simulator, max_retries=0), uploaded.id)
    assert info.value.response.headers["retry-after"] == "2"
    assert info.value.response.headers["retry-after-ms"] == "2000"
    assert info.value.code == "rate_limit_exceeded"


def test_a_500_burst_longer_than_the_retries_surfaces(simulator) -> None:
    simulator.add_fault(Fault.http(500, method="POST", path="/v1/files", count=3, retry_after=0.01))
    api = client(simulator)
    with pytest.raises(openai.InternalServerError):
        upload(api, [chat("a")])
    assert simulator.journal.count("POST", "/v1/files") == 3
    assert simulator.service.files() == []
    assert upload(api, [chat("a")]).id  # the burst is over


def test_a_download_dropped_midway_is_retried_by_the_sdk(simulator) -> None:
    api = client(simulator)
    lines = [chat(f"r{i}", "some words " * 20) for i in range(10)]
    done = wait(api, create(api, upload(api, lines).id).id)
    expected = simulator.service.file_content(done.output_file_id)
    simulator.add_fault(Fault.drop_download(after_bytes=100))
    assert api.files.content(done.output_file_id).content == expected
    downloads = [c for c in simulator.journal.calls if c.path.endswith("/content")]
    assert [(c.fault, c.retry_count) for c in downloads[-2:]] == [("drop", 0), (None, 1)]
    simulator.add_fault(Fault.drop_download(after_bytes=100))
    with pytest.raises(openai.APIConnectionError):
        client(simulator, max_retries=0).files.content(done.output_file_id)


def test_slow_responses_delay_and_can_time_out(simulator) -> None:
    api = client(simulator)
    batch = create(api, upload(api, [chat("a")]).id)
    simulator.add_fault(Fault.slow(0.3, path="/v1/batches/*", count=1))
    started = time.monotonic()
    api.batches.retrieve(batch.id)
    assert time.monotonic() - started >= 0.3
    simulator.add_fault(Fault.slow(0.5, path="/v1/batches/*", count=1))
    with pytest.raises(openai.APITimeoutError):
        client(simulator, max_retries=0, timeout=0.1).batches.retrieve(batch.id)


def test_a_lost_create_reply_makes_the_sdk_create_a_duplicate_batch(simulator) -> None:
    simulator.add_fault(Fault.lost_reply())
    api = client(simulator)  # default retries
    uploaded = upload(api, [chat("a"), chat("b")])
    batch = create(api, uploaded.id, metadata={"shard": "s1"})
    created = simulator.service.batches()
    assert len(created) == 2
    assert batch.id == created[1]["id"] and created[0]["metadata"] == {"shard": "s1"}
    creates = [c for c in simulator.journal.calls if c.path == "/v1/batches"]
    assert [(c.fault, c.retry_count) for c in creates] == [("lost_reply", 0), (None, 1)]
    for record in created:
        wait(api, record["id"])
    assert simulator.journal.billed_counts() == {"a": 2, "b": 2}  # the hazard, made visible
    simulator.add_fault(Fault.lost_reply())
    with pytest.raises(openai.APIConnectionError):
        create(client(simulator, max_retries=0), uploaded.id)
    assert len(simulator.service.batches()) == 3  # created although the client saw an error


# --- batch-level outcomes -----------------------------------------------------------------


def test_a_batch_over_the_enqueued_token_limit_is_accepted_then_fails(simulator_factory):
    sim = simulator_factory(token_limits={"gpt-4o-mini": 90_000}, tokens_per_second=1.0)
    api = client(sim)
    big = [chat(f"a{i}", "word " * 20_000) for i in range(4)]
    first = create(api, upload(api, big).id)
    second = create(api, upload(api, [chat("b", "word " * 20_000)], "second.jsonl").id)
    assert second.status == "validating"  # create accepts it
    refused = wait(api, second.id)
    assert refused.status == "failed" and refused.failed_at is not None
    assert refused.errors.data[0].code == "token_limit_exceeded"
    assert refused.errors.data[0].message == (
        "Enqueued token limit reached for gpt-4o-mini in organization org-simulator. "
        "Limit: 90,000 enqueued tokens. Please try again once some in_progress batches have "
        "been completed."
    )
    assert api.batches.retrieve(first.id).status == "in_progress"


def test_expiry_keeps_partial_results_through_the_sdk(simulator_factory) -> None:
    sim = simulator_factory(
        completion_window_seconds=30.0, faults=(Fault.batch_expire(after_requests=2),)
    )
    api = client(sim)
    done = wait(api, create(api, upload(api, [chat(f"r{i}") for i in range(5)]).id).id)
    assert done.status == "expired" and done.expired_at is not None
    output = content_lines(api, done.output_file_id)
    errors = content_lines(api, done.error_file_id)
    assert len(output) == 2 and len(errors) == 3
    assert all(line["error"] == EXPIRED and line["response"] is None for line in errors)
    assert done.request_counts.completed == 2 and done.request_counts.failed == 3


def test_cancel_keeps_partial_output_through_the_sdk(simulator_factory) -> None:
    sim = simulator_factory(time_scale=0.0, tokens_per_second=1.0)
    api = client(sim)
    lines = [chat(f"r{i}", "w " * 10) for i in range(6)]
    batch = create(api, upload(api, lines).id)
    per_request = sim.service.prompt_tokens("/v1/chat/completions", lines[0]["body"])
    sim.clock.advance(10 + 2.5 * per_request)
    cancelling = api.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.request_counts.completed == 2
    sim.clock.advance(10)
    done = api.batches.retrieve(batch.id)
    assert done.status == "cancelled" and done.cancelled_at is not None
    assert len(content_lines(api, done.output_file_id)) == 2
    assert sorted(sim.journal.billed_counts().values()) == [1, 1]


def test_cancellation_from_outside(simulator_factory) -> None:
    sim = simulator_factory(time_scale=0.0)
    api = client(sim)
    batch = create(api, upload(api, [chat("a")]).id)
    sim.cancel_batch(batch.id)
    assert api.batches.retrieve(batch.id).status == "cancelling"
    sim.clock.advance(10)
    assert api.batches.retrieve(batch.id).status == "cancelled"


def test_all_failed_batch_has_an_error_file_and_no_output(simulator) -> None:
    simulator.add_fault(Fault.request_error("*", status=400, message="Bad request body."))
    api = client(simulator)
    done = wait(api, create(api, upload(api, [chat("a"), chat("b")]).id).id)
    assert done.status == "completed"
    assert done.output_file_id is None and done.error_file_id is not None
    errors = content_lines(api, done.error_file_id)
    assert {line["response"]["body"]["error"]["message"] for line in errors} == {
        "Bad request body."
    }
    assert simulator.journal.billed == []


def test_transient_failures_inside_a_batch_then_success(simulator) -> None:
    simulator.add_fault(Fault.request_error("x", status=500, attempts=1))
    simulator.add_fault(Fault.request_error("y", status=429, attempts=1))
    api = client(simulator)
    first = wait(api, create(api, upload(api, [chat("x"), chat("y"), chat("z")]).id).id)
    codes = sorted(
        line["response"]["status_code"] for line in content_lines(api, first.error_file_id)
    )
    assert codes == [429, 500]
    retry = wait(api, create(api, upload(api, [chat("x"), chat("y")]).id).id)
    assert retry.error_file_id is None and retry.request_counts.completed == 2
    assert simulator.journal.billed_counts() == {"x": 1, "y": 1, "z": 1}


def test_a_whole_batch_can_fail(simulator) -> None:
    simulator.add_fault(Fault.batch_fail(message="Internal error while processing."))
    api = client(simulator)
    done = wait(api, create(api, upload(api, [chat("a")]).id).id)
    assert done.status == "failed"
    assert done.errors.data[0].code == "server_error"
    assert done.errors.data[0].message == "Internal error while processing."
    assert simulator.journal.billed == []


def test_time_scale_can_change_while_running(simulator_factory) -> None:
    sim = simulator_factory(config=SimConfig(time_scale=0.0))
    api = client(sim)
    batch = create(api, upload(api, [chat("a")]).id)
    time.sleep(0.05)
    assert api.batches.retrieve(batch.id).status == "validating"
    sim.clock.time_scale = 1000.0
    assert wait(api, batch.id).status == "completed"


def test_a_standalone_server_works_ahead_between_calls() -> None:
    """With work_ahead (as `gptbatch simulator` runs), results are made without any call."""
    sim = Simulator(SimConfig.fast(), work_ahead=True).start()
    try:
        api = client(sim)
        batch = api.batches.create(
            input_file_id=upload(api, [chat("a"), chat("b")]).id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
        )
        calls = len(sim.journal.calls)
        deadline = time.monotonic() + 10
        while len(sim.journal.billed) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(sim.journal.calls) == calls  # no call drove it
        assert sorted(b.custom_id for b in sim.journal.billed) == ["a", "b"]
        assert wait(api, batch.id).status == "completed"
    finally:
        sim.stop()
    assert sim._worker is None
