"""Regression tests for what billed twice, destroyed data or broke a newcomer (issue 10)."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from buildkit import (
    REPO,
    billed_twice,
    chat,
    creates,
    make_project,
    padded_chat,
    start_build,
    wait_until,
    write_jsonl,
)

from gptbatch.cli import main
from gptbatch.cli.legacy import manager_main
from gptbatch.errors import EXIT_BAD_INPUT, EXIT_ERROR, EXIT_LOCKED, EXIT_OK, StateError

MODEL = "gpt-4o-mini"


def tree(root: Path) -> dict[str, str]:
    """Every file under root (relative name -> sha256 of its bytes)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def billed_once_each(sim, ids: list[str]) -> None:
    counts = sim.journal.billed_counts()
    assert billed_twice(sim) == []
    assert sorted(counts) == sorted(ids)


# --- 1, 2: one build per output directory ---------------------------------------------------


def slow_project(tmp_path: Path, n: int = 12, poll: float = 0.02):
    """Requests that need several batches one after another (a budget of ~2 requests)."""
    reqs = [padded_chat(f"r{i}", 90) for i in range(n)]
    return reqs, make_project(
        tmp_path,
        {"requests.jsonl": reqs},
        limits={"enqueued_tokens": 260, "safety_margin": 0, "pipeline": 1},
        polling={"initial_seconds": poll, "max_seconds": max(poll, 0.2)},
    )


@pytest.mark.timeout(120)
def test_deleting_the_state_dir_mid_build_keeps_the_lock_and_bills_once(
    tmp_path: Path, simulator_factory
) -> None:
    sim = simulator_factory(time_scale=40.0)
    reqs, project = slow_project(tmp_path, poll=4.0)  # the first build sleeps between looks
    first = start_build(project)
    try:
        assert wait_until(lambda: creates(sim) >= 1, timeout=30)
        # Frozen, the first build still holds its locks but cannot notice the deletion and
        # exit before the second one starts (which would rightly free the lock).
        os.kill(first.pid, signal.SIGSTOP)
        shutil.rmtree(project.out / ".gptbatch")
        second = project.build_process()
        os.kill(first.pid, signal.SIGCONT)
        assert second.returncode == EXIT_LOCKED, second.stderr
        assert "holds the lock" in second.stderr and "pid" in second.stderr
        _, err = first.communicate(timeout=60)
    finally:
        first.kill()
    # The first build notices its state is gone and stops, saying what to do.
    assert first.returncode == EXIT_ERROR, err
    assert "deleted or replaced while this build ran" in err
    final = project.build_process(timeout=90)
    assert final.returncode == EXIT_OK, final.stderr
    billed_once_each(sim, [r["custom_id"] for r in reqs])
    assert [o["custom_id"] for o in project.output()] == [r["custom_id"] for r in reqs]


