"""Build modes: --no-wait runs, two builds at once, Ctrl-C and SIGTERM."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest
from buildkit import (
    ACTIVE_BATCH_STATUSES,
    batch_count,
    billed_ids,
    chat,
    creates,
    make_project,
    start_build,
    wait_until,
)

from gptbatch.errors import EXIT_INTERRUPTED, EXIT_LOCKED, EXIT_OK, EXIT_PENDING

# Batches sit in `validating` until the test moves the simulator's clock past HOLD (400 real
# seconds otherwise, inside the 24 h window): a loaded machine cannot finish them early.
HOLD = 40_000.0


def ids(rows: list[dict]) -> list[str]:
    return [r["custom_id"] for r in rows]


def in_flight(sim) -> bool:
    return any(b["status"] in ACTIVE_BATCH_STATUSES for b in sim.service.batches())


@pytest.mark.timeout(30)
def test_no_wait_submits_then_collects_then_does_nothing(tmp_path: Path, simulator, capsys) -> None:
    reqs = [chat(f"r{i}") for i in range(12)]
    project = make_project(tmp_path, {"requests.jsonl": reqs})
    assert project.build("--no-wait") == EXIT_PENDING
    assert creates(simulator) == 1
    assert project.output() == []  # written at the end of the run, with nothing done yet
    assert "12 pending" in capsys.readouterr().out

    runs = 1
    while (code := project.build("--no-wait")) == EXIT_PENDING:
        runs += 1
        assert runs < 200, "the batch never got collected"
        time.sleep(0.05)
    assert code == EXIT_OK
    assert creates(simulator) == 1  # the runs in between only polled
    assert ids(project.output()) == ids(reqs)
    assert sorted(billed_ids(simulator)) == sorted(ids(reqs))

    calls = len(simulator.journal.calls)
    assert project.build("--no-wait") == EXIT_OK
    assert creates(simulator) == 1
    assert len(simulator.journal.calls) == calls  # nothing left: no API call at all


@pytest.mark.timeout(30)
def test_second_build_while_first_waits_is_locked_out(
    tmp_path: Path, simulator_factory, capsys
) -> None:
    sim = simulator_factory(validating_seconds=HOLD)
    reqs = [chat(f"r{i}") for i in range(8)]
    project = make_project(tmp_path, {"requests.jsonl": reqs})
    first = start_build(project)
    try:
        assert wait_until(lambda: in_flight(sim)), "the first build never submitted"
        assert project.build() == EXIT_LOCKED
        err = capsys.readouterr().err
        assert "lock" in err and str(project.out) in err
        sim.clock.advance(HOLD)
        assert first.wait(timeout=20) == EXIT_OK, first.stderr.read() if first.stderr else ""
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert creates(sim) == 1
    assert sorted(billed_ids(sim)) == sorted(ids(reqs))
    assert ids(project.output()) == ids(reqs)


@pytest.mark.timeout(60)
def test_two_builds_started_together(tmp_path: Path, simulator_factory) -> None:
    sim = simulator_factory(validating_seconds=HOLD)
    reqs = [chat(f"r{i}") for i in range(8)]
    project = make_project(tmp_path, {"requests.jsonl": reqs})
    results: list = [None, None]
    go = threading.Barrier(2)

    def run(slot: int) -> None:
        go.wait()
        results[slot] = project.build_process(timeout=40)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    # The winner waits on its held batch; release it once the loser has given up.
    assert wait_until(lambda: results.count(None) == 1 and in_flight(sim), timeout=30)
    sim.clock.advance(HOLD)
    for t in threads:
        t.join()
    codes = sorted(r.returncode for r in results)
    assert codes == [EXIT_OK, EXIT_LOCKED], [r.stderr for r in results]
    loser = next(r for r in results if r.returncode == EXIT_LOCKED)
    assert "lock" in loser.stderr and str(project.out) in loser.stderr
    assert creates(sim) == 1
    assert sorted(billed_ids(sim)) == sorted(ids(reqs))


@pytest.mark.timeout(30)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_stops_promptly_and_rerun_adopts_the_batch(
    tmp_path: Path, simulator_factory, signum: int
) -> None:
    sim = simulator_factory(validating_seconds=HOLD)
    reqs = [chat(f"r{i}") for i in range(8)]
    project = make_project(tmp_path, {"requests.jsonl": reqs})
    proc = start_build(project)
    try:
        assert wait_until(lambda: in_flight(sim)), "the build never submitted"
        time.sleep(0.1)  # let it record the batch and go back to polling
        sent = time.monotonic()
        proc.send_signal(signum)
        code = proc.wait(timeout=10)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    _, err = proc.communicate()
    assert code == EXIT_INTERRUPTED, err
    assert took < 10
    assert "interrupted" in err
    # The batch keeps running at the API: nothing cancelled it.
    assert not any(c.path.endswith("/cancel") for c in sim.journal.calls)
    assert [b["status"] for b in sim.service.batches()] == ["validating"]

    sim.clock.advance(HOLD)
    assert project.build() == EXIT_OK
    assert creates(sim) == batch_count(sim) == 1
    assert sorted(billed_ids(sim)) == sorted(ids(reqs))
    assert ids(project.output()) == ids(reqs)


@pytest.mark.timeout(60)
def test_builds_racing_on_a_fresh_directory_only_see_the_lock(
    tmp_path: Path, simulator_factory, capsys
) -> None:
    """Four builds started at the same instant on a new output directory, three times over.

    Exactly one works; the others stop on the lock (exit 5), never on a half-created state
    database. In-process threads start closer together than processes can.
    """
    sim = simulator_factory(validating_seconds=50.0)
    for round_ in range(3):
        reqs = [chat(f"x{round_}-{i}") for i in range(4)]
        project = make_project(tmp_path / f"round{round_}", {"requests.jsonl": reqs})
        codes: list[int | None] = [None] * 4
        go = threading.Barrier(len(codes))

        def run(slot: int, project=project, codes=codes, go=go) -> None:
            go.wait()
            codes[slot] = project.build()

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(codes))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        err = capsys.readouterr().err
        problems = [line for line in err.splitlines() if "error:" in line and "lock" not in line]
        assert sorted(codes) == [EXIT_OK, EXIT_LOCKED, EXIT_LOCKED, EXIT_LOCKED], problems
        assert sorted(billed_ids(sim)) == sorted(
            f"x{r}-{i}" for r in range(round_ + 1) for i in range(4)
        )
    assert creates(sim) == 3
