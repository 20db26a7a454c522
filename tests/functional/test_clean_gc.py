"""`gptbatch clean` and `gptbatch gc` against the simulator: what they remove, and what stays."""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path

import pytest
from buildkit import (
    billed_ids,
    chat,
    creates,
    embedding,
    make_project,
    update_config,
    write_jsonl,
)

from gptbatch.cli import main
from gptbatch.errors import EXIT_BAD_INPUT, EXIT_ERROR, EXIT_LOCKED, EXIT_OK, EXIT_PENDING
from gptbatch.state.lock import BuildLock
from gptbatch.state.store import state_dir


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _uploads(sim) -> set[str]:
    return {f["filename"] for f in sim.service.files() if f["purpose"] == "batch"}


def test_clean_refuses_without_terminal_or_yes(tmp_path: Path, simulator, capsys) -> None:
    project = make_project(tmp_path, {"requests.jsonl": [chat("r0")]})
    assert project.build() == EXIT_OK
    assert main(["clean", str(project.config)]) == EXIT_BAD_INPUT
    assert "--yes" in capsys.readouterr().err
    assert (project.out / "requests.jsonl").exists()
    assert (state_dir(project.out) / "state.db").exists()


def test_clean_removes_only_what_gptbatch_wrote(tmp_path: Path, simulator, capsys) -> None:
    reqs = [chat(f"r{i}") for i in range(5)]
    project = make_project(tmp_path, {"requests.jsonl": reqs})
    assert project.build() == EXIT_OK
    (project.out / "notes.txt").write_text("mine")
    assert main(["clean", str(project.config), "--yes"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "keep   " in out and "notes.txt" in out
    # state.db only: the shard file went once its batch was final
    assert ".gptbatch/ (build state: 1 files)" in out
    assert sorted(p.name for p in project.out.rglob("*")) == ["notes.txt"]
    assert project.input().exists() and project.config.exists()
    # the batch is still at the API: the next build adopts it and pays nothing more
    assert project.build() == EXIT_OK
    assert creates(simulator) == 1
    assert sorted(billed_ids(simulator)) == sorted(r["custom_id"] for r in reqs)
    (project.out / "notes.txt").unlink()
    assert main(["clean", str(project.config), "--yes"]) == EXIT_OK
    assert not project.out.exists()  # empty, so removed
    capsys.readouterr()
    assert main(["clean", str(project.config)]) == EXIT_OK  # nothing to ask about
    assert "nothing to clean" in capsys.readouterr().out


def test_clean_asks_on_a_terminal(
    tmp_path: Path, simulator, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    project = make_project(tmp_path, {"requests.jsonl": [chat("r0")]})
    assert project.build() == EXIT_OK
    monkeypatch.setattr("sys.stdin", _Terminal("n\n"))
    assert main(["clean", str(project.config)]) == EXIT_ERROR
    assert (project.out / "requests.jsonl").exists()
    monkeypatch.setattr("sys.stdin", _Terminal("y\n"))
    assert main(["clean", str(project.config)]) == EXIT_OK
    assert "remove these? [y/N]" in capsys.readouterr().out
    assert not (project.out / "requests.jsonl").exists()


def test_clean_remote_deletes_this_projects_uploads_only(tmp_path: Path, simulator, capsys) -> None:
    project = make_project(tmp_path / "a", {"requests.jsonl": [chat("r0"), chat("r1")]})
    other = make_project(tmp_path / "b", {"requests.jsonl": [chat("o0")]})
    assert project.build() == EXIT_OK and other.build() == EXIT_OK
    before = _uploads(simulator)
    assert len(before) == 2
    assert main(["clean", str(project.config), "--remote", "--yes"]) == EXIT_OK
    assert "1 uploaded files at the API" in capsys.readouterr().out
    left = _uploads(simulator)
    assert len(left) == 1 and left < before
    assert (other.out / "requests.jsonl").exists()  # the other project's state is its own
    assert not (project.out / "requests.jsonl").exists()


def test_clean_remote_refuses_while_batches_fly(tmp_path: Path, simulator_factory) -> None:
    sim = simulator_factory(time_scale=1.0)
    project = make_project(tmp_path, {"requests.jsonl": [chat("r0")]})
    assert project.build("--no-wait") == EXIT_PENDING
    assert main(["clean", str(project.config), "--remote", "--yes"]) == EXIT_BAD_INPUT
    assert len(_uploads(sim)) == 1
    assert (state_dir(project.out) / "state.db").exists()


def test_clean_and_gc_wait_for_no_build(tmp_path: Path, simulator, capsys) -> None:
    project = make_project(tmp_path, {"requests.jsonl": [chat("r0")]})
    assert project.build() == EXIT_OK
    with BuildLock(project.out, state_dir(project.out)):
        assert main(["clean", str(project.config), "--yes"]) == EXIT_LOCKED
        assert main(["gc", str(project.config)]) == EXIT_LOCKED
    assert (project.out / "requests.jsonl").exists()


def _count(project, table: str) -> int:
    db = sqlite3.connect(state_dir(project.out) / "state.db")
    try:
        return db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    finally:
        db.close()


def test_gc_drops_results_of_requests_in_no_input(tmp_path: Path, simulator, capsys) -> None:
    reqs = [chat(f"r{i}", "word " * 50 + str(i)) for i in range(10)]
    project = make_project(
        tmp_path, {"requests.jsonl": reqs, "emb.jsonl": [embedding(f"e{i}") for i in range(3)]}
    )
    assert project.build() == EXIT_OK
    assert _count(project, "results") == 13 and _count(project, "shards") == 2
    assert _count(project, "members") == 0  # released once their batches were collected
    # drop five lines and the embeddings input; edit one line
    kept = reqs[:5]
    kept[0] = chat("r0", "edited")
    write_jsonl(project.input(), kept)
    update_config(project, inputs=["inputs/requests.jsonl"])
    assert project.build() == EXIT_OK
    assert _count(project, "results") == 14
    outputs = project.output()
    capsys.readouterr()
    assert main(["gc", str(project.config)]) == EXIT_OK
    text = capsys.readouterr().out
    # r0's old version, r5..r9, and the three embeddings; the finished shards are kept
    # (their members went when their batches were collected; their batch rows stop a
    # reconcile from adopting those batches again)
    assert "dropped 9 results, 0 shards (0 members, 0 batches, 0 shard files)" in text
    assert "bytes before" in text
    assert _count(project, "results") == 5 and _count(project, "shards") == 3
    assert project.build() == EXIT_OK
    assert creates(simulator) == 3  # nothing rebuilt after gc
    assert project.output() == outputs


def test_gc_keeps_results_of_an_undo_not_yet_built(tmp_path: Path, simulator, capsys) -> None:
    reqs = [chat(f"r{i}") for i in range(4)]
    project = make_project(tmp_path, {"requests.jsonl": reqs})
    assert project.build() == EXIT_OK
    write_jsonl(project.input(), [chat("r0", "edited"), *reqs[1:]])
    assert project.build() == EXIT_OK
    write_jsonl(project.input(), reqs)  # undo the edit, and gc before building
    assert main(["gc", str(project.config)]) == EXIT_OK
    assert "dropped 0 results" in capsys.readouterr().out
    assert project.build() == EXIT_OK
    assert creates(simulator) == 2  # the original r0 result was kept: nothing resent
    assert billed_ids(simulator).count("r0") == 2


def test_gc_without_state_says_so(tmp_path: Path, capsys) -> None:
    project = make_project(tmp_path, {"requests.jsonl": [chat("r0")]})
    assert main(["gc", str(project.config)]) == EXIT_BAD_INPUT
    assert "no build state" in capsys.readouterr().err
