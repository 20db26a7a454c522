"""The simulator's state machine on a frozen clock: status over time, budgets, faults."""

from __future__ import annotations

import pytest
from simtools import (
    START,
    chat,
    embedding,
    fixed_entropy,
    jsonl,
    manual_service,
    read_lines,
    submit,
)

from gptbatch.simulator import ApiError, Fault, request_digest
from gptbatch.simulator.results import result_order

EXPIRED = {
    "code": "batch_expired",
    "message": "This request could not be executed before the completion window expired.",
}


def cost(service, lines, endpoint="/v1/chat/completions") -> int:
    """Processing cost of lines: each request's prompt tokens, at least 1."""
    return sum(max(1, service.prompt_tokens(endpoint, line["body"])) for line in lines)


def every_id(service) -> set[str]:
    """Ids of every file and batch, and of every line in their output and error files."""
    ids = {f["id"] for f in service.files()} | {b["id"] for b in service.batches()}
    for b in service.batches():
        for file_id in (b["output_file_id"], b["error_file_id"]):
            ids |= {line["id"] for line in read_lines(service, file_id)}
            ids |= {
                line["response"]["request_id"]
                for line in read_lines(service, file_id)
                if line["response"]
            }
    return ids


# --- ids ----------------------------------------------------------------------------------


def test_ids_never_repeat_across_simulator_runs_with_the_same_seed() -> None:
    runs = []
    for _ in range(2):
        service = manual_service()  # same config and seed each time, as every fresh run has
        submit(service, [chat("a"), chat("b")])
        submit(service, [chat("a"), chat("b")])
        service.add_fault(Fault.request_error("b"))
        service.clock.advance(1000)
        runs.append(every_id(service))
    # 2 inputs, 2 outputs, 2 error files, 2 batches, 4 result lines with 4 request ids
    assert len(runs[0]) == 6 + 2 + 4 + 4
    assert not runs[0] & runs[1]


# --- status over simulated time -----------------------------------------------------------


def test_status_advances_with_simulated_time_not_with_polling() -> None:
    service = manual_service()
    lines = [chat(f"r{i}", f"question number {i}") for i in range(4)]
    processing = cost(service, lines) / 100.0
    batch = submit(service, lines)
    assert batch["status"] == "validating"
    assert batch["created_at"] == int(START)
    for _ in range(50):  # polling alone never moves a frozen clock
        assert service.batch(batch["id"])["status"] == "validating"
    service.clock.advance(9.99)
    assert service.batch(batch["id"])["status"] == "validating"
    service.clock.advance(0.02)
    got = service.batch(batch["id"])
    assert got["status"] == "in_progress"
    assert got["in_progress_at"] == int(START + 10)
    assert got["request_counts"]["total"] == 4
    service.clock.advance(processing)
    got = service.batch(batch["id"])
    assert got["status"] == "finalizing"
    assert got["request_counts"] == {"total": 4, "completed": 4, "failed": 0}
    assert got["output_file_id"] is None  # files appear only when the batch completes
    service.clock.advance(10)
    got = service.batch(batch["id"])
    assert got["status"] == "completed"
    assert got["completed_at"] == int(START + 20 + processing)
    assert got["finalizing_at"] == int(START + 10 + processing)
    assert got["output_file_id"] and got["error_file_id"] is None
    assert got["expires_at"] == int(START + 86_400)
    assert [e.status for e in service.journal.events] == [
        "validating",
        "in_progress",
        "finalizing",
        "completed",
    ]


def test_a_jump_lands_every_intermediate_transition_at_its_own_time() -> None:
    service = manual_service()
    lines = [chat("a", "one two three")]
    batch = submit(service, lines)
    service.clock.advance(10_000)
    got = service.batch(batch["id"])
    processing = cost(service, lines) / 100.0
    assert got["status"] == "completed"
    assert got["in_progress_at"] == int(START + 10)
    assert got["completed_at"] == int(START + 20 + processing)
    billed = service.journal.billed
    assert len(billed) == 1 and billed[0].at == pytest.approx(START + 10 + processing)


