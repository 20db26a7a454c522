"""A project copied or moved to another directory, or an input renamed: the next build takes
the earlier rows of the input it moved from instead of reading the file again in full, and
sends nothing that has a result (or only what was edited)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml
from buildkit import Project, billed_ids, chat, embedding, json_events, make_project, write_jsonl

from gptbatch.errors import EXIT_OK


def _inputs(capsys: Any) -> dict[str, dict[str, Any]]:
    events = json_events(capsys.readouterr().out)
    return {Path(e["path"]).name: e for e in events if e["event"] == "input"}


def _built(tmp_path: Path, capsys: Any) -> Project:
    project = make_project(
        tmp_path / "a",
        {
            "chat.jsonl": [chat(f"c{i}") for i in range(120)],
            "emb.jsonl": [embedding(f"e{i}") for i in range(40)],
        },
    )
    assert project.build() == EXIT_OK
    capsys.readouterr()
    return project


def _copy(project: Project, to: Path) -> Project:
    shutil.copytree(project.root, to)  # copy2: the same mtimes, other inodes and paths
    return Project(to, to / "batch.yaml")


def test_a_copied_project_reads_no_input_again_and_sends_nothing(
    tmp_path: Path, simulator, capsys
) -> None:
    project = _built(tmp_path, capsys)
    billed = billed_ids(simulator)
    copy = _copy(project, tmp_path / "b")
    assert copy.build("--json") == EXIT_OK
    inputs = _inputs(capsys)
    assert inputs["chat.jsonl"]["state"].startswith("moved from ")
    assert str(project.input("chat.jsonl")) in inputs["chat.jsonl"]["state"]
    assert inputs["emb.jsonl"]["state"].startswith("moved from ")
    assert billed_ids(simulator) == billed
    for name in ("chat", "emb"):
        assert (copy.out / f"{name}.jsonl").read_bytes() == (
            project.out / f"{name}.jsonl"
        ).read_bytes()
    assert copy.build("--json") == EXIT_OK  # and from now on it is at home there
    assert {e["state"] for e in _inputs(capsys).values()} == {"unchanged (size and mtime)"}
    assert project.build("--json") == EXIT_OK  # the original's own state is untouched
    assert {e["state"] for e in _inputs(capsys).values()} == {"unchanged (size and mtime)"}


def test_a_moved_and_edited_input_sends_only_its_edit(tmp_path: Path, simulator, capsys) -> None:
    project = _built(tmp_path, capsys)
    copy = _copy(project, tmp_path / "b")
    rows = [chat(f"c{i}") for i in range(120)]
    rows[60] = chat("c60", "edited in the copy")
    rows.insert(10, chat("new"))
    write_jsonl(copy.input("chat.jsonl"), rows)
    before = len(billed_ids(simulator))
    assert copy.build("--json") == EXIT_OK
    inputs = _inputs(capsys)
    assert inputs["chat.jsonl"]["state"] == "read"
    assert inputs["chat.jsonl"]["new"] == 2  # the edited line and the inserted one
    assert sorted(billed_ids(simulator)[before:]) == ["c60", "new"]
    out = [
        json.loads(x)["custom_id"] for x in (copy.out / "chat.jsonl").read_text().split("\n") if x
    ]
    assert out == [r["custom_id"] for r in rows]


def test_an_input_renamed_in_batch_yaml_keeps_its_results(
    tmp_path: Path, simulator, capsys
) -> None:
    project = _built(tmp_path, capsys)
    billed = billed_ids(simulator)
    project.input("chat.jsonl").rename(project.input("talk.jsonl"))
    doc = yaml.safe_load(project.config.read_text())
    doc["inputs"] = ["inputs/talk.jsonl", "inputs/emb.jsonl"]
    project.config.write_text(yaml.safe_dump(doc))
    assert project.build() == EXIT_OK
    shown = capsys.readouterr()
    # said without -v (unchanged inputs are not): the user sees the move was recognised
    assert f"talk.jsonl: moved from {project.input('chat.jsonl')}" in shown.out + shown.err
    assert "input " + str(project.input("emb.jsonl")) not in shown.out + shown.err
    assert billed_ids(simulator) == billed
    assert (project.out / "talk.jsonl").read_bytes() == (project.out / "chat.jsonl").read_bytes()


def test_a_new_input_with_other_bytes_and_name_is_read_as_new(
    tmp_path: Path, simulator, capsys
) -> None:
    """Nothing of a gone input is taken by an input it cannot be: read in full, sent."""
    project = _built(tmp_path, capsys)
    project.input("chat.jsonl").unlink()
    write_jsonl(project.input("other.jsonl"), [chat(f"o{i}") for i in range(5)])
    doc = yaml.safe_load(project.config.read_text())
    doc["inputs"] = ["inputs/other.jsonl", "inputs/emb.jsonl"]
    project.config.write_text(yaml.safe_dump(doc))
    before = len(billed_ids(simulator))
    assert project.build("--json") == EXIT_OK
    inputs = _inputs(capsys)
    assert inputs["other.jsonl"]["state"] == "read" and inputs["other.jsonl"]["new"] == 5
    assert sorted(billed_ids(simulator)[before:]) == [f"o{i}" for i in range(5)]
