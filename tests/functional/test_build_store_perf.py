"""The fast paths stay exact: a no-op asks nothing and imports no SDK, caches follow every write."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from buildkit import REPO, Project, chat, make_project, write_jsonl

from gptbatch.errors import EXIT_OK, EXIT_PENDING
from gptbatch.state.lines import pack_line, unpack_line
from gptbatch.state.store import Store, state_dir

# A build in a child process that reports whether it imported the SDK or loaded an encoding
# (the tiktoken module itself comes with `gptbatch plan`'s parser, which loads nothing).
PROBE = (
    "import json, sys; from gptbatch.cli import main; code = main(['build', sys.argv[1]]);"
    " reg = sys.modules.get('tiktoken.registry');"
    " used = ['openai'] * ('openai' in sys.modules) + ['encoding'] * bool(reg and reg.ENCODINGS);"
    " print(json.dumps(used)); sys.exit(code)"
)


def probe_build(project: Project) -> tuple[int, list[str]]:
    run = subprocess.run(
        [sys.executable, "-c", PROBE, str(project.config)],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=REPO,
    )
    return run.returncode, json.loads(run.stdout.strip().splitlines()[-1])


def assert_caches_exact(project: Project) -> None:
    """Every cached answer equals the one computed from scratch."""
    store = Store(state_dir(project.out))
    try:
        assert store.counts() == store._counts()
        for path in store.input_paths():
            assert store.result_counts(path) == store._result_counts(path)
        pending = next(store._pending(store.db, limit=1), None) is not None
        unsent = bool(store.shards(("ready", "uploading", "uploaded", "submitting", "waiting")))
        assert store.has_work_to_submit() == (pending or unsent)
    finally:
        store.close()


def test_a_noop_build_makes_no_api_call_and_imports_no_sdk(tmp_path: Path, simulator) -> None:
    project = make_project(tmp_path, {"requests.jsonl": [chat(f"r{i}") for i in range(6)]})
    assert project.build() == EXIT_OK
    before = len(simulator.journal.calls)
    code, imported = probe_build(project)
    assert code == EXIT_OK
    assert imported == []
    assert len(simulator.journal.calls) == before


def test_a_noop_after_a_kill_with_batches_in_flight_still_polls(
    tmp_path: Path, simulator_factory
) -> None:
    simulator_factory(time_scale=1000.0)
    reqs = [chat(f"r{i}") for i in range(5)]
    project = make_project(tmp_path, {"requests.jsonl": reqs})
    run = project.build_process(env={"GPTBATCH_CRASH_AT": "after_submitted_state"})
    assert run.returncode == -signal.SIGKILL
    assert_caches_exact(project)
    code, imported = probe_build(project)  # nothing to submit, but a batch to collect
    assert code == EXIT_OK
    assert "openai" in imported
    assert [o["custom_id"] for o in project.output()] == [r["custom_id"] for r in reqs]
    assert_caches_exact(project)


def test_compressed_results_read_back_byte_for_byte(tmp_path: Path) -> None:
    store = Store(tmp_path)
    line = json.dumps({"custom_id": "é", "response": {"body": "x\u2028y 🙂 " * 50}})
    with store.transaction():
        store.record_result("k1", state="ok", line=line)
        # a row written before m002 holds its line uncompressed
        store.db.execute(
            "INSERT INTO results(key, state, attempts, line) VALUES ('k0', 'ok', 1, 'plain')"
        )
    raw, zline = store.db.execute("SELECT line, zline FROM results WHERE key='k1'").fetchone()
    # the project's first result line became the dictionary the others are compressed with
    assert store.get_meta("zdict") == line
    assert raw is None and zline == pack_line(line, line.encode()) and len(zline) < 40
    assert store.result("k1").line == line  # type: ignore[union-attr]
    assert store.result("k0").line == "plain"  # type: ignore[union-attr]
    assert [text for _, text in store.ok_lines_after(0)] == [line, "plain"]
    store.close()


def test_a_final_result_is_not_overwritten_by_a_batched_write(tmp_path: Path) -> None:
    from gptbatch.engine.collect import Outcomes

    store = Store(tmp_path)
    with store.transaction():
        store.record_result("a", state="ok", line="first")
        out = Outcomes(store, ["a", "b"], retries=1, batch_id="batch_1")
        assert out.add("a", "retry", None, "lost") == "ok"
        assert out.add("b", "retry", None, "lost") == "retry"
        out.flush()
        out = Outcomes(store, ["b"], retries=1, batch_id="batch_2")
        assert out.add("b", "retry", None, "lost") == "failed"  # past the retry limit
        out.flush()
    assert store.result("a").line == "first"  # type: ignore[union-attr]
    assert store.result("b").attempts == 2  # type: ignore[union-attr]
    store.close()


def test_shard_files_go_once_their_batch_is_final(tmp_path: Path, simulator) -> None:
    project = make_project(tmp_path, {"requests.jsonl": [chat(f"r{i}") for i in range(4)]})
    assert project.build("--no-wait") == EXIT_PENDING
    shards = state_dir(project.out) / "shards"
    # submitted, not final: the file stays (its batch may yet be refused and sent again)
    assert len(list(shards.glob("*.jsonl"))) == 1
    assert project.build() == EXIT_OK
    assert list(shards.glob("*.jsonl")) == []


@pytest.mark.timeout(120)
@pytest.mark.parametrize("point", ["after_collect", "after_outputs", "after_uploaded_state"])
def test_cached_counts_stay_exact_across_kills_and_edits(
    tmp_path: Path, simulator_factory, point: str
) -> None:
    simulator_factory(time_scale=1000.0)
    reqs = [chat(f"r{i}") for i in range(8)]
    project = make_project(tmp_path, {"requests.jsonl": reqs})
    run = project.build_process(env={"GPTBATCH_CRASH_AT": point})
    assert run.returncode == -signal.SIGKILL
    assert_caches_exact(project)
    assert project.build() == EXIT_OK
    assert_caches_exact(project)
    reqs[3] = chat("r3", "an edited request")
    write_jsonl(project.input(), [*reqs, chat("r8")])
    assert project.build("--no-wait") in (EXIT_OK, EXIT_PENDING)
    assert_caches_exact(project)
    assert project.build() == EXIT_OK
    assert_caches_exact(project)
    assert [o["custom_id"] for o in project.output()] == [f"r{i}" for i in range(9)]


def test_results_stored_uncompressed_before_m002_write_the_same_outputs(
    tmp_path: Path, simulator
) -> None:
    project = make_project(tmp_path, {"requests.jsonl": [chat(f"r{i}") for i in range(3)]})
    assert project.build() == EXIT_OK
    expected = (project.out / "requests.jsonl").read_bytes()
    db = sqlite3.connect(state_dir(project.out) / "state.db")
    (zdict,) = db.execute("SELECT value FROM meta WHERE key='zdict'").fetchone()
    with db:  # result lines as m001 stored them: plain text
        for (key,) in list(db.execute("SELECT key FROM results")):
            (zline,) = db.execute("SELECT zline FROM results WHERE key=?", (key,)).fetchone()
            db.execute(
                "UPDATE results SET line=?, zline=NULL WHERE key=?",
                (unpack_line(None, zline, zdict.encode()), key),
            )
        db.execute("DELETE FROM meta WHERE key LIKE 'cache:%' OR key='outputs'")
    db.close()
    (project.out / "requests.jsonl").unlink()
    assert project.build() == EXIT_OK
    assert (project.out / "requests.jsonl").read_bytes() == expected
