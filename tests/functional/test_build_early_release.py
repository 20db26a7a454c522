"""Early release: the next batch is created while another finalizes, never refused for it.

Where this queue has shown that validation takes no less than finalizing, a batch seen
finalizing stops counting against the room (engine/scheduler.py), so its replacement
validates while it finalizes and starts as it completes. These builds drive the real CLI
against the simulator on both queue semantics (tokens held from creation or from
in_progress) and check the journal: the overlap happened, nothing was refused, nothing was
billed twice, and where finalizing is slower than validation nothing was created early.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from buildkit import (
    billed_ids,
    billed_twice,
    creations_past,
    json_events,
    make_project,
    padded_chat,
    peak_in_flight,
    refused,
)

from gptbatch.errors import EXIT_OK
from gptbatch.inputs import tokens

MODEL = "gpt-4o-mini"
LIMIT, MARGIN = 2_000, 0.05
WORKING = int(LIMIT * (1 - MARGIN))


def weights(sim, *, ours: bool = False) -> dict[str, int]:
    """batch id -> prompt tokens of its input file: the simulator's count, or (ours)
    gptbatch's own estimate, which its budget is kept in."""
    out = {}
    for b in sim.service.batches():
        data = sim.service.file_content(b["input_file_id"])
        rows = [json.loads(line) for line in data.splitlines() if line.strip()]
        out[b["id"]] = sum(
            tokens.estimate_request(r["url"], r["body"]).tokens
            if ours
            else sim.service.prompt_tokens(r["url"], r["body"])
            for r in rows
        )
    return out


def early_creations(sim, ours: dict[str, int]) -> list[tuple[str, list[str]]]:
    """(created, finalizing): batches created past the working budget, by gptbatch's own
    estimates of all that was active then, with the batches finalizing at that moment."""
    return creations_past(sim, ours, WORKING)


def held_peak(sim, weight: dict[str, int], holding: tuple[str, ...]) -> int:
    """The most tokens the simulator counted against the limit at any instant."""
    return int(peak_in_flight(sim, weight, holding)[0])


def queue(simulator_factory, **overrides):
    values = {
        "token_limits": {MODEL: LIMIT},
        "time_scale": 20.0,
        "tokens_per_second": 20.0,  # a ~475-token shard runs ~24 s
        "total_tokens_per_second": 0.0,
        "validating_seconds": 10.0,
        "finalizing_seconds": 10.0,
    }
    return simulator_factory(**{**values, **overrides})


def build(tmp_path: Path, reqs: list[dict], capsys) -> list[dict]:
    """Build reqs under the limit with --json; its events."""
    project = make_project(
        tmp_path,
        {"requests.jsonl": reqs},
        limits={"enqueued_tokens": LIMIT, "safety_margin": MARGIN},
    )
    assert project.build("--json") == EXIT_OK
    return json_events(capsys.readouterr().out)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("from_creation", [True, False], ids=["held-from-creation", "from-run"])
def test_next_batch_validates_while_one_finalizes_without_refusals(
    tmp_path: Path, simulator_factory, capsys, from_creation: bool
) -> None:
    sim = queue(simulator_factory, hold_from_creation=from_creation)
    reqs = [padded_chat(f"r{i}") for i in range(72)]  # ~100 tokens each
    events = build(tmp_path, reqs, capsys)

    assert refused(sim) == []
    assert all(b["status"] == "completed" for b in sim.service.batches())
    assert sorted(billed_ids(sim)) == sorted(r["custom_id"] for r in reqs)
    assert billed_twice(sim) == []
    assert [e for e in events if e["event"] == "summary"][-1]["refusals"] == 0
    released = [e["batch"] for e in events if e["event"] == "early_release"]
    assert released, "no batch was released early"
    # Created past the budget only while a released batch finalized.
    ours = weights(sim, ours=True)
    early = early_creations(sim, ours)
    assert early and all(set(finalizing) & set(released) for _, finalizing in early)
    # One release at a time: at most one batch's worth over the working budget is claimed,
    # and what the simulator counts from in_progress never passes the limit.
    active = ("validating", "in_progress", "finalizing")
    assert held_peak(sim, ours, active) <= WORKING + max(ours.values())
    assert held_peak(sim, weights(sim), ("in_progress", "finalizing")) <= LIMIT


@pytest.mark.timeout(120)
@pytest.mark.parametrize("from_creation", [True, False], ids=["held-from-creation", "from-run"])
def test_no_early_batch_where_finalizing_outlasts_validation(
    tmp_path: Path, simulator_factory, capsys, from_creation: bool
) -> None:
    """A queue whose batches finalize for longer than they validate: a batch created while
    one finalizes could start before it ends, so none is, and the claim never passes the
    working budget (the release that would be predicted does not come in time)."""
    sim = queue(simulator_factory, hold_from_creation=from_creation, finalizing_seconds=30.0)
    reqs = [padded_chat(f"r{i}") for i in range(48)]
    events = build(tmp_path, reqs, capsys)

    assert not [e for e in events if e["event"] == "early_release"]
    # What flies (by gptbatch's estimates, from creation to the end) never passes the budget.
    ours = weights(sim, ours=True)
    assert early_creations(sim, ours) == []
    assert held_peak(sim, ours, ("validating", "in_progress", "finalizing")) <= WORKING
    assert refused(sim) == []
    assert sorted(billed_ids(sim)) == sorted(r["custom_id"] for r in reqs)
    assert billed_twice(sim) == []
