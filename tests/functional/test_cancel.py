"""`gptbatch cancel` against the simulator: stop in-flight batches, then build resumes the work."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from buildkit import billed_ids, chat, make_project, wait_until

from gptbatch.cli import main
from gptbatch.errors import EXIT_BAD_INPUT, EXIT_OK, EXIT_PENDING
from gptbatch.state.store import Store, state_dir

# Slow enough that a batch is still running when cancel comes: ~25 simulated tokens per
# request at 40 tokens/s and 10x speed, so 20 requests take over a second of real time.
SLOW = {"time_scale": 10.0, "tokens_per_second": 40.0, "validating_seconds": 2.0}


def _batches_of(sim, project: str) -> list[dict]:
    return [b for b in sim.service.batches() if b["metadata"]["gptbatch_project"] == project]


def _some_finished(sim) -> bool:
    return any(b["request_counts"]["completed"] > 0 for b in sim.service.batches())


def _freeze(sim) -> bool:
    sim.clock.time_scale = 0.0
    return True


def test_cancel_then_build_collects_finished_and_resubmits_rest(
    tmp_path: Path, simulator_factory, capsys
) -> None:
    sim = simulator_factory(**SLOW)
    reqs = [chat(f"r{i}") for i in range(20)]
    project = make_project(tmp_path / "a", {"requests.jsonl": reqs})
    other = make_project(tmp_path / "b", {"requests.jsonl": [chat(f"o{i}") for i in range(20)]})
    assert project.build("--no-wait") == EXIT_PENDING
    assert other.build("--no-wait") == EXIT_PENDING
    ours = _batches_of(sim, "test-a")
    assert len(ours) == 1
    # Time stops the moment some are seen finished: on a loaded machine the cancel could
    # otherwise come after the last one finished, with nothing left to resubmit.
    assert wait_until(lambda: _some_finished(sim) and _freeze(sim), timeout=20)
    capsys.readouterr()

    assert main(["cancel", str(project.config), "--json"]) == EXIT_OK
    report = json.loads(capsys.readouterr().out)
    assert [c["batch_id"] for c in report] == [ours[0]["id"]]
    assert report[0]["known"] is True
    assert report[0]["status"] in ("cancelling", "cancelled")
    # the cancellation is recorded in the state: status, and not yet collected
    store = Store(state_dir(project.out))
    try:
        row = store.batch(ours[0]["id"])
    finally:
        store.close()
    assert row is not None and row.status in ("cancelling", "cancelled") and not row.collected
    # another project's batch on the same key is untouched
    theirs = _batches_of(sim, "test-b")
    assert [b["status"] for b in theirs if b["status"] in ("cancelling", "cancelled")] == []

    sim.clock.time_scale = SLOW["time_scale"]
    assert project.build() == EXIT_OK
    out = project.output()
    assert [o["custom_id"] for o in out] == [r["custom_id"] for r in reqs]
    assert all(o["response"]["status_code"] == 200 for o in out)
    mine = [c for c in billed_ids(sim) if c.startswith("r")]
    assert sorted(mine) == sorted(r["custom_id"] for r in reqs)  # exactly one success each
    per_batch = [(b.batch_id, b.custom_id) for b in sim.journal.billed]
    assert len(per_batch) == len(set(per_batch))
    assert len(_batches_of(sim, "test-a")) >= 2  # the unfinished rest went in a new batch


def test_cancel_finds_batches_by_metadata_when_state_is_lost(
    tmp_path: Path, simulator_factory, capsys
) -> None:
    sim = simulator_factory(**SLOW)
    reqs = [chat(f"r{i}") for i in range(20)]
    project = make_project(tmp_path, {"requests.jsonl": reqs})
    assert project.build("--no-wait") == EXIT_PENDING
    shutil.rmtree(state_dir(project.out))  # a lost CI cache
    capsys.readouterr()
    assert main(["cancel", str(project.config)]) == EXIT_OK
    text = capsys.readouterr().out
    assert "found at the API by its metadata" in text
    assert all(b["status"] in ("cancelling", "cancelled") for b in sim.service.batches())
    assert project.build() == EXIT_OK
    assert [o["custom_id"] for o in project.output()] == [r["custom_id"] for r in reqs]
    assert sorted(billed_ids(sim)) == sorted(r["custom_id"] for r in reqs)


def test_cancel_with_nothing_in_flight_says_so(tmp_path: Path, simulator, capsys) -> None:
    project = make_project(tmp_path, {"requests.jsonl": [chat("r0")]})
    assert project.build() == EXIT_OK
    capsys.readouterr()
    assert main(["cancel", str(project.config)]) == EXIT_OK
    assert "nothing to cancel" in capsys.readouterr().out


def test_cancel_without_key_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.chdir(tmp_path)
    project = make_project(tmp_path, {"requests.jsonl": [chat("r0")]})
    assert main(["cancel", str(project.config)]) == EXIT_BAD_INPUT
    assert "OPENAI_API_KEY" in capsys.readouterr().err


def test_cancel_waits_for_no_build(tmp_path: Path, simulator, capsys) -> None:
    from gptbatch.errors import EXIT_LOCKED
    from gptbatch.state.lock import BuildLock

    project = make_project(tmp_path, {"requests.jsonl": [chat("r0")]})
    with BuildLock(project.out, state_dir(project.out)):
        assert main(["cancel", str(project.config)]) == EXIT_LOCKED
    assert "another gptbatch build holds the lock" in capsys.readouterr().err
    assert simulator.service.batches() == []