def test_running_batches_share_the_total_throughput() -> None:
    alone = manual_service(total_tokens_per_second=100.0)
    shared = manual_service(total_tokens_per_second=100.0)
    lines = [chat(f"r{i}", "the same words " * 20) for i in range(3)]
    processing = cost(alone, lines) / 100.0
    solo = submit(alone, lines)
    first = submit(shared, lines)
    second = submit(shared, [chat(f"s{i}", "the same words " * 20) for i in range(3)])
    for service in (alone, shared):
        service.clock.advance(10 + processing + 0.001)
    assert alone.batch(solo["id"])["status"] == "finalizing"
    assert shared.batch(first["id"])["status"] == "in_progress"  # half speed each
    shared.clock.advance(processing)
    assert shared.batch(first["id"])["status"] == "finalizing"
    assert shared.batch(second["id"])["status"] == "finalizing"


def test_equal_batches_reaching_their_ends_at_one_instant_both_finish() -> None:
    service = manual_service(total_tokens_per_second=1000.0)
    lines = [chat("a", "the same words"), chat("b", "the same words")]
    first, second = submit(service, lines), submit(service, lines)
    service.clock.advance(1000)
    assert service.batch(first["id"])["status"] == "completed"
    assert service.batch(second["id"])["status"] == "completed"


def test_shared_throughput_results_are_bit_identical_however_often_anyone_looks() -> None:
    lines = [chat(f"r{i}", f"text {i} " * (3 * i + 1)) for i in range(9)]
    others = [chat(f"s{i}", f"other {i} " * (2 * i + 5)) for i in range(7)]
    eager = manual_service(fixed_entropy(), total_tokens_per_second=150.0)
    lazy = manual_service(fixed_entropy(), total_tokens_per_second=150.0)
    for service in (eager, lazy):
        submit(service, lines)
        service.clock.advance(3.3)
        submit(service, others)
    for _ in range(300):
        eager.clock.advance(0.0731)
        eager.batches()
    lazy.clock.advance(300 * 0.0731)
    assert eager.batches() == lazy.batches()
    assert eager.journal.billed == lazy.journal.billed
    assert eager.journal.events == lazy.journal.events


def test_results_do_not_depend_on_how_often_anyone_looks() -> None:
    lines = [chat(f"r{i}", f"text {i} " * (i + 1)) for i in range(12)]
    eager, lazy = manual_service(fixed_entropy()), manual_service(fixed_entropy())
    ids = [submit(service, lines)["id"] for service in (eager, lazy)]
    for _ in range(200):
        eager.clock.advance(0.137)
        eager.batch(ids[0])
    lazy.clock.advance(200 * 0.137)
    a, b = eager.batch(ids[0]), lazy.batch(ids[1])
    assert a == b
    assert eager.file_content(a["output_file_id"]) == lazy.file_content(b["output_file_id"])
    assert eager.journal.billed == lazy.journal.billed


def test_output_is_shuffled_deterministically_and_matches_each_request() -> None:
    service = manual_service()
    lines = [chat(f"r{i:02d}", f"message {i}") for i in range(20)]
    batch = submit(service, lines)
    service.clock.advance(1000)
    output = read_lines(service, service.batch(batch["id"])["output_file_id"])
    order = [line["custom_id"] for line in output]
    assert sorted(order) == [line["custom_id"] for line in lines]
    assert order != sorted(order)
    by_id = {line["custom_id"]: line for line in lines}
    for result in output:
        request = by_id[result["custom_id"]]
        body = result["response"]["body"]
        assert result["id"].startswith("batch_req_") and result["error"] is None
        assert result["response"]["status_code"] == 200
        assert request_digest(request["body"]) in body["choices"][0]["message"]["content"]
        usage = body["usage"]
        assert usage["prompt_tokens"] == service.prompt_tokens(
            "/v1/chat/completions", request["body"]
        )
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert order == [lines[i]["custom_id"] for i in result_order(0, batch["id"], len(lines))]
    # Given the batch id, the order is a function of the seed.
    same, other = manual_service(fixed_entropy(5)), manual_service(fixed_entropy(5), seed=7)
    orders = []
    for service in (same, other):
        submit(service, lines)
        service.clock.advance(1000)
        output = read_lines(service, service.batches()[0]["output_file_id"])
        orders.append([line["custom_id"] for line in output])
    assert same.batches()[0]["id"] == other.batches()[0]["id"]
    assert orders[0] != orders[1]


