"""Never pay twice: kill -9 at every step of a submission, lost replies, lost state, recovery."""

from __future__ import annotations

import shutil
import signal
import sqlite3
from pathlib import Path

import pytest
from buildkit import batch_count, chat, make_project, write_jsonl

from gptbatch.errors import EXIT_OK, EXIT_PENDING
from gptbatch.simulator import Fault
from gptbatch.state.store import state_dir

# Every point in build.py where a kill -9 can land between an API call and the state write.
CRASH_POINTS = (
    "before_upload",
    "after_upload",
    "before_create",
    "after_create",
    "after_download",
    "after_collect",
)


def uploads(sim) -> int:
    return sum(1 for c in sim.journal.calls if c.method == "POST" and c.path == "/v1/files")


def live_batches(sim) -> list[dict]:
    """Batches that did (or will do) work: not refused or failed at validation."""
    return [b for b in sim.service.batches() if b["status"] != "failed"]


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_kill_9_at_each_step_never_bills_twice(tmp_path: Path, simulator, point: str) -> None:
    reqs = [chat(f"r{i}") for i in range(8)]
    project = make_project(tmp_path, {"requests.jsonl": reqs})
    crashed = project.build_process(env={"GPTBATCH_CRASH_AT": point})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    rerun = project.build_process()
    assert rerun.returncode == EXIT_OK, rerun.stderr
    # One batch in all: the rerun adopted or reused whatever the killed run left behind.
    assert len(live_batches(simulator)) == 1
    assert batch_count(simulator) == 1
    counts = simulator.journal.billed_counts()
    assert sorted(counts) == sorted(r["custom_id"] for r in reqs)
    assert max(counts.values()) == 1
    # The uploaded file is found again rather than uploaded a second time.
    assert uploads(simulator) == 1
    assert [o["custom_id"] for o in project.output()] == [r["custom_id"] for r in reqs]


def test_lost_create_reply_adopts_the_batch_instead_of_creating_another(
    tmp_path: Path, simulator
) -> None:
    # The service creates the batch, then the connection drops before the reply: the SDK's own
    # retry would create a second batch. gptbatch must find the first one instead.
    simulator.add_fault(Fault.lost_reply(count=1))
    reqs = [chat(f"r{i}") for i in range(6)]
    project = make_project(tmp_path, {"requests.jsonl": reqs})
    assert project.build() == EXIT_OK
    assert batch_count(simulator) == 1
    assert max(simulator.journal.billed_counts().values()) == 1
    assert len(project.output()) == 6


def test_sdk_default_retries_would_have_duplicated_the_batch(simulator) -> None:
    """The hazard the previous test guards against is real: one create call, two batches."""
    import json

    import openai

    simulator.add_fault(Fault.lost_reply(count=1))
    client = openai.OpenAI(base_url=simulator.base_url, api_key="sk-test")  # default retries
    f = client.files.create(file=("x.jsonl", json.dumps(chat("a")).encode()), purpose="batch")
    client.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert batch_count(simulator) == 2


def test_lost_state_dir_recovers_in_flight_batches(tmp_path: Path, simulator_factory) -> None:
    # A slow simulator, so the batch is still running when the state is lost.
    sim = simulator_factory(tokens_per_second=20.0, total_tokens_per_second=20.0)
    reqs = [chat(f"r{i}") for i in range(6)]
    project = make_project(tmp_path, {"requests.jsonl": reqs})
    assert project.build("--no-wait") == EXIT_PENDING
    assert batch_count(sim) == 1
    shutil.rmtree(project.out / ".gptbatch")
    sim.clock.time_scale = 10_000.0
    assert project.build() == EXIT_OK
    assert batch_count(sim) == 1
    assert max(sim.journal.billed_counts().values()) == 1
    assert [o["custom_id"] for o in project.output()] == [r["custom_id"] for r in reqs]


def test_lost_state_dir_recovers_finished_results_without_resubmitting(
    tmp_path: Path, simulator
) -> None:
    reqs = [chat(f"r{i}") for i in range(6)]
    project = make_project(tmp_path, {"requests.jsonl": reqs})
    assert project.build() == EXIT_OK
    first = project.output()
    shutil.rmtree(project.out / ".gptbatch")
    (project.out / "requests.jsonl").unlink()
    assert project.build() == EXIT_OK
    assert batch_count(simulator) == 1
    assert project.output() == first


def test_other_projects_batches_are_left_alone(tmp_path: Path, simulator) -> None:
    a = make_project(tmp_path / "a", {"requests.jsonl": [chat("same")]})
    b = make_project(tmp_path / "b", {"requests.jsonl": [chat("same")]})
    assert a.build() == EXIT_OK
    shutil.rmtree(b.out, ignore_errors=True)
    assert b.build() == EXIT_OK
    # b is another project (another metadata id): it builds its own request.
    assert batch_count(simulator) == 2


def test_a_duplicate_found_after_its_shard_finished_is_collected_from_its_input_file(
    tmp_path: Path, simulator, capsys
) -> None:
    """A finished shard forgets its members; a duplicate of its batch found later (a lost
    create reply the SDK retried) still maps its lines to requests, through its input file,
    and nothing is submitted again."""
    import json

    import openai

    reqs = [chat(f"r{i}") for i in range(4)]
    project = make_project(tmp_path, {"requests.jsonl": reqs})
    assert project.build() == EXIT_OK
    db = sqlite3.connect(state_dir(project.out) / "state.db")
    assert db.execute("SELECT count(*) FROM members").fetchone()[0] == 0
    db.close()
    (first,) = simulator.service.batches()
    client = openai.OpenAI(base_url=simulator.base_url, api_key="sk-test", max_retries=0)
    twin = client.batches.create(
        input_file_id=first["input_file_id"],
        endpoint=first["endpoint"],
        completion_window="24h",
        metadata=first["metadata"],
    )
    reqs.append(chat("r4"))  # the next build with work to submit lists the API first
    write_jsonl(project.input(), reqs)
    capsys.readouterr()
    assert project.build("--json") == EXIT_OK
    events = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    collected = [e for e in events if e["event"] == "collected" and e["batch"] == twin.id]
    assert collected and collected[0]["ok"] == 4  # each line matched a request
    assert batch_count(simulator) == 3  # the first, the twin and one for r4
    assert simulator.journal.billed_counts()["r4"] == 1
    assert [o["custom_id"] for o in project.output()] == [r["custom_id"] for r in reqs]
