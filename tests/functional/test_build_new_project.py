"""A new project beside other projects' batches, on providers whose batches carry no metadata.

A state with nothing in it cannot tell a new project from a lost one: by default it waits for
every unknown batch in progress (money-safe), and says which, until when, and the way out.
`build --new-project` takes what is at the API for other projects' (refused once the state
holds work); on Gemini a job's display name names its project, so a fresh project need not
wait on another project's jobs at all. Each request is billed once in every case.
"""

from __future__ import annotations

import shutil
import signal
from pathlib import Path
from typing import Any

from buildkit import Project, billed_twice, write_jsonl
from google import genai
from test_build_anthropic import claude, claude_project
from test_build_anthropic import key_of as claude_key
from test_build_gemini import gem, gemini_project
from test_build_gemini import key_of as gem_key

from gptbatch.errors import EXIT_BAD_INPUT, EXIT_OK, EXIT_PENDING
from gptbatch.simulator import Fault
from gptbatch.state.store import Store, state_dir

FOREVER = 10_000_000.0  # simulated seconds: nothing ends by itself while a test runs
SOON = 50.0  # ~0.5 s of real time


def billed(sim: Any) -> list[str]:
    return [b.custom_id for b in sim.journal.billed]


def state_batches(project: Project) -> set[str]:
    store = Store(state_dir(project.out))
    try:
        return {b.id for b in store.batches()}
    finally:
        store.close()


def test_a_new_anthropic_project_waits_by_default_and_builds_with_the_flag(
    tmp_path: Path, simulator, capsys
) -> None:
    sim = simulator.service.anthropic
    sim.processing_seconds = FOREVER
    theirs = [claude(f"o{i}") for i in range(3)]
    other = claude_project(tmp_path / "other", theirs)
    assert other.build("--no-wait") == EXIT_PENDING
    (foreign,) = sim.ids()
    rows = [claude(f"q{i}") for i in range(4)]
    mine = claude_project(tmp_path / "mine", rows)
    capsys.readouterr()
    assert mine.build("--no-wait") == EXIT_PENDING  # the safe default: it may be ours
    err = capsys.readouterr().err
    assert foreign in err and "24 h" in err and "--new-project" in err, err
    assert sim.ids() == [foreign] and billed(simulator) == []
    sim.processing_seconds = SOON
    assert mine.build("--new-project", "--no-wait") in (EXIT_OK, EXIT_PENDING)
    assert len(sim.ids()) == 2  # sent while the other batch still runs
    assert mine.build() == EXIT_OK
    assert sorted(billed(simulator)) == sorted(claude_key(r) for r in rows)  # once each
    assert foreign not in state_batches(mine) and len(sim.ids()) == 2
    assert [o["custom_id"] for o in mine.output()] == [r["custom_id"] for r in rows]
    # Once the state holds work, the flag is refused: its batches must be found, not ignored.
    capsys.readouterr()
    assert mine.build("--new-project") == EXIT_BAD_INPUT
    assert "already holds" in capsys.readouterr().err
    sim.finish_now(foreign)
    assert other.build() == EXIT_OK
    assert billed_twice(simulator) == []
    assert len(billed(simulator)) == len(rows) + len(theirs)


def test_new_project_adopts_no_ended_foreign_batch(tmp_path: Path, simulator, capsys) -> None:
    other = claude_project(tmp_path / "other", [claude(f"o{i}") for i in range(3)])
    assert other.build() == EXIT_OK
    (foreign,) = simulator.service.anthropic.ids()
    rows = [claude(f"q{i}") for i in range(2)]
    mine = claude_project(tmp_path / "mine", rows)
    assert mine.build("--new-project") == EXIT_OK
    assert foreign not in state_batches(mine) and len(state_batches(mine)) == 1
    assert "adopted existing batch" not in capsys.readouterr().err
    assert billed_twice(simulator) == []


def test_new_project_on_an_openai_target_is_refused(tmp_path: Path, simulator, capsys) -> None:
    from buildkit import chat, make_project

    project = make_project(tmp_path, {"requests.jsonl": [chat("a")]})
    assert project.build("--new-project") == EXIT_BAD_INPUT
    assert "drop the flag" in capsys.readouterr().err
    assert billed(simulator) == [] and not (project.out / ".gptbatch").exists()


def test_new_project_with_a_create_in_doubt_still_finds_its_own_batch(
    tmp_path: Path, simulator
) -> None:
    """The create's reply is lost: the build looks for its batch among those it does not
    know, and must find its own there (created after the foreign ones were recorded)."""
    sim = simulator.service.anthropic
    sim.processing_seconds = FOREVER
    other = claude_project(tmp_path / "other", [claude(f"o{i}") for i in range(3)])
    assert other.build("--no-wait") == EXIT_PENDING
    sim.processing_seconds = SOON
    simulator.add_fault(Fault.lost_reply(method="POST", path="/v1/messages/batches", count=1))
    rows = [claude(f"q{i}") for i in range(4)]
    mine = claude_project(tmp_path / "mine", rows)
    assert mine.build("--new-project") == EXIT_OK
    assert sorted(billed(simulator)) == sorted(claude_key(r) for r in rows)
    assert len(sim.ids()) == 2  # one create for mine, none again