def test_batch_usage_and_counts_sum_the_results() -> None:
    service = manual_service()
    batch = submit(service, [chat("a", "alpha"), chat("b", "beta gamma")])
    service.clock.advance(1000)
    got = service.batch(batch["id"])
    output = read_lines(service, got["output_file_id"])
    usage = [line["response"]["body"]["usage"] for line in output]
    assert got["usage"]["input_tokens"] == sum(u["prompt_tokens"] for u in usage)
    assert got["usage"]["output_tokens"] == sum(u["completion_tokens"] for u in usage)
    assert got["usage"]["total_tokens"] == sum(u["total_tokens"] for u in usage)
    assert got["model"] == "gpt-4o-mini"


# --- validation ------------------------------------------------------------------------


def test_validation_errors_carry_line_numbers_codes_and_params() -> None:
    service = manual_service()
    lines = [
        chat("ok"),
        "{not json",
        {"method": "POST", "url": "/v1/chat/completions", "body": {}},
        {"custom_id": "x", "body": {"model": "gpt-4o-mini"}},
        {**chat("y"), "url": "/v1/embeddings"},
        chat("ok"),
        chat("s", stream=True),
        chat("m", model="gpt-4o"),
        {
            "custom_id": "nm",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini"},
        },
        {**chat("g"), "method": "GET"},
        "[1, 2]",
    ]
    batch = submit(service, lines)
    service.clock.advance(10.5)
    got = service.batch(batch["id"])
    assert got["status"] == "failed"
    assert got["failed_at"] == int(START + 10) and got["in_progress_at"] is None
    assert got["request_counts"] == {"total": 0, "completed": 0, "failed": 0}
    assert got["output_file_id"] is None and got["error_file_id"] is None
    found = [(e["code"], e["line"], e["param"]) for e in got["errors"]["data"]]
    assert found == [
        ("invalid_json_line", 2, None),
        ("missing_required_parameter", 3, "custom_id"),
        ("missing_required_parameter", 4, "method"),
        ("missing_required_parameter", 4, "url"),
        ("invalid_url", 5, "url"),
        ("duplicate_custom_id", 6, "custom_id"),
        ("streaming_unsupported", 7, "body.stream"),
        ("mismatched_model", 8, "body.model"),
        ("invalid_request", 9, "body.messages"),
        ("invalid_value", 10, "method"),
        ("invalid_request", 11, None),
    ]
    messages = {e["code"]: e["message"] for e in got["errors"]["data"]}
    assert messages["invalid_json_line"] == "This line is not parseable as valid JSON."
    assert messages["invalid_url"] == (
        "The URL provided for this request does not match the batch endpoint."
    )
    assert messages["streaming_unsupported"] == (
        "Chat Completions: Streaming is not supported in the Batch API."
    )
    assert "'ok'" in messages["duplicate_custom_id"]
    assert "'gpt-4o'" in messages["mismatched_model"]
    assert service.journal.billed == []


def test_a_blank_line_inside_the_file_is_invalid_but_a_final_newline_is_not() -> None:
    service = manual_service()
    data = jsonl([chat("a")]) + b"\n" + jsonl([chat("b")]).rstrip(b"\n")
    upload = service.create_file("in.jsonl", "batch", data)
    batch = service.create_batch(
        {
            "input_file_id": upload["id"],
            "completion_window": "24h",
            "endpoint": "/v1/chat/completions",
        }
    )
    service.clock.advance(11)
    errors = service.batch(batch["id"])["errors"]["data"]
    assert [(e["code"], e["line"]) for e in errors] == [("invalid_json_line", 2)]


@pytest.mark.parametrize(
    ("overrides", "lines", "endpoint", "code"),
    [
        (
            {"max_requests_per_batch": 2},
            [chat("a"), chat("b"), chat("c")],
            "/v1/chat/completions",
            "too_many_tasks",
        ),
        (
            {"max_bytes_per_batch": 100},
            [chat("a", "x" * 200)],
            "/v1/chat/completions",
            "file_too_large",
        ),
        (
            {"max_embedding_inputs": 3},
            [embedding("a", ["x", "y"]), embedding("b", ["z", "w"])],
            "/v1/embeddings",
            "too_many_inputs",
        ),
        ({}, [], "/v1/chat/completions", "empty_file"),
    ],
)
def test_batch_caps_fail_the_batch_without_a_line(overrides, lines, endpoint, code) -> None:
    service = manual_service(**overrides)
    batch = submit(service, lines, endpoint)
    service.clock.advance(11)
    got = service.batch(batch["id"])
    assert got["status"] == "failed"
    assert [(e["code"], e["line"]) for e in got["errors"]["data"]] == [(code, None)]


