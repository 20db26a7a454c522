"""Steps while their upstream runs: a step's rows are sent as their upstream answers arrive.

The upstream's requests go one batch at a time (one request a batch, one batch of its model
queued at once), so its batches finish one after another; the step uses another model, so
its batches are not held behind the upstream's in the queue. Every check is against the
simulator: its journal's batch times and what it billed.
"""

from __future__ import annotations

import csv
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from buildkit import (
    Project,
    batch_members,
    billed_ids,
    billed_twice,
    creates,
    json_events,
    start_build,
    uploads,
    wait_until,
)
from test_data_answers import SCHEMA_TEMPLATE
from test_data_steps import REPLY, STEP
from test_data_targets import data_project, reviews

import gptbatch
from gptbatch.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_PENDING, LockedError
from gptbatch.state.lock import BuildLock
from gptbatch.state.store import state_dir

IDS = [f"rv{i}" for i in range(6)]
EVERY = sorted([*IDS, *(f"reply:{i}" for i in IDS), "x0", "x1", "x2"])
SLOW_STEP = {**STEP, "request": {**REPLY, "body": {**REPLY["body"], "model": "gpt-4.1-mini"}}}


def pipeline(tmp_path: Path) -> Project:
    """extra.jsonl and `sentiment` (gpt-4o-mini, a batch at a time), `reply` over sentiment."""
    project = data_project(tmp_path, request=SCHEMA_TEMPLATE, extra=[SLOW_STEP])
    doc = yaml.safe_load(project.config.read_text())
    doc["limits"] = {"max_requests_per_batch": 1, "enqueued_requests": {"gpt-4o-mini": 1}}
    project.config.write_text(yaml.safe_dump(doc, sort_keys=False))
    return project


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def batch_times(sim: Any) -> list[tuple[float, float, list[str]]]:
    """(created, completed, custom_ids) of every batch, by the simulator's journal."""
    first: dict[str, dict[str, float]] = {}
    for e in sim.journal.events:
        first.setdefault(e.batch_id, {}).setdefault(e.status, e.at)
    return sorted(
        (
            first[b]["validating"],
            first[b].get("completed", float("inf")),
            [r["custom_id"] for r in m],
        )
        for b, m in batch_members(sim).items()
    )


def assert_overlap(sim: Any) -> None:
    """The step's first batch was created before the upstream's last batch completed."""
    times = batch_times(sim)
    step_first = min(t[0] for t in times if any(i.startswith("reply:") for i in t[2]))
    upstream_last = max(t[1] for t in times if any(i in IDS for i in t[2]))
    assert step_first < upstream_last, times


def assert_built(project: Project, sim: Any) -> None:
    """Every request billed once, and the tables as a build in rounds writes them."""
    assert billed_twice(sim) == []
    assert sorted(billed_ids(sim)) == EVERY
    upstream = rows(project.out / "sentiment.csv")
    table = rows(project.out / "reply.csv")
    assert [r["review_id"] for r in upstream] == IDS
    assert all(r["answer"] and r["sentiment"] for r in upstream)
    assert [r["review_id"] for r in table] == IDS  # in data order, whatever order they came
    assert [r["sentiment"] for r in table] == [r["sentiment"] for r in upstream]
    assert all(r["answer.answer"].startswith("Simulated reply") for r in table)
    assert [o["custom_id"] for o in project.output("reply")] == [f"reply:{i}" for i in IDS]


def test_a_step_starts_while_its_upstream_runs(tmp_path: Path, simulator, capsys) -> None:
    project = pipeline(tmp_path)
    assert project.build() == EXIT_OK
    assert_overlap(simulator)
    assert_built(project, simulator)
    out = capsys.readouterr()
    # One summary for the whole build, counting every pass.
    assert out.out.count("done: ") == 1, out.out
    assert "done: 15 of 15 requests have results" in out.out
    assert "15 batches submitted" in out.out
    assert "this run: 15 results" in out.out
    assert "steps reply: their upstream answers changed: building them" in out.err

    # Nothing changed: nothing sent, nothing billed.
    sent = (creates(simulator), uploads(simulator), len(billed_ids(simulator)))
    assert project.build() == EXIT_OK
    assert (creates(simulator), uploads(simulator), len(billed_ids(simulator))) == sent
    assert "0 batches submitted" in capsys.readouterr().out


def test_the_same_tables_as_a_build_in_rounds(tmp_path: Path, simulator_factory) -> None:
    (tmp_path / "rounds").mkdir()
    (tmp_path / "passes").mkdir()
    rounds = pipeline(tmp_path / "rounds")
    first = simulator_factory()
    # The upstream first, then the step over all its answers (a spend cap keeps the rounds,
    # and stops after the first).
    assert rounds.build("--max-cost", "100") == EXIT_PENDING
    assert not any(i.startswith("reply:") for i in billed_ids(first))
    assert rounds.build() == EXIT_OK
    passes = pipeline(tmp_path / "passes")
    sim = simulator_factory()
    assert passes.build() == EXIT_OK
    assert_overlap(sim)
    for name in ("sentiment.csv", "reply.csv"):
        assert rows(passes.out / name) == rows(rounds.out / name), name


def test_json_events_report_one_summary_for_all_passes(tmp_path: Path, simulator, capsys):
    project = pipeline(tmp_path)
    assert project.build("--json") == EXIT_OK
    events = json_events(capsys.readouterr().out)
    kinds = [e["event"] for e in events]
    assert kinds.count("start") > 1  # a start a pass
    assert kinds.count("summary") == kinds.count("usage") == 1
    assert kinds[-2:] == ["summary", "usage"]
    summary, usage = events[-2], events[-1]
    assert summary["submitted"] == sum(1 for k in kinds if k == "submitted") == 15
    assert summary["pending"] == 0 and summary["ok"] == 15
    assert usage["run"]["requests"] == 15 == usage["total"]["requests"]
    assert_built(project, simulator)


