"""The simulator's Anthropic Message Batches, driven through the real `anthropic` SDK."""

from __future__ import annotations

import time
from typing import Any

import anthropic
import pytest

from gptbatch.simulator import Simulator


def _requests(n: int, prefix: str = "r") -> list[dict[str, Any]]:
    return [
        {
            "custom_id": f"{prefix}{i}",
            "params": {
                "model": "claude-sonnet-4-5",
                "max_tokens": 16,
                "messages": [{"role": "user", "content": f"hello {i}"}],
            },
        }
        for i in range(n)
    ]


def _client(sim: Simulator) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        api_key="sk-ant-test", base_url=sim.base_url.removesuffix("/v1"), max_retries=0
    )


def _ended(client: anthropic.Anthropic, batch_id: str) -> Any:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        batch = client.messages.batches.retrieve(batch_id)
        if batch.processing_status == "ended":
            return batch
        time.sleep(0.02)
    raise AssertionError(f"{batch_id} did not end")


def test_batch_lifecycle_counts_and_unordered_results(simulator: Simulator) -> None:
    client = _client(simulator)
    batch = client.messages.batches.create(requests=_requests(40))  # type: ignore[arg-type]
    assert batch.processing_status == "in_progress"
    assert batch.request_counts.processing == 40 and batch.request_counts.succeeded == 0
    assert batch.results_url is None
    ended = _ended(client, batch.id)
    assert ended.request_counts.processing == 0 and ended.request_counts.succeeded == 40
    assert ended.ended_at is not None and ended.results_url
    results = list(client.messages.batches.results(batch.id))
    ids = [r.custom_id for r in results]
    assert sorted(ids) == sorted(f"r{i}" for i in range(40))
    assert ids != [f"r{i}" for i in range(40)]  # no fixed order
    assert all(r.result.type == "succeeded" for r in results)
    assert sorted(b.custom_id for b in simulator.journal.billed) == sorted(ids)


def test_list_is_newest_first_and_pages(simulator: Simulator) -> None:
    client = _client(simulator)
    made = [client.messages.batches.create(requests=_requests(1)).id for _ in range(5)]  # type: ignore[arg-type]
    page = client.messages.batches.list(limit=2)
    assert [b.id for b in page.data] == made[::-1][:2] and page.has_more
    assert [b.id for b in client.messages.batches.list(limit=2)] == made[::-1]  # auto-paged
    after = client.messages.batches.list(limit=2, after_id=made[3])
    assert [b.id for b in after.data] == [made[2], made[1]]
    before = client.messages.batches.list(limit=2, before_id=made[1])
    assert [b.id for b in before.data] == [made[3], made[2]]


def test_cancel_ends_with_canceled_results_and_bills_nothing(simulator: Simulator) -> None:
    client = _client(simulator)
    simulator.service.anthropic.processing_seconds = 3600.0
    batch = client.messages.batches.create(requests=_requests(3))  # type: ignore[arg-type]
    assert client.messages.batches.cancel(batch.id).processing_status in ("canceling", "ended")
    ended = _ended(client, batch.id)
    assert ended.request_counts.canceled == 3 and ended.cancel_initiated_at is not None
    assert {r.result.type for r in client.messages.batches.results(batch.id)} == {"canceled"}
    assert simulator.journal.billed == []


def test_errored_results_and_bad_requests(simulator: Simulator) -> None:
    client = _client(simulator)
    simulator.service.anthropic.errored["r1"] = "overloaded_error"
    batch = client.messages.batches.create(requests=_requests(2))  # type: ignore[arg-type]
    _ended(client, batch.id)
    by_id = {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}
    assert by_id["r1"].type == "errored" and by_id["r0"].type == "succeeded"
    assert by_id["r1"].error.error.type == "overloaded_error"  # type: ignore[union-attr]
    bad = _requests(2)
    bad[1]["custom_id"] = "r0"
    with pytest.raises(anthropic.BadRequestError, match="duplicate custom_id"):
        client.messages.batches.create(requests=bad)  # type: ignore[arg-type]
    bad[1]["custom_id"] = "has space"
    with pytest.raises(anthropic.BadRequestError, match="custom_id"):
        client.messages.batches.create(requests=bad)  # type: ignore[arg-type]
    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.retrieve("msgbatch_missing")