def test_a_kill_after_create_under_new_project_reruns_without_waiting(
    tmp_path: Path, simulator
) -> None:
    """The batches taken for others' are kept in the state: the plain rerun that finds the
    create in doubt finds its own batch, sends nothing again, and does not adopt the other
    project's batch that ended meanwhile."""
    sim = simulator.service.anthropic
    sim.processing_seconds = FOREVER
    theirs = [claude(f"o{i}") for i in range(3)]
    other = claude_project(tmp_path / "other", theirs)
    assert other.build("--no-wait") == EXIT_PENDING
    (foreign,) = sim.ids()
    sim.processing_seconds = SOON
    rows = [claude(f"q{i}") for i in range(4)]
    mine = claude_project(tmp_path / "mine", rows)
    run = mine.build_process("--new-project", env={"GPTBATCH_CRASH_AT": "after_create:1"})
    assert run.returncode == -signal.SIGKILL, run.stderr[-2000:]
    sim.finish_now(foreign)
    rerun = mine.build_process(timeout=90)
    assert rerun.returncode == EXIT_OK, rerun.stderr[-2000:]
    assert sorted(billed(simulator)) == sorted(claude_key(r) for r in rows + theirs)
    assert billed_twice(simulator) == [] and len(sim.ids()) == 2
    assert foreign not in state_batches(mine) and foreign not in rerun.stderr


def test_a_fresh_gemini_project_does_not_wait_on_another_projects_job(
    tmp_path: Path, simulator
) -> None:
    sim = simulator.service.gemini
    sim.processing_seconds = FOREVER
    other = gemini_project(tmp_path / "other", [gem(f"o{i}") for i in range(3)])
    assert other.build("--no-wait") == EXIT_PENDING
    (foreign,) = sim.names()
    sim.processing_seconds = SOON
    rows = [gem(f"q{i}") for i in range(4)]
    mine = gemini_project(tmp_path / "mine", rows)
    # No flag: the job's display name names another project.
    assert mine.build("--no-wait") in (EXIT_OK, EXIT_PENDING)
    assert len(sim.names()) == 2  # sent while the other project's job still runs
    assert mine.build() == EXIT_OK
    assert sorted(billed(simulator)) == sorted(gem_key(r) for r in rows)
    assert foreign not in state_batches(mine)
    sim.finish_now(foreign)
    assert other.build() == EXIT_OK
    assert billed_twice(simulator) == [] and len(billed(simulator)) == 7


def test_a_gemini_job_without_a_gptbatch_name_is_still_waited_for(
    tmp_path: Path, simulator, capsys
) -> None:
    sim = simulator.service.gemini
    sim.processing_seconds = FOREVER
    path = tmp_path / "theirs.jsonl"
    write_jsonl(path, [{"key": "k1", "request": gem("x")["request"]}])
    client = genai.Client(api_key="k")
    upload = client.files.upload(
        file=str(path), config={"display_name": "theirs", "mime_type": "application/jsonl"}
    )
    job = client.batches.create(
        model="gemini-2.5-flash", src=str(upload.name), config={"display_name": "someone else"}
    )
    mine = gemini_project(tmp_path / "mine", [gem("q0")])
    capsys.readouterr()
    assert mine.build("--no-wait") == EXIT_PENDING
    err = capsys.readouterr().err
    assert str(job.name) in err and "48 h" in err and "--new-project" in err, err
    assert billed(simulator) == [] and sim.names() == [job.name]


def test_a_lost_gemini_state_renamed_still_waits_for_its_own_job(tmp_path: Path, simulator) -> None:
    """Its job names the old project id, but its sampled keys are current requests here."""
    sim = simulator.service.gemini
    sim.processing_seconds = FOREVER
    rows = [gem(f"q{i}") for i in range(4)]
    mine = gemini_project(tmp_path, rows)
    assert mine.build("--no-wait") == EXIT_PENDING
    (job,) = sim.names()
    assert len(sim.requests_of(job)) == 4
    shutil.rmtree(mine.out / ".gptbatch")
    mine.config.write_text(mine.config.read_text().replace(f"test-{tmp_path.name}", "renamed"))
    assert mine.build("--no-wait") == EXIT_PENDING  # waited for, not sent again
    assert sim.names() == [job]
    sim.finish_now(job)
    assert mine.build() == EXIT_OK
    assert sorted(billed(simulator)) == sorted(gem_key(r) for r in rows)  # once each
    assert sim.names() == [job]


def test_cancel_after_a_lost_gemini_state_stops_only_this_projects_jobs(
    tmp_path: Path, simulator
) -> None:
    """A job's display name names its project: `cancel` without a state stops this
    project's running job (found by its name) and leaves another project's alone."""
    from gptbatch.cli import main

    sim = simulator.service.gemini
    sim.processing_seconds = FOREVER
    other = gemini_project(tmp_path / "other", [gem("o0")])
    assert other.build("--no-wait") == EXIT_PENDING
    mine = gemini_project(tmp_path / "mine", [gem("q0"), gem("q1")])
    assert mine.build("--no-wait") == EXIT_PENDING
    theirs, ours = sim.names()
    shutil.rmtree(mine.out / ".gptbatch")
    assert main(["cancel", str(mine.config)]) == EXIT_OK
    assert sim.get(ours)["metadata"]["state"] == "BATCH_STATE_CANCELLED"
    assert sim.get(theirs)["metadata"]["state"] != "BATCH_STATE_CANCELLED"
    assert billed(simulator) == []
