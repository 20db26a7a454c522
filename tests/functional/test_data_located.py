"""A data target's requests in messages and in export: named by the data file and row line."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from buildkit import chat, write_jsonl
from test_data_targets import data_project
from test_data_where import moods_csv

from gptbatch.cli import main
from gptbatch.errors import EXIT_BAD_INPUT, EXIT_OK


def test_a_duplicate_id_across_a_target_and_a_file_names_the_data_row(
    tmp_path: Path, simulator, capsys
) -> None:
    # rv4 is the data's line 6, and the rendered file's line 3 (where leaves rows out)
    project = data_project(tmp_path, moods_csv(), where="mood == 'negative'")
    write_jsonl(project.input("extra.jsonl"), [chat("x0"), chat("rv4")])
    for command in (["build"], ["validate"]):
        assert main([*command, str(project.config)]) == EXIT_BAD_INPUT
        err = capsys.readouterr().err
        assert "data/reviews.csv:6: duplicate custom_id 'rv4' (first seen at " in err, err
        assert "extra.jsonl:2)" in err, err
        errors = [line for line in err.splitlines() if "duplicate custom_id" in line]
        assert errors and not any("rendered" in line for line in errors), err
        assert simulator.journal.calls == []
    # the target first: the file's line names the data row it repeats
    doc = yaml.safe_load(project.config.read_text())
    doc["inputs"] = [doc["inputs"][1], doc["inputs"][0]]
    project.config.write_text(yaml.safe_dump(doc, sort_keys=False))
    assert main(["validate", str(project.config)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "extra.jsonl:2: duplicate custom_id 'rv4' (first seen at data/reviews.csv:6)" in err
    assert main(["build", str(project.config)]) == EXIT_BAD_INPUT
    errors = [
        line for line in capsys.readouterr().err.splitlines() if "duplicate custom_id" in line
    ]
    assert errors and all("data/reviews.csv:6" in e and "rendered" not in e for e in errors)


def test_export_names_the_data_file_and_row_of_a_targets_requests(
    tmp_path: Path, simulator, capsys
) -> None:
    project = data_project(tmp_path, moods_csv(), where="mood == 'negative'")
    assert project.build() == EXIT_OK
    capsys.readouterr()
    assert main(["export", str(project.config)]) == EXIT_OK
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    located = {r["custom_id"]: (r["input"], r["line"]) for r in rows}
    assert located["x1"] == ("inputs/extra.jsonl", 2)
    assert [located[i] for i in ("rv0", "rv2", "rv4")] == [
        ("data/reviews.csv", 2),
        ("data/reviews.csv", 4),
        ("data/reviews.csv", 6),
    ]
    # A row inserted at the top and not built yet: the data no longer says where the state's
    # requests came from, so they keep the rendered file's lines rather than wrong ones.
    data = tmp_path / "data" / "reviews.csv"
    head, *rest = data.read_text().splitlines(keepends=True)
    data.write_text(head + "new,negative,An inserted review\n" + "".join(rest))
    assert main(["export", str(project.config)]) == EXIT_OK
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    rv2 = next(r for r in rows if r["custom_id"] == "rv2")
    assert rv2["input"] != "data/reviews.csv" and rv2["line"] == 2, rv2
    assert project.build() == EXIT_OK
    capsys.readouterr()
    assert main(["export", str(project.config)]) == EXIT_OK
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    located = {r["custom_id"]: (r["input"], r["line"]) for r in rows}
    assert located["new"] == ("data/reviews.csv", 2)
    assert located["rv2"] == ("data/reviews.csv", 5)