def test_caps_at_the_limit_are_accepted() -> None:
    service = manual_service(max_requests_per_batch=2, max_embedding_inputs=4)
    first = submit(service, [chat("a"), chat("b")])
    second = submit(
        service, [embedding("a", ["x", "y"]), embedding("b", ["z", "w"])], "/v1/embeddings"
    )
    service.clock.advance(10.001)
    assert service.batch(first["id"])["status"] == "in_progress"
    assert service.batch(second["id"])["status"] == "in_progress"


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"endpoint": "/v1/images/nope"}, "endpoint"),
        ({"completion_window": "1h"}, "completion_window"),
        ({"input_file_id": "file-missing"}, "file_id"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"metadata": {"k" * 65: "v"}}, "metadata"),
        ({"metadata": {"k": "v" * 513}}, "metadata.k"),
        ({"metadata": {"tags": ["a", "b"]}}, "metadata.tags"),
        ({"metadata": "text"}, "metadata"),
        ({"endpoint": None}, "endpoint"),
    ],
)
def test_create_rejects_bad_parameters_with_400(params, param) -> None:
    service = manual_service()
    upload = service.create_file("in.jsonl", "batch", jsonl([chat("a")]))
    base = {
        "input_file_id": upload["id"],
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }
    with pytest.raises(ApiError) as info:
        service.create_batch({**base, **params})
    assert info.value.status == 400
    assert info.value.param == param
    assert service.batches() == []


def test_metadata_at_its_limits_is_accepted() -> None:
    service = manual_service()
    metadata = {f"{i:02d}" + "k" * 62: "v" * 512 for i in range(16)}
    batch = submit(service, [chat("a")], metadata=metadata)
    assert batch["metadata"] == metadata


def test_input_file_must_have_purpose_batch() -> None:
    service = manual_service()
    other = service.create_file("notes.jsonl", "user_data", jsonl([chat("a")]))
    with pytest.raises(ApiError) as info:
        service.create_batch(
            {
                "input_file_id": other["id"],
                "completion_window": "24h",
                "endpoint": "/v1/chat/completions",
            }
        )
    assert info.value.status == 400


# --- enqueued budgets --------------------------------------------------------------------


def test_token_budget_refuses_the_batch_that_would_exceed_it() -> None:
    service = manual_service()
    big = [chat(f"a{i}", "lorem ipsum dolor " * 300) for i in range(2)]
    tokens = sum(service.prompt_tokens("/v1/chat/completions", line["body"]) for line in big)
    limit = tokens + 5
    assert limit >= 1000  # so the message shows a thousands separator
    service.set_token_limit("gpt-4o-mini", limit)
    first = submit(service, big)
    second = submit(service, [chat("b", "lorem ipsum dolor " * 3)])
    service.clock.advance(10.001)
    assert service.batch(first["id"])["status"] == "in_progress"
    refused = service.batch(second["id"])
    assert refused["status"] == "failed"
    assert refused["errors"]["data"] == [
        {
            "code": "token_limit_exceeded",
            "line": None,
            "param": None,
            "message": "Enqueued token limit reached for gpt-4o-mini in organization "
            f"org-simulator. Limit: {limit:,} enqueued tokens. Please try again once some "
            "in_progress batches have been completed.",
        }
    ]
    assert "," in f"{limit:,}"
    assert service.enqueued("gpt-4o-mini") == (tokens, 2)
    service.clock.advance(10_000)  # the first completes: its tokens are released
    assert service.batch(first["id"])["status"] == "completed"
    assert service.enqueued("gpt-4o-mini") == (0, 0)
    third = submit(service, [chat("b", "lorem ipsum dolor " * 3)])
    service.clock.advance(10.001)
    assert service.batch(third["id"])["status"] == "in_progress"


