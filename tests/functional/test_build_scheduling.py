"""Scheduling within the queue: token budget, refusals, request limits, the spend cap."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from buildkit import (
    batch_members,
    billed_ids,
    creates,
    embedding,
    json_events,
    make_project,
    padded_chat,
    peak_in_flight,
    uploads,
)

from gptbatch.errors import EXIT_OK, EXIT_PENDING
from gptbatch.inputs import tokens

MODEL = "gpt-4o-mini"
# Batches hold their place in the queue for a real second while finalizing, so batches
# submitted one after the other overlap even on a slow machine.
HOLD = 100.0


def estimated(sim) -> dict[str, float]:
    """batch id -> prompt tokens of its input file, as gptbatch's own estimator counts them."""
    return {
        bid: float(sum(tokens.estimate_request(r["url"], r["body"]).tokens for r in rows))
        for bid, rows in batch_members(sim).items()
    }


def requests_per_batch(sim) -> dict[str, float]:
    return {bid: float(len(rows)) for bid, rows in batch_members(sim).items()}


def storm_checks(sim, project, reqs: list[dict], events: list[dict]) -> dict[str, list[dict]]:
    """What every refusal storm must end with; returns the refused and completed batches."""
    # Every request has a result and was paid for exactly once.
    assert [o["custom_id"] for o in project.output()] == [r["custom_id"] for r in reqs]
    assert sorted(billed_ids(sim)) == sorted(r["custom_id"] for r in reqs)
    assert project.errors() == []

    batches = sim.service.batches()
    refused = [
        b
        for b in batches
        if b["status"] == "failed"
        and any(e["code"] == "token_limit_exceeded" for e in b["errors"]["data"])
    ]
    done = [b for b in batches if b["status"] == "completed"]
    assert refused, "the scenario must provoke refusals"
    assert len(refused) + len(done) == len(batches) == creates(sim)
    # Counted and reported.
    assert len([e for e in events if e["event"] == "refused"]) == len(refused)
    assert [e for e in events if e["event"] == "summary"][-1]["refusals"] == len(refused)
    # No shard's file is uploaded twice.
    files = {b["input_file_id"] for b in batches}
    assert uploads(sim) == len(files) == len({sim.service.file_content(f) for f in files})
    # The working budget went down, below the nominal 1,800, and the build said so.
    lowered = [e for e in events if e["event"] == "budget" and e["new"] < e["old"]]
    assert lowered and lowered[0]["old"] == 1_800
    assert all(e["model"] == MODEL for e in lowered)
    # Not hammered: at most one refusal per batch that went through.
    assert len(refused) <= len(done)
    return {"refused": refused, "done": done}


@pytest.mark.timeout(60)
def test_refusals_below_our_budget_lower_it_and_reuse_files(
    tmp_path: Path, simulator_factory, capsys
) -> None:
    """The service refuses work our count says fits: the budget drops, the file is reused.

    Config: 2,000 tokens, so 1,800 usable: two ~800-token shards fit by our count. The
    service holds 1,000, so the second one is refused while the first is in flight.
    """
    sim = simulator_factory(token_limits={MODEL: 1_000}, finalizing_seconds=HOLD)
    reqs = [padded_chat(f"r{i}") for i in range(16)]
    project = make_project(
        tmp_path,
        {"requests.jsonl": reqs},
        limits={
            "enqueued_tokens": 2_000,
            "safety_margin": 0.1,
            "max_requests_per_batch": 8,
            "pipeline": 1,
        },
    )
    assert project.build("--json") == EXIT_OK
    seen = storm_checks(sim, project, reqs, json_events(capsys.readouterr().out))
    # The refused shard went back with the file it had uploaded: same file, another batch.
    reused = {b["input_file_id"] for b in seen["refused"]} & {
        b["input_file_id"] for b in seen["done"]
    }
    assert reused, "a refused shard was uploaded again"
    assert uploads(sim) == 2 < creates(sim)


@pytest.mark.timeout(60)
def test_refused_shards_too_big_for_the_service_are_repacked(
    tmp_path: Path, simulator_factory, capsys
) -> None:
    """The service holds 500 tokens, less than any shard as first packed: repack smaller."""
    sim = simulator_factory(token_limits={MODEL: 500})
    reqs = [padded_chat(f"r{i}") for i in range(24)]
    project = make_project(
        tmp_path,
        {"requests.jsonl": reqs},
        limits={
            "enqueued_tokens": 2_000,
            "safety_margin": 0.1,
            "max_requests_per_batch": 8,
            "pipeline": 1,
        },
    )
    assert project.build("--json") == EXIT_OK
    events = json_events(capsys.readouterr().out)
    seen = storm_checks(sim, project, reqs, events)
    assert [e for e in events if e["event"] == "dropped"], "no refused shard was repacked"
    # The refusal names the service's limit (500): the budget drops under it in one step.
    lowered = [e for e in events if e["event"] == "budget" and e["new"] < e["old"]]
    assert lowered[0]["new"] == 450
    assert all(len(batch_members(sim)[b["id"]]) < 8 for b in seen["done"])


