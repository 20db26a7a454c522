"""A build against a simulator that validates in the background (batches.create answers
before the input is read, as the real API's does): each request is billed once, nothing is
refused, and the outputs are complete and in input order."""

from __future__ import annotations

from pathlib import Path

import pytest
from buildkit import billed_twice, make_project, padded_chat

from gptbatch.errors import EXIT_OK

MODEL = "gpt-4o-mini"


@pytest.mark.timeout(60)
def test_a_build_against_background_validation_bills_each_request_once(
    tmp_path: Path, simulator_factory
) -> None:
    limit = 2_000
    sim = simulator_factory(
        token_limits={MODEL: limit}, hold_from_creation=True, background_validation=True
    )
    reqs = [padded_chat(f"r{i}") for i in range(40)]
    project = make_project(tmp_path, {"requests.jsonl": reqs}, limits={"enqueued_tokens": limit})
    assert project.build() == EXIT_OK
    batches = sim.service.batches()
    assert len(batches) > 3  # the limit made it pipeline several batches
    assert all(b["status"] == "completed" for b in batches)  # none refused
    assert billed_twice(sim) == []
    assert [o["custom_id"] for o in project.output()] == [r["custom_id"] for r in reqs]
    assert project.build() == EXIT_OK  # and a rebuild sends nothing
    assert len(sim.service.batches()) == len(batches)
