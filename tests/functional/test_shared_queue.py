"""Two gptbatch projects on one API key share one enqueued-token limit without refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
from buildkit import (
    batch_members,
    billed_ids,
    make_project,
    padded_chat,
    peak_in_flight,
    refused,
    start_build,
)

from gptbatch.engine.batches import META_TOKENS, queue_tag
from gptbatch.errors import EXIT_OK
from gptbatch.inputs import tokens

MODEL = "gpt-4o-mini"


@pytest.mark.timeout(120)
def test_two_projects_started_together_share_one_limit_without_refusals(
    tmp_path: Path, simulator_factory
) -> None:
    """Two `gptbatch build` processes, one simulator, one limit: each counts the other's
    batches in flight from batches.list (their metadata carries the estimates), so neither
    is refused, each request is billed once, and the queue is used nearly to the limit."""
    # A margin of 300 tokens: a build the other one fills the queue before sends one small
    # batch (a request, ~100 tokens) into half of it to be seen, then shares the queue.
    limit, margin = 3_000, 0.1
    sim = simulator_factory(
        token_limits={MODEL: limit},
        hold_from_creation=True,
        time_scale=20.0,
        tokens_per_second=60.0,
        total_tokens_per_second=0.0,
        validating_seconds=2.0,
        finalizing_seconds=2.0,
    )
    projects, wanted = [], []
    for name in ("a", "b"):
        reqs = [padded_chat(f"{name}{i}") for i in range(48)]  # ~100 tokens each
        wanted += [r["custom_id"] for r in reqs]
        root = tmp_path / name
        root.mkdir()
        projects.append(
            make_project(
                root,
                {"requests.jsonl": reqs},
                project=f"shared-{name}",
                limits={"enqueued_tokens": limit, "safety_margin": margin},
            )
        )
    procs = [start_build(p) for p in projects]
    for proc in procs:
        _, err = proc.communicate(timeout=100)
        assert proc.returncode == EXIT_OK, err[-2000:]

    batches = sim.service.batches()
    assert refused(sim) == []
    # Each build collected its own requests only: the other's batches were counted, not taken.
    for name, project in zip("ab", projects, strict=True):
        assert [o["custom_id"] for o in project.output()] == [f"{name}{i}" for i in range(48)]
        assert all(o["response"] is not None for o in project.output())
    assert all(b["status"] == "completed" for b in batches)
    assert sorted(billed_ids(sim)) == sorted(wanted)
    # Every batch says what it holds, in gptbatch's own estimate.
    weights = {
        bid: sum(tokens.estimate_request(r["url"], r["body"]).tokens for r in rows)
        for bid, rows in batch_members(sim).items()
    }
    for b in batches:
        tag = queue_tag(b["metadata"])
        assert tag is not None, b["metadata"]
        assert tag.tokens == weights[b["id"]] and tag.model == MODEL, b["metadata"][META_TOKENS]
    # ... and whether more of its project follows: only each project's newest says no.
    for name in ("shared-a", "shared-b"):
        mine = sorted(
            (b for b in batches if b["metadata"]["gptbatch_project"] == name),
            key=lambda b: b["created_at"],
        )
        more = [queue_tag(b["metadata"]).more for b in mine]  # type: ignore[union-attr]
        assert more == [True] * (len(mine) - 1) + [False]
    peak, _ = peak_in_flight(sim, {k: float(v) for k, v in weights.items()})
    assert limit * 0.7 <= peak <= limit * (1 - margin / 2)
    # They shared it: at some instant both projects had batches in flight.
    owner = {b["id"]: b["metadata"]["gptbatch_project"] for b in batches}
    flying: dict[str, str] = {}
    both = False
    for e in sorted(sim.journal.events, key=lambda e: e.at):
        flying[e.batch_id] = e.status
        live = {owner[b] for b, st in flying.items() if st not in ("completed", "failed")}
        both = both or len(live) == 2
    assert both
