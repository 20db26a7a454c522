"""`build CONFIG INPUT` builds a subset: the other inputs are neither removed nor unbuilt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from buildkit import billed_ids, chat, creates, make_project, write_jsonl

from gptbatch.cli import main
from gptbatch.errors import EXIT_OK, EXIT_PENDING


def two_inputs(tmp_path: Path):
    return make_project(
        tmp_path,
        {
            "a.jsonl": [chat(f"a{i}") for i in range(30)],
            "b.jsonl": [chat(f"b{i}") for i in range(30)],
        },
    )


def export(project, capsys) -> list[dict]:
    capsys.readouterr()
    assert main(["export", str(project.config)]) == EXIT_OK
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_a_subset_build_leaves_the_other_inputs_built(tmp_path: Path, simulator, capsys) -> None:
    project = two_inputs(tmp_path)
    assert project.build() == EXIT_OK
    b_output = (project.out / "b.jsonl").read_bytes()
    sent = creates(simulator)
    capsys.readouterr()

    assert project.build(str(project.input("a.jsonl")), "-v") == EXIT_OK
    err = capsys.readouterr().err
    assert "removed from batch.yaml" not in err

    assert project.cli("status", "--explain") == EXIT_OK
    out = capsys.readouterr().out
    assert "never built" not in out and "up to date" in out and "60 of 60" in out
    rows = export(project, capsys)
    assert len(rows) == 60 and all(r["status"] == "ok" for r in rows)  # was 30 of 60

    assert project.build() == EXIT_OK  # nothing to read again, nothing to send
    assert creates(simulator) == sent
    assert (project.out / "b.jsonl").read_bytes() == b_output
    assert sorted(billed_ids(simulator)) == sorted(
        [f"a{i}" for i in range(30)] + [f"b{i}" for i in range(30)]
    )


def test_a_subset_build_sends_only_its_inputs(tmp_path: Path, simulator) -> None:
    project = two_inputs(tmp_path)
    assert project.build() == EXIT_OK
    write_jsonl(project.input("a.jsonl"), [chat(f"a{i}") for i in range(31)])
    write_jsonl(project.input("b.jsonl"), [chat(f"b{i}") for i in range(31)])
    assert project.build(str(project.input("a.jsonl"))) == EXIT_OK
    assert billed_ids(simulator).count("a30") == 1 and "b30" not in billed_ids(simulator)
    assert project.cli("status") == EXIT_PENDING  # b.jsonl changed since: not up to date
    assert project.build() == EXIT_OK
    assert billed_ids(simulator).count("b30") == 1 and billed_ids(simulator).count("a30") == 1


def test_a_target_relative_to_the_config_is_accepted(
    tmp_path: Path, simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = two_inputs(tmp_path / "project")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["build", str(project.config), "inputs/b.jsonl"]) == EXIT_OK
    assert sorted(billed_ids(simulator)) == sorted(f"b{i}" for i in range(30))
    assert (project.out / "b.jsonl").exists() and not (project.out / "a.jsonl").exists()


def test_a_subset_build_leaves_shards_of_other_inputs_unsent(tmp_path: Path, simulator) -> None:
    project = two_inputs(tmp_path)
    assert project.build("--max-cost", "0.0000001") == EXIT_PENDING  # packed, nothing sent
    assert creates(simulator) == 0
    assert project.build(str(project.input("a.jsonl"))) == EXIT_OK
    assert sorted(billed_ids(simulator)) == sorted(f"a{i}" for i in range(30))
    assert project.cli("status") == EXIT_PENDING  # b's requests are still to build
    assert project.build() == EXIT_OK
    assert sorted(billed_ids(simulator)) == sorted(
        [f"a{i}" for i in range(30)] + [f"b{i}" for i in range(30)]
    )


def test_a_target_after_an_option_is_still_a_target(tmp_path: Path, simulator, capsys) -> None:
    """`gptbatch build batch.yaml --max-cost 5 inputs/b.jsonl`: argparse hands back a
    positional that follows an option; it is a target, not an error. Unknown options still
    are."""
    project = two_inputs(tmp_path)
    target = "inputs/b.jsonl"
    assert main(["build", str(project.config), "--max-cost", "5", target]) == EXIT_OK
    assert sorted(billed_ids(simulator)) == sorted(f"b{i}" for i in range(30))  # b alone
    with pytest.raises(SystemExit) as exited:  # as argparse stops on any unknown option
        main(["build", str(project.config), "--no-wait", "--bogus"])
    assert exited.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
