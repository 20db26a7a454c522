"""A `.ndjson` input is JSONL by another name: its output is `x.jsonl`, not `x.ndjson.jsonl`,
so inputs `x.ndjson` and `x.jsonl` beside each other are refused (they would share one)."""

from __future__ import annotations

from pathlib import Path

from buildkit import billed_ids, chat, make_project, read_jsonl

from gptbatch.errors import EXIT_BAD_INPUT, EXIT_OK


def test_an_ndjson_input_writes_x_jsonl(tmp_path: Path, simulator) -> None:
    project = make_project(tmp_path, {"x.ndjson": [chat("a"), chat("b")]})
    assert project.build() == EXIT_OK
    assert [o["custom_id"] for o in read_jsonl(project.out / "x.jsonl")] == ["a", "b"]
    assert not (project.out / "x.ndjson.jsonl").exists()


def test_x_ndjson_beside_x_jsonl_is_refused_before_anything_is_sent(
    tmp_path: Path, simulator, capsys
) -> None:
    project = make_project(tmp_path, {"x.ndjson": [chat("a")], "x.jsonl": [chat("b")]})
    assert project.build() == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "x.ndjson and" in err and "x.jsonl would write the same output x.jsonl" in err, err
    assert "rename one of them" in err
    assert billed_ids(simulator) == [] and not (project.out / "x.jsonl").exists()