def test_budget_is_per_model_and_a_batch_alone_over_it_fails() -> None:
    service = manual_service(token_limits={"gpt-4o-mini": 10})
    over = submit(service, [chat("a", "many many words " * 10)])
    other_model = submit(service, [chat("b", "many many words " * 10, model="gpt-4o")])
    service.clock.advance(10.001)
    assert service.batch(over["id"])["errors"]["data"][0]["code"] == "token_limit_exceeded"
    assert service.batch(other_model["id"])["status"] == "in_progress"


@pytest.mark.parametrize("small_first", [True, False])
def test_budget_admits_in_creation_order(small_first: bool) -> None:
    service = manual_service()
    small = [chat("s", "tiny")]
    large = [chat("l", "a long request " * 50)]
    limit = max(cost(service, small), cost(service, large)) + 1
    service.set_token_limit("gpt-4o-mini", limit)
    batches = [
        submit(service, small if small_first else large),
        submit(service, large if small_first else small),
    ]
    service.clock.advance(10.001)
    statuses = [service.batch(b["id"])["status"] for b in batches]
    assert statuses == ["in_progress", "failed"]


def test_a_batch_completing_at_the_instant_another_validates_frees_its_budget() -> None:
    probe = manual_service()
    lines = [chat("a", "exactly the same words here")]
    tokens = cost(probe, lines)
    service = manual_service(tokens_per_second=float(tokens), token_limits={"gpt-4o-mini": tokens})
    first = submit(service, lines)
    service.clock.advance(11)  # first processes 10..11, finalizes 11..21
    second = submit(service, [chat("b", "exactly the same words here")])  # validates until 21
    service.clock.advance(10)
    assert service.batch(first["id"])["status"] == "completed"
    assert service.batch(second["id"])["status"] == "in_progress"


def test_request_limit_refuses_with_openai_message() -> None:
    service = manual_service(request_limits={"text-embedding-3-small": 1_000})
    inputs = [embedding(f"e{i}", f"text {i}") for i in range(600)]
    first = submit(service, inputs, "/v1/embeddings")
    second = submit(service, [embedding(f"f{i}", "x") for i in range(401)], "/v1/embeddings")
    third = submit(service, [embedding(f"g{i}", "x") for i in range(400)], "/v1/embeddings")
    service.clock.advance(10.001)
    assert service.batch(first["id"])["status"] == "in_progress"
    error = service.batch(second["id"])["errors"]["data"][0]
    assert error["code"] == "request_limit_exceeded"
    assert error["message"] == (
        "Enqueued request limit reached for text-embedding-3-small in organization "
        "org-simulator. Limit: 1,000 enqueued requests. Please try again once some "
        "in_progress batches have been completed."
    )
    assert service.batch(third["id"])["status"] == "in_progress"


# --- expiry, cancellation, failures --------------------------------------------------------


def test_expiry_keeps_finished_results_and_expires_the_rest() -> None:
    service = manual_service(completion_window_seconds=100.0, tokens_per_second=1.0)
    lines = [chat(f"r{i}", "w " * 30) for i in range(6)]
    batch = submit(service, lines)
    service.clock.advance(99.9)
    assert service.batch(batch["id"])["status"] == "in_progress"
    service.clock.advance(0.2)
    got = service.batch(batch["id"])
    assert got["status"] == "expired" and got["expired_at"] == int(START + 100)
    output = read_lines(service, got["output_file_id"])
    errors = read_lines(service, got["error_file_id"])
    assert 0 < len(output) < 6
    assert len(output) + len(errors) == 6
    assert {line["custom_id"] for line in output} | {line["custom_id"] for line in errors} == {
        f"r{i}" for i in range(6)
    }
    for line in errors:
        assert set(line) == {"id", "custom_id", "response", "error"}
        assert line["response"] is None and line["error"] == EXPIRED
    assert got["request_counts"] == {"total": 6, "completed": len(output), "failed": len(errors)}
    assert len(service.journal.billed) == len(output)