@pytest.mark.timeout(60)
def test_queue_keeps_two_shards_in_flight_within_budget(
    tmp_path: Path, simulator_factory, capsys
) -> None:
    """Estimated tokens in flight never pass limit*(1-margin), and the queue is kept full."""
    sim = simulator_factory(token_limits={MODEL: 2_000}, finalizing_seconds=HOLD)
    reqs = [padded_chat(f"r{i}") for i in range(32)]
    project = make_project(
        tmp_path,
        {"requests.jsonl": reqs},
        limits={
            "enqueued_tokens": 2_000,
            "safety_margin": 0.1,
            "max_requests_per_batch": 8,
            "pipeline": 1,
        },
    )
    assert project.build("--json") == EXIT_OK
    weights = estimated(sim)
    assert len(weights) == 4
    assert all(700 < w < 900 for w in weights.values())  # so exactly two fit in 1,800
    peak, most = peak_in_flight(sim, weights)
    assert peak <= 2_000 * (1 - 0.1)
    assert most == 2, "the scheduler submitted one batch at a time"
    # Nothing was refused: our own budget kept us under the service's limit.
    assert all(b["status"] == "completed" for b in sim.service.batches())
    assert sorted(billed_ids(sim)) == sorted(r["custom_id"] for r in reqs)
    events = json_events(capsys.readouterr().out)
    assert not [e for e in events if e["event"] == "refused"]


@pytest.mark.timeout(60)
def test_enqueued_requests_limit_is_respected(tmp_path: Path, simulator_factory) -> None:
    """limits.enqueued_requests: never more requests queued than the service allows."""
    model = "text-embedding-3-small"
    sim = simulator_factory(request_limits={model: 10})
    reqs = [embedding(f"e{i}") for i in range(30)]
    project = make_project(
        tmp_path,
        {"requests.jsonl": reqs},
        limits={"enqueued_requests": {model: 10}, "max_requests_per_batch": 5},
    )
    assert project.build() == EXIT_OK
    peak, most = peak_in_flight(sim, requests_per_batch(sim))
    assert peak <= 10
    assert most >= 2
    assert all(b["status"] == "completed" for b in sim.service.batches())
    assert sorted(billed_ids(sim)) == sorted(r["custom_id"] for r in reqs)


@pytest.mark.timeout(15)
def test_enqueued_requests_limit_smaller_than_a_batch(tmp_path: Path, simulator_factory) -> None:
    """With no per-batch cap, shards must still be cut to fit limits.enqueued_requests."""
    model = "text-embedding-3-small"
    sim = simulator_factory(request_limits={model: 10})
    reqs = [embedding(f"e{i}") for i in range(30)]
    project = make_project(
        tmp_path, {"requests.jsonl": reqs}, limits={"enqueued_requests": {model: 10}}
    )
    assert project.build() == EXIT_OK
    assert all(len(rows) <= 10 for rows in batch_members(sim).values())
    peak, _ = peak_in_flight(sim, requests_per_batch(sim))
    assert peak <= 10
    assert not [b for b in sim.service.batches() if b["status"] == "failed"]
    assert sorted(billed_ids(sim)) == sorted(r["custom_id"] for r in reqs)


@pytest.mark.timeout(60)
def test_max_cost_stops_within_the_cap(tmp_path: Path, simulator, capsys) -> None:
    """limits.max_cost: submit only what fits the cap, exit pending, say what is left."""
    price = 1_000.0  # USD per 1M prompt tokens: ~100-token requests cost ~$0.10 each
    reqs = [padded_chat(f"r{i}") for i in range(40)]
    per_request = [tokens.estimate_request(r["url"], r["body"]).tokens * price / 1e6 for r in reqs]
    shard_cost = sum(per_request[:10])  # one shard of 10 requests, ~$1.00
    cap = 2.5 * shard_cost
    project = make_project(
        tmp_path,
        {"requests.jsonl": reqs},
        limits={"max_cost": round(cap, 4), "max_requests_per_batch": 10},
        prices={MODEL: {"input": price, "output": 0.0}},
    )
    assert project.build() == EXIT_PENDING
    out = capsys.readouterr().out

    # Two shards fit under the cap; the third would pass it.
    assert creates(simulator) == 2
    billed = simulator.journal.billed
    assert len(billed) == 20
    assert sum(b.prompt_tokens for b in billed) * price / 1e6 <= cap
    assert len(project.output()) == 20

    # It says why it stopped, what is committed, and what the next shard would cost.
    assert "spend cap" in out
    match = re.search(r"would cost \$([0-9.]+)", out)
    assert match, out
    assert float(match.group(1)) == pytest.approx(shard_cost, rel=0.05)
    assert "20 pending" in out

    # A rerun submits nothing more.
    assert project.build() == EXIT_PENDING
    assert creates(simulator) == 2


@pytest.mark.timeout(60)
def test_max_cost_follows_a_price_change_in_the_config(tmp_path: Path, simulator) -> None:
    """Costs are estimated at the prices in batch.yaml now, not when a request was first seen."""
    price = 1_000.0
    reqs = [padded_chat(f"r{i}") for i in range(40)]
    shard_cost = sum(
        tokens.estimate_request(r["url"], r["body"]).tokens * price / 1e6 for r in reqs[:10]
    )
    cap = round(2.5 * shard_cost, 4)
    project = make_project(
        tmp_path,
        {"requests.jsonl": reqs},
        limits={"max_cost": cap, "max_requests_per_batch": 10},
        prices={MODEL: {"input": price, "output": 0.0}},
    )
    assert project.build() == EXIT_PENDING
    assert creates(simulator) == 2
    # A tenth of the price: the remaining two shards cost ~$0.20 together, well under the cap.
    text = project.config.read_text()
    cheaper = text.replace("input: 1000.0", "input: 100.0")
    assert cheaper != text
    project.config.write_text(cheaper)
    assert project.build() == EXIT_OK
    assert creates(simulator) == 4
    assert sorted(billed_ids(simulator)) == sorted(r["custom_id"] for r in reqs)
