"""build -B / --retry-failed keep make's promise: an old result stays the output until its
replacement arrives, and a forced build that stops early (spend cap, Ctrl-C, SIGTERM,
--no-wait) leaves the rest up to date: the plain build after it sends nothing more."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pytest
from buildkit import (
    REPO,
    Project,
    billed_ids,
    chat,
    creates,
    make_project,
    read_jsonl,
    start_build,
    update_config,
    wait_until,
)

from gptbatch.cli import main
from gptbatch.errors import EXIT_FAILED_REQUESTS, EXIT_INTERRUPTED, EXIT_OK, EXIT_PENDING
from gptbatch.simulator import Fault

HOLD = 40_000.0  # batches sit in `validating` until the test moves the simulator's clock
OUTPUTS = {"reviews": 12, "embeddings": 8}  # the examples' two inputs


def examples(tmp_path: Path) -> Project:
    """A copy of examples/ (never the working tree), polling fast."""
    root = tmp_path / "examples"
    shutil.copytree(REPO / "examples", root, ignore=shutil.ignore_patterns("out*"))
    project = Project(root, root / "batch.yaml")
    update_config(project, polling={"initial_seconds": 0.02, "max_seconds": 0.2, "factor": 1.5})
    return project


def outputs(out: Path) -> dict[str, list[str]]:
    """Each output's lines (the raw text, so a replaced result shows)."""
    return {name: (out / f"{name}.jsonl").read_text().splitlines() for name in OUTPUTS}


def assert_complete(lines: dict[str, list[str]]) -> None:
    assert {name: len(rows) for name, rows in lines.items()} == OUTPUTS


def in_flight(sim, count: int) -> bool:
    return sum(b["status"] == "validating" for b in sim.service.batches()) >= count