@pytest.mark.timeout(120)
def test_two_state_dirs_on_one_output_dir_never_run_together(
    tmp_path: Path, simulator_factory
) -> None:
    sim = simulator_factory(time_scale=40.0)
    reqs, project = slow_project(tmp_path, poll=1.0)
    first = subprocess.Popen(
        [sys.executable, "-m", "gptbatch", "build", str(project.config)],
        env={**os.environ, "GPTBATCH_STATE_DIR": str(tmp_path / "stA")},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert wait_until(lambda: creates(sim) >= 1, timeout=30)
        os.kill(first.pid, signal.SIGSTOP)  # alive and locked, however slow the machine
        second = project.build_process(env={"GPTBATCH_STATE_DIR": str(tmp_path / "stB")})
        os.kill(first.pid, signal.SIGCONT)
        assert second.returncode == EXIT_LOCKED, second.stderr
        assert "holds the lock" in second.stderr
        first.communicate(timeout=90)
    finally:
        first.kill()
    assert first.returncode == EXIT_OK
    billed_once_each(sim, [r["custom_id"] for r in reqs])


# --- 3: a lost state with a renamed config or a moved checkout --------------------------------


def default_id_project(tmp_path: Path, reqs: list[dict]):
    """A project with no `project:` key, so its id is the default one."""
    project = make_project(tmp_path, {"requests.jsonl": reqs})
    doc = yaml.safe_load(project.config.read_text())
    del doc["project"]
    project.config.write_text(yaml.safe_dump(doc, sort_keys=False))
    return project


@pytest.mark.parametrize("move", ["rename config", "move checkout"])
def test_lost_state_and_a_renamed_or_moved_project_adopts_instead_of_billing_twice(
    tmp_path: Path, simulator, move: str
) -> None:
    reqs = [chat(f"r{i}") for i in range(10)]
    project = default_id_project(tmp_path / "repo", reqs)
    killed = project.build_process(env={"GPTBATCH_CRASH_AT": "after_create"})
    assert killed.returncode == -signal.SIGKILL
    shutil.rmtree(project.out / ".gptbatch")
    if move == "rename config":
        config = project.config.with_name("ci.yaml")
        project.config.rename(config)
    else:
        shutil.move(tmp_path / "repo", tmp_path / "moved")
        config = tmp_path / "moved" / "batch.yaml"
    rerun = subprocess.run(
        [sys.executable, "-m", "gptbatch", "build", str(config)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert rerun.returncode == EXIT_OK, rerun.stderr
    assert "adopted existing batch" in rerun.stderr
    assert creates(simulator) == 1
    billed_once_each(simulator, [r["custom_id"] for r in reqs])


def test_a_foreign_batch_under_a_colliding_default_id_is_not_adopted(
    tmp_path: Path, simulator
) -> None:
    """Two unrelated projects laid out alike share a default id: neither takes the other's work.

    Since issue 15 (item 1) every batch under the project id is adopted, whether or not its
    requests are current, so b does download a's files now (at no cost); what keeps the
    promise is that results are stored by content key: a's answers never stand for b's
    requests, and b's build sends its own.
    """
    a = default_id_project(tmp_path / "a", [chat("a1"), chat("a2")])
    b = default_id_project(tmp_path / "b", [chat("b1")])
    assert main(["build", str(a.config)]) == EXIT_OK
    a_output = a.output()
    assert main(["build", str(b.config)]) == EXIT_OK
    assert creates(simulator) == 2
    assert [o["custom_id"] for o in b.output()] == ["b1"]
    assert max(simulator.journal.billed_counts().values()) == 1
    assert main(["build", str(a.config)]) == EXIT_OK
    assert a.output() == a_output
    assert creates(simulator) == 2


# --- 4: outputs never overwrite inputs ---------------------------------------------------------


def test_output_dir_holding_the_inputs_is_refused_before_anything_is_written(
    tmp_path: Path, simulator, capsys
) -> None:
    write_jsonl(tmp_path / "in" / "a.jsonl", [chat("a")])
    config = tmp_path / "batch.yaml"
    config.write_text("inputs: [in/a.jsonl]\noutput_dir: in\nproject: p\n")
    before = tree(tmp_path)
    assert main(["build", str(config)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "batch.yaml:1: inputs[0]: 'in/a.jsonl'" in err
    assert "holds results and build state, not inputs" in err
    assert tree(tmp_path) == before
    assert simulator.journal.calls == []


def test_inputs_x_and_x_errors_would_collide_and_are_refused(
    tmp_path: Path, simulator, capsys
) -> None:
    project = make_project(tmp_path, {"x.jsonl": [chat("a")], "x.errors.jsonl": [chat("b")]})
    assert project.build() == EXIT_BAD_INPUT
    assert "would both write" in capsys.readouterr().err
    assert not project.out.exists()
    assert simulator.journal.calls == []


def test_manager_refuses_to_publish_over_an_input(
    tmp_path: Path, simulator, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "x.jsonl", [chat("a")])
    write_jsonl(tmp_path / "x.output.jsonl", [chat("b")])  # requests, not results
    before = tree(tmp_path)
    assert manager_main(["x.jsonl", "x.output.jsonl"]) == EXIT_BAD_INPUT
    assert "it is an input" in capsys.readouterr().err
    assert tree(tmp_path) == before
    assert simulator.journal.calls == []


# --- 5: a batch id already finished never stands for a new shard -------------------------------


def test_a_reused_batch_id_is_refused_not_mistaken_for_a_finished_batch(
    tmp_path: Path, simulator
) -> None:
    from gptbatch.api.remote import BatchInfo, Remote
    from gptbatch.config.spec import load_spec
    from gptbatch.engine.build import Builder
    from gptbatch.report import NullReporter
    from gptbatch.state.store import Store, state_dir

    project = make_project(tmp_path, {"requests.jsonl": [chat("a"), chat("b")]})
    assert project.build() == EXIT_OK
    spec = load_spec(project.config)
    store = Store(state_dir(spec.output_dir))
    remote = Remote(api_key="sk-test", base_url=simulator.base_url)
    try:
        old = store.batches()[0]
        with store.transaction():
            store.add_shard(
                "new-shard",
                model=MODEL,
                url="/v1/chat/completions",
                members=[],
                tokens=0,
                nbytes=0,
                cost=0.0,
                state="submitting",
            )
        builder = Builder(spec, store, remote, NullReporter())
        reused = BatchInfo(old.id, "validating", "/v1/chat/completions", "file-x", None, None, 0)
        with pytest.raises(StateError, match="reuses ids"):
            builder.record_submitted("new-shard", reused)
        assert store.shard("new-shard").state == "submitting"  # nothing recorded
        assert store.batch(old.id).collected
    finally:
        remote.close()
        store.close()


# --- 8: the drop-in manager over a glob that matches its own outputs ---------------------------


def test_manager_rerun_over_a_glob_skips_result_files_and_submits_nothing(
    tmp_path: Path, simulator, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    for n in range(2):
        write_jsonl(tmp_path / f"shard-00{n}.jsonl", [chat(f"s{n}-{i}") for i in range(20)])
    assert manager_main(sorted(str(p.name) for p in tmp_path.glob("shard-*.jsonl"))) == EXIT_OK
    made = creates(simulator)
    capsys.readouterr()
    files = sorted(p.name for p in tmp_path.glob("shard-*.jsonl"))  # now with *.output.jsonl
    assert len(files) == 4
    assert manager_main(files) == EXIT_OK
    out, err = capsys.readouterr()
    assert out.count("skipping shard-") == 2 and "holds Batch API results" in out
    assert "not valid" not in err and err.count("\n") < 10
    assert creates(simulator) == made


# --- 9: a rejected build writes nothing --------------------------------------------------------


def test_bad_input_on_a_first_build_creates_no_state_or_output(
    tmp_path: Path, simulator, capsys
) -> None:
    project = make_project(tmp_path, {"requests.jsonl": [chat("a")]})
    with open(project.input(), "a") as f:
        f.write("{not json\n")
    before = tree(tmp_path)
    assert project.build() == EXIT_BAD_INPUT
    assert "requests.jsonl:2: not valid JSON" in capsys.readouterr().err
    assert not project.out.exists()
    assert tree(tmp_path) == before
    assert simulator.journal.calls == []


def test_a_bad_edit_leaves_state_and_outputs_byte_for_byte(tmp_path: Path, simulator) -> None:
    project = make_project(tmp_path, {"requests.jsonl": [chat("a"), chat("b")]})
    assert project.build() == EXIT_OK
    before = tree(project.out)
    calls = len(simulator.journal.calls)
    with open(project.input(), "a") as f:
        f.write('{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions"}\n')
    assert project.build() == EXIT_BAD_INPUT
    assert tree(project.out) == before
    assert len(simulator.journal.calls) == calls


# --- 12: local file errors are local, not the API's --------------------------------------------


def limited_build(project, limit_bytes: int) -> subprocess.CompletedProcess[str]:
    """A build in a process that may write no file larger than limit_bytes (ulimit -f)."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.run(
        [sys.executable, "-m", "gptbatch", "build", str(project.config)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        preexec_fn=limit,
    )


def big_embeddings(n: int) -> list[dict]:
    return [
        {
            "custom_id": f"e{i}",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": "text-embedding-3-large", "input": f"text {i}"},
        }
        for i in range(n)
    ]


@pytest.mark.timeout(90)
def test_a_file_size_limit_during_download_is_a_local_error_not_an_api_retry(
    tmp_path: Path, simulator
) -> None:
    reqs = big_embeddings(60)  # ~40 KB of result each: a ~2.4 MB output file
    project = make_project(tmp_path, {"requests.jsonl": reqs})
    result = limited_build(project, 1_000_000)
    assert result.returncode == EXIT_ERROR, result.stderr
    assert "File too large" in result.stderr
    assert "connection to the API failed" not in result.stderr
    assert "Traceback" not in result.stderr
    # Nothing lost: with room again, the same batch is collected, not submitted again.
    rerun = project.build_process()
    assert rerun.returncode == EXIT_OK, rerun.stderr
    assert creates(simulator) == 1
    billed_once_each(simulator, [r["custom_id"] for r in reqs])


@pytest.fixture
def tiny_mount(tmp_path: Path):
    """Mount a 300 KB tmpfs (needs root, as on this project's machines and CI)."""
    mounted: list[Path] = []

    def mount(path: Path, *options: str) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        opts = ",".join(("size=300k", *options))
        subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], check=True)
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], check=False)


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


@needs_root
@pytest.mark.timeout(90)
def test_a_full_disk_gives_a_clear_error_and_loses_nothing(
    tmp_path: Path, simulator, tiny_mount
) -> None:
    reqs = big_embeddings(20)  # ~800 KB of results: more than the 300 KB disk holds
    project = make_project(tmp_path, {"requests.jsonl": reqs})
    tiny_mount(project.out)
    result = project.build_process()
    assert result.returncode == EXIT_ERROR, result.stderr
    assert "No space left on device" in result.stderr or "no room" in result.stderr
    assert "Traceback" not in result.stderr
    assert "connection to the API failed" not in result.stderr
    # Move to a roomy disk (keeping the state) and build again: collected, not billed twice.
    roomy = tmp_path / "roomy"
    shutil.copytree(project.out, roomy)
    subprocess.run(["umount", "-l", str(project.out)], check=True)
    shutil.rmtree(project.out, ignore_errors=True)
    shutil.copytree(roomy, project.out)
    rerun = project.build_process()
    assert rerun.returncode == EXIT_OK, rerun.stderr
    assert creates(simulator) == 1
    billed_once_each(simulator, [r["custom_id"] for r in reqs])


@needs_root
def test_a_read_only_output_dir_gives_a_clear_error(tmp_path: Path, simulator, tiny_mount) -> None:
    project = make_project(tmp_path, {"requests.jsonl": [chat("a")]})
    tiny_mount(project.out, "ro")
    result = project.build_process()
    assert result.returncode == EXIT_ERROR, result.stderr
    assert "Read-only file system" in result.stderr
    assert "Traceback" not in result.stderr
    assert simulator.journal.calls == []


# --- 13: a waiting build outlasts failed listings ----------------------------------------------


@pytest.mark.timeout(90)
def test_a_waiting_build_keeps_going_when_listing_batches_fails(tmp_path: Path, simulator) -> None:
    from gptbatch.simulator import Fault

    # Each list call is tried 3 times by the SDK: 9 failures make 3 listings fail in a row.
    simulator.add_fault(Fault.http(500, method="GET", path="/v1/batches", count=9))
    reqs = [chat(f"r{i}") for i in range(5)]
    project = make_project(tmp_path, {"requests.jsonl": reqs})
    assert project.build() == EXIT_OK
    billed_once_each(simulator, [r["custom_id"] for r in reqs])


# --- 14: an input edited while the build runs ---------------------------------------------------


@pytest.mark.timeout(120)
def test_an_input_edited_during_the_build_stops_it_cleanly(
    tmp_path: Path, simulator_factory
) -> None:
    sim = simulator_factory(time_scale=40.0)
    reqs, project = slow_project(tmp_path)
    build = start_build(project)
    try:
        assert wait_until(lambda: creates(sim) >= 1, timeout=30)
        rows = [padded_chat(f"r{i}", 90) for i in range(12)]
        rows[-1] = padded_chat("r11", 91)  # the last request changes, file rewritten
        project.input().write_text("".join(json.dumps(r) + "\n" for r in rows))
        _, err = build.communicate(timeout=90)
    finally:
        build.kill()
    assert build.returncode == EXIT_ERROR, err
    assert "changed while gptbatch ran" in err
    assert "Traceback" not in err
    final = project.build_process(timeout=90)
    assert final.returncode == EXIT_OK, final.stderr
    billed_once_each(sim, [r["custom_id"] for r in reqs])


# --- 15: a damaged state is named, never a traceback ---------------------------------------------


@pytest.mark.parametrize("damage", ["random bytes", "dropped table"])
def test_a_damaged_state_gets_a_clear_error_naming_the_file(
    tmp_path: Path, simulator, capsys, damage: str
) -> None:
    project = make_project(tmp_path, {"requests.jsonl": [chat(f"r{i}") for i in range(30)]})
    assert project.build() == EXIT_OK
    db = project.out / ".gptbatch" / "state.db"
    if damage == "random bytes":
        data = bytearray(db.read_bytes())
        data[4096:] = os.urandom(len(data) - 4096)
        db.write_bytes(bytes(data))
    else:
        con = sqlite3.connect(db)
        con.execute("DROP TABLE results")
        con.commit()
        con.close()
    capsys.readouterr()
    with open(project.input(), "a") as f:  # make the build touch every table
        f.write(
            '{"custom_id": "new", "method": "POST", "url": "/v1/chat/completions", '
            '"body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}}\n'
        )
    code = project.build()
    err = capsys.readouterr().err
    assert code == EXIT_ERROR, err
    assert "state.db" in err and "move it aside" in err
    result = project.build_process()
    assert "Traceback" not in result.stderr and result.returncode == EXIT_ERROR


# --- 18: temp files that killed runs left are cleaned up -------------------------------------


def test_temp_files_left_by_killed_runs_are_removed(tmp_path: Path, simulator) -> None:
    project = make_project(tmp_path, {"requests.jsonl": [chat("a")]})
    assert project.build() == EXIT_OK
    leftovers = [
        project.out / ".requests.jsonl.abc123.tmp",
        project.out / ".gptbatch" / "downloads" / ".file-x.jsonl.def456.tmp",
    ]
    for path in leftovers:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 1000)
    assert project.build() == EXIT_OK
    assert not any(p.exists() for p in leftovers)
    assert (project.out / "requests.jsonl").exists()


def test_bad_input_while_batches_are_in_flight_says_they_keep_running(
    tmp_path: Path, simulator_factory, capsys
) -> None:
    simulator_factory(time_scale=1.0)  # nothing finishes during this test
    _, project = slow_project(tmp_path)
    assert project.build("--no-wait") == 3
    project.input().write_text(project.input().read_text()[:-40])  # truncated mid-line
    capsys.readouterr()
    assert project.build() == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "requests.jsonl:12: not valid JSON" in err
    assert "this run submitted nothing; 1 batch(es) submitted earlier keep running" in err