def test_expire_fault_stalls_a_batch_until_its_window_ends() -> None:
    service = manual_service(
        completion_window_seconds=500.0, faults=(Fault.batch_expire(after_requests=2),)
    )
    stalled = submit(service, [chat(f"r{i}") for i in range(5)])
    healthy = submit(service, [chat(f"s{i}") for i in range(5)])
    service.clock.advance(400)
    assert service.batch(stalled["id"])["status"] == "in_progress"
    assert service.batch(stalled["id"])["request_counts"]["completed"] == 2
    assert service.batch(healthy["id"])["status"] == "completed"
    service.clock.advance(100)
    got = service.batch(stalled["id"])
    assert got["status"] == "expired"
    assert len(read_lines(service, got["output_file_id"])) == 2
    assert len(read_lines(service, got["error_file_id"])) == 3


def test_expire_from_outside() -> None:
    service = manual_service(tokens_per_second=1.0)
    batch = submit(service, [chat(f"r{i}", "w " * 10) for i in range(4)])
    service.clock.advance(10 + 25)
    got = service.expire_batch(batch["id"])
    assert got["status"] == "expired"
    assert got["request_counts"]["completed"] + got["request_counts"]["failed"] == 4
    with pytest.raises(ApiError):
        service.expire_batch(batch["id"])


def test_cancel_keeps_partial_output() -> None:
    service = manual_service(tokens_per_second=1.0)
    lines = [chat(f"r{i}", "w " * 10) for i in range(6)]
    batch = submit(service, lines)
    service.clock.advance(10 + cost(service, lines[:3]) + 0.5)
    got = service.cancel_batch(batch["id"])
    assert got["status"] == "cancelling" and got["cancelling_at"] is not None
    done = got["request_counts"]["completed"]
    assert 0 < done < 6
    service.clock.advance(9.9)
    assert service.batch(batch["id"])["status"] == "cancelling"
    service.clock.advance(0.2)
    got = service.batch(batch["id"])
    assert got["status"] == "cancelled"
    assert len(read_lines(service, got["output_file_id"])) == done
    assert got["error_file_id"] is None  # unexecuted requests are simply absent
    assert service.cancel_batch(batch["id"])["status"] == "cancelled"  # idempotent
    assert len(service.journal.billed) == done


def test_cannot_cancel_an_ended_batch() -> None:
    service = manual_service()
    batch = submit(service, [chat("a")])
    service.clock.advance(1000)
    with pytest.raises(ApiError) as info:
        service.cancel_batch(batch["id"])
    assert info.value.status == 409
    assert info.value.message == "Cannot cancel a batch with status 'completed'."


def test_cancel_fault_cancels_from_outside_after_some_results() -> None:
    service = manual_service(faults=(Fault.batch_cancel(after_requests=3),))
    batch = submit(service, [chat(f"r{i}") for i in range(6)])
    service.clock.advance(1000)
    got = service.batch(batch["id"])
    assert got["status"] == "cancelled"
    assert len(read_lines(service, got["output_file_id"])) == 3


def test_permanent_request_failures_go_to_the_error_file() -> None:
    service = manual_service(faults=(Fault.request_error("bad-*", status=400),))
    batch = submit(service, [chat("bad-1"), chat("good-1"), chat("bad-2")])
    service.clock.advance(1000)
    got = service.batch(batch["id"])
    assert got["status"] == "completed"
    assert got["request_counts"] == {"total": 3, "completed": 1, "failed": 2}
    errors = read_lines(service, got["error_file_id"])
    assert sorted(line["custom_id"] for line in errors) == ["bad-1", "bad-2"]
    for line in errors:
        assert line["error"] is None
        assert line["response"]["status_code"] == 400
        assert line["response"]["body"]["error"]["type"] == "invalid_request_error"
    assert [b.custom_id for b in service.journal.billed] == ["good-1"]
    again = submit(service, [chat("bad-1")])  # permanent: fails every time
    service.clock.advance(1000)
    assert service.batch(again["id"])["request_counts"]["failed"] == 1


def test_a_batch_whose_requests_all_failed_has_only_an_error_file() -> None:
    service = manual_service(faults=(Fault.request_error("*", status=400),))
    batch = submit(service, [chat("a"), chat("b")])
    service.clock.advance(1000)
    got = service.batch(batch["id"])
    assert got["status"] == "completed"
    assert got["output_file_id"] is None and got["error_file_id"] is not None
    assert got["usage"]["total_tokens"] == 0