def first_build(project: Project, sim) -> None:
    """Build everything once with batches held in validating (released here)."""
    proc = start_build(project)
    try:
        assert wait_until(lambda: in_flight(sim, 2)), "the build never submitted"
        sim.clock.advance(HOLD)
        assert proc.wait(timeout=30) == EXIT_OK, proc.communicate()[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.timeout(60)
def test_forced_build_refused_by_the_spend_cap_keeps_every_result(
    tmp_path: Path, simulator, capsys
) -> None:
    project = examples(tmp_path)
    assert project.build() == EXIT_OK
    before = outputs(project.out)
    assert_complete(before)
    sent, billed = creates(simulator), sorted(billed_ids(simulator))

    assert project.build("-B", "--max-cost", "0.0000001") == EXIT_PENDING  # nothing sent
    assert creates(simulator) == sent
    assert outputs(project.out) == before  # was 20 -> 0 lines
    capsys.readouterr()
    assert main(["export", str(project.config)]) == EXIT_OK
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 20 and all(r["status"] == "ok" and r["reply"] for r in rows)
    # status says what becomes of the shards the capped run packed, not the stale cap.
    assert main(["status", str(project.config), "--explain"]) == EXIT_OK
    explained = capsys.readouterr().out
    assert explained.count("stopped before sending it") == 2 and "spend cap" not in explained

    assert project.build() == EXIT_OK  # up to date: nothing more is sent or billed
    assert creates(simulator) == sent and sorted(billed_ids(simulator)) == billed
    assert outputs(project.out) == before
    assert main(["status", str(project.config), "--explain"]) == EXIT_OK
    assert "stopped before sending it" not in capsys.readouterr().out  # dropped by the build


@pytest.mark.timeout(90)
def test_forced_rehearsal_refused_by_the_spend_cap_keeps_every_result(
    tmp_path: Path, capsys
) -> None:
    project = examples(tmp_path)
    out = project.root / "out-simulated"
    assert project.build("--simulate") == EXIT_OK
    before = outputs(out)
    assert_complete(before)
    capsys.readouterr()
    assert project.build("--simulate", "-B", "--max-cost", "0.0000001") == EXIT_PENDING
    assert outputs(out) == before
    said = capsys.readouterr().out
    # A plain build would not continue a forced one, so the summary does not say it would.
    assert "keep their earlier results" in said and "--simulate -B` with a larger" in said
    assert "again to continue" not in said
    assert project.build("--simulate") == EXIT_OK
    assert "0 batches submitted" in capsys.readouterr().out
    assert outputs(out) == before


@pytest.mark.timeout(90)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_forced_build_keeps_results_until_replaced(
    tmp_path: Path, simulator_factory, signum: int
) -> None:
    sim = simulator_factory(validating_seconds=HOLD)
    project = examples(tmp_path)
    first_build(project, sim)
    before = outputs(project.out)
    assert_complete(before)

    proc = start_build(project, "-B")
    try:
        assert wait_until(lambda: len(sim.service.batches()) == 4), "-B never submitted"
        assert wait_until(lambda: in_flight(sim, 2))
        wait_until(lambda: False, timeout=0.3)  # let it record the batches and poll
        proc.send_signal(signum)
        code = proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == EXIT_INTERRUPTED, proc.communicate()[1]
    assert outputs(project.out) == before  # was 60 -> 0 lines
    sent = creates(sim)
    assert sent == 4

    sim.clock.advance(HOLD)
    assert project.build() == EXIT_OK  # collects what -B sent; sends nothing more
    assert creates(sim) == sent
    assert set(sim.journal.billed_counts().values()) == {2}  # the first build and -B
    after = outputs(project.out)
    assert_complete(after)
    assert after != before  # the replacements arrived


@pytest.mark.timeout(60)
def test_forced_build_without_waiting_keeps_results_until_replaced(
    tmp_path: Path, simulator
) -> None:
    project = examples(tmp_path)
    assert project.build() == EXIT_OK
    before = outputs(project.out)
    sent = creates(simulator)

    assert project.build("-B", "--no-wait") == EXIT_PENDING
    assert creates(simulator) == sent + 2
    assert outputs(project.out) == before  # was 30 -> 0 lines

    assert project.build() == EXIT_OK
    assert creates(simulator) == sent + 2  # the plain build only collected -B's batches
    assert set(simulator.journal.billed_counts().values()) == {2}  # was 3 for all
    assert_complete(outputs(project.out))
    assert project.build() == EXIT_OK and creates(simulator) == sent + 2


@pytest.mark.timeout(60)
def test_interrupted_retry_failed_keeps_the_errors_file(tmp_path: Path, simulator) -> None:
    simulator.add_fault(Fault.request_error("bad", status=400, attempts=1))  # fails once only
    project = make_project(tmp_path, {"requests.jsonl": [chat("ok"), chat("bad")]})
    assert project.build() == EXIT_FAILED_REQUESTS
    errors = (project.out / "requests.errors.jsonl").read_text()
    sent = creates(simulator)

    assert project.build("--retry-failed", "--max-cost", "0.0000001") == EXIT_PENDING
    assert (project.out / "requests.errors.jsonl").read_text() == errors  # was deleted
    assert project.build() == EXIT_FAILED_REQUESTS  # up to date: not retried by itself
    assert creates(simulator) == sent
    assert (project.out / "requests.errors.jsonl").read_text() == errors

    assert project.build("--retry-failed") == EXIT_OK
    assert project.errors() == []
    assert [o["custom_id"] for o in project.output()] == ["ok", "bad"]


def test_forced_build_with_a_transient_failure_keeps_the_old_result(
    tmp_path: Path, simulator
) -> None:
    """A resend that comes back retryable leaves the old result; it is sent again."""
    project = make_project(tmp_path, {"requests.jsonl": [chat("a"), chat("b")]})
    assert project.build() == EXIT_OK
    before = (project.out / "requests.jsonl").read_text()
    simulator.add_fault(Fault.request_error("b", status=500, attempts=1))
    assert project.build("-B") == EXIT_OK
    counts = simulator.journal.billed_counts()
    assert counts["a"] == 2 and counts["b"] == 2  # the 500 was not billed
    lines = read_jsonl(project.out / "requests.jsonl")
    assert [r["custom_id"] for r in lines] == ["a", "b"]
    assert (project.out / "requests.jsonl").read_text() != before