def test_an_edited_upstream_row_rebuilds_its_step_row_alone(tmp_path: Path, simulator) -> None:
    project = pipeline(tmp_path)
    assert project.build() == EXIT_OK
    before = len(billed_ids(simulator))
    (tmp_path / "data" / "reviews.csv").write_text(reviews(edit={3: "Changed my mind: awful"}))
    assert project.build() == EXIT_OK
    assert billed_ids(simulator)[before:] == ["rv3", "reply:rv3"]
    assert rows(project.out / "reply.csv")[3]["text"] == "Changed my mind: awful"


def test_the_python_api_builds_steps_in_passes_too(tmp_path: Path, simulator) -> None:
    project = pipeline(tmp_path)
    seen: list[str] = []
    summary = gptbatch.load(project.config).build(progress=lambda kind, _: seen.append(kind))
    assert summary.exit_code == EXIT_OK
    assert summary.submitted == 15 and summary.usage_run.requests == 15
    assert seen.count("summary") == 1 and seen.count("start") > 1
    assert_overlap(simulator)
    assert_built(project, simulator)


def test_a_rehearsal_builds_in_passes_against_one_simulator(tmp_path: Path, capsys) -> None:
    project = pipeline(tmp_path)
    assert project.build("--simulate") == EXIT_OK
    out = capsys.readouterr().out
    assert "done: 15 of 15 requests have results" in out and "15 batches submitted" in out
    rehearsal = tmp_path / "out-simulated"
    assert [r["review_id"] for r in rows(rehearsal / "reply.csv")] == IDS
    assert project.build("--simulate") == EXIT_OK
    assert "0 batches submitted" in capsys.readouterr().out
    assert not project.out.exists()


# --- kills and interrupts mid-pipeline ------------------------------------------------------


def step_sent(sim: Any) -> bool:
    """Has a batch of the step been created?"""
    return any(
        any(r["custom_id"].startswith("reply:") for r in m) for m in batch_members(sim).values()
    )


def upstream_done(sim: Any) -> bool:
    return all(i in billed_ids(sim) for i in IDS)


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "crash_at", ["after_create:8", "after_submitted_state:10", "after_collect:9"]
)
def test_a_kill_mid_pipeline_then_rerun_bills_nothing_twice(
    tmp_path: Path, simulator, crash_at: str
) -> None:
    project = pipeline(tmp_path)
    run = project.build_process(env={"GPTBATCH_CRASH_AT": crash_at}, timeout=90)
    assert run.returncode == -signal.SIGKILL, run.stderr[-2000:]
    assert step_sent(simulator) and not upstream_done(simulator), "not killed mid-pipeline"
    assert billed_twice(simulator) == []
    assert project.build() == EXIT_OK
    assert_built(project, simulator)


@pytest.mark.timeout(120)
def test_a_sigkill_while_the_step_runs_then_rerun(tmp_path: Path, simulator) -> None:
    project = pipeline(tmp_path)
    proc = start_build(project)
    try:
        assert wait_until(lambda: step_sent(simulator), timeout=60), "the step never started"
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert billed_twice(simulator) == []
    assert project.build() == EXIT_OK
    assert_built(project, simulator)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupt_mid_pipeline_saves_state_and_rerun_finishes(
    tmp_path: Path, simulator, signum: int
) -> None:
    project = pipeline(tmp_path)
    proc = start_build(project)
    try:
        assert wait_until(lambda: step_sent(simulator), timeout=60), "the step never started"
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == EXIT_INTERRUPTED, err
    assert "interrupted" in err and "Traceback" not in err
    assert not upstream_done(simulator), "the build finished before the interrupt"
    assert project.build() == EXIT_OK
    assert_built(project, simulator)


@pytest.mark.timeout(120)
def test_the_lock_is_held_between_passes(tmp_path: Path, simulator) -> None:
    """No other build, clean or gc can slip in between two passes of one build: the lock is
    free only once the build is over (a build needing it again would stop, locked out)."""
    project = pipeline(tmp_path)
    proc = start_build(project)
    probes = 0
    try:
        assert wait_until(lambda: (project.out / ".gptbatch" / "state.db").exists(), 60)
        while proc.poll() is None:
            try:
                with BuildLock(project.out, state_dir(project.out)):
                    proc.wait(timeout=60)  # holding it: a pass yet to come could not run
                break
            except LockedError:
                probes += 1
                time.sleep(0.005)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == EXIT_OK, err
    assert probes > 20
    assert_built(project, simulator)


@pytest.mark.timeout(120)
def test_output_dir_edited_mid_build_bills_nothing_twice(tmp_path: Path, simulator) -> None:
    """batch.yaml is loaded again between passes: an output_dir edited meanwhile writes no
    output there, sends nothing twice, and the build finishes once it is set back."""
    project = pipeline(tmp_path)
    proc = start_build(project)
    try:
        assert wait_until(lambda: step_sent(simulator), timeout=60), "the step never started"
        doc = yaml.safe_load(project.config.read_text())
        project.config.write_text(yaml.safe_dump({**doc, "output_dir": "out2"}, sort_keys=False))
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode in (EXIT_OK, EXIT_PENDING), err
    assert billed_twice(simulator) == []
    assert not (tmp_path / "out2" / "reply.csv").exists()  # no output written there
    if proc.returncode == EXIT_PENDING:
        assert "run `gptbatch build` again to continue" in out
    project.config.write_text(yaml.safe_dump(doc, sort_keys=False))
    assert project.build() == EXIT_OK
    assert_built(project, simulator)