@pytest.mark.parametrize("status", [500, 429])
def test_transient_request_failures_fail_only_the_first_attempts(status: int) -> None:
    service = manual_service(faults=(Fault.request_error("flaky", status=status, attempts=2),))
    outcomes = []
    for _ in range(3):
        batch = submit(service, [chat("flaky"), chat("steady")])
        service.clock.advance(1000)
        got = service.batch(batch["id"])
        errors = read_lines(service, got["error_file_id"])
        outcomes.append([line["response"]["status_code"] for line in errors])
    assert outcomes == [[status], [status], []]
    assert service.journal.billed_counts() == {"steady": 3, "flaky": 1}


def test_batch_fail_fault_fails_the_next_matching_batch_only() -> None:
    service = manual_service(faults=(Fault.batch_fail("x-*", code="server_error"),))
    spared = submit(service, [chat("y-1")])
    failed = submit(service, [chat("x-1")])
    later = submit(service, [chat("x-2")])
    service.clock.advance(10.001)
    assert service.batch(spared["id"])["status"] == "in_progress"
    assert service.batch(failed["id"])["status"] == "failed"
    assert service.batch(failed["id"])["errors"]["data"][0]["code"] == "server_error"
    assert service.batch(later["id"])["status"] == "in_progress"


def test_fail_from_outside_mid_run_keeps_what_was_billed() -> None:
    service = manual_service(tokens_per_second=1.0)
    lines = [chat(f"r{i}", "w " * 10) for i in range(4)]
    batch = submit(service, lines)
    service.clock.advance(10 + cost(service, lines[:2]) + 0.1)
    got = service.fail_batch(batch["id"], "server_error", "boom")
    assert got["status"] == "failed"
    assert got["errors"]["data"][0]["message"] == "boom"
    billed = {b.custom_id for b in service.journal.billed}
    assert {line["custom_id"] for line in read_lines(service, got["output_file_id"])} == billed


# --- listing ------------------------------------------------------------------------------


def test_list_batches_pages_newest_first() -> None:
    service = manual_service()
    ids = []
    for i in range(5):
        ids.append(submit(service, [chat(f"r{i}")])["id"])
        service.clock.advance(1)
    page = service.list_batches(limit=2)
    assert [b["id"] for b in page["data"]] == ids[::-1][:2] and page["has_more"]
    page = service.list_batches(limit=2, after=page["last_id"])
    assert [b["id"] for b in page["data"]] == ids[::-1][2:4] and page["has_more"]
    page = service.list_batches(limit=2, after=page["last_id"])
    assert [b["id"] for b in page["data"]] == ids[:1] and not page["has_more"]
    with pytest.raises(ApiError):
        service.list_batches(limit=101)


def test_deleted_files_are_gone() -> None:
    service = manual_service()
    upload = service.create_file("in.jsonl", "batch", b"{}\n")
    assert service.delete_file(upload["id"]) == {
        "id": upload["id"],
        "object": "file",
        "deleted": True,
    }
    with pytest.raises(ApiError) as info:
        service.file(upload["id"])
    assert info.value.status == 404


def test_working_ahead_in_slices_gives_the_same_results_as_looking_once() -> None:
    """work_ahead (the standalone server's own thread) only does early what a call would."""
    lines = [chat(f"r{i}", f"text {i} " * (2 * i + 1)) for i in range(15)]
    ahead = manual_service(fixed_entropy(), total_tokens_per_second=150.0)
    assert ahead.work_ahead() is False  # nothing due yet
    once = manual_service(fixed_entropy(), total_tokens_per_second=150.0)
    for service in (ahead, once):
        submit(service, lines[:8])
        service.add_fault(Fault.request_error("r3"))
        submit(service, lines[8:])
    slices = 0
    for _ in range(40):
        ahead.clock.advance(0.913)
        while ahead.work_ahead(slice_seconds=1e-9):  # every slice "slow": the step halves
            slices += 1
    once.clock.advance(40 * 0.913)
    assert slices > 1000  # it did the work in many small slices
    assert ahead.journal.billed  # before anyone looked
    assert ahead.batches() == once.batches()
    assert ahead.journal.billed == once.journal.billed
    for a, b in zip(ahead.batches(), once.batches(), strict=True):
        for name in ("output_file_id", "error_file_id"):
            assert read_lines(ahead, a[name]) == read_lines(once, b[name])
    assert ahead.journal.events == once.journal.events
