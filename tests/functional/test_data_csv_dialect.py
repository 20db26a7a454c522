"""CSV dialects on data targets: `csv: {delimiter, quotechar}`, .tsv, a delimiter the header
shows when csv: is unset, and the hint."""

from __future__ import annotations

import csv
from pathlib import Path

import yaml
from buildkit import billed_ids
from test_data_targets import data_project

from gptbatch.cli import main
from gptbatch.errors import EXIT_BAD_INPUT, EXIT_OK

SEMICOLONS = "review_id;text\nrv0;'Good; really good'\nrv1;Bad, sadly\nrv2;'It''s fine'\n"


def table(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def test_a_semicolon_csv_with_its_dialect_builds(tmp_path: Path, simulator) -> None:
    project = data_project(tmp_path, SEMICOLONS, csv={"delimiter": ";", "quotechar": "'"})
    assert project.build() == EXIT_OK
    assert sorted(i for i in billed_ids(simulator) if i.startswith("rv")) == ["rv0", "rv1", "rv2"]
    rows = table(project.out / "sentiment.csv")  # the table is written as plain CSV
    assert rows[0][:3] == ["review_id", "text", "answer"]
    assert [r[1] for r in rows[1:]] == ["Good; really good", "Bad, sadly", "It's fine"]
    assert all(r[2] for r in rows[1:])
    # the same rows saved as plain CSV, and the dialect dropped: the same requests, 0 billed
    billed = len(billed_ids(simulator))
    with open(tmp_path / "data" / "reviews.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f, lineterminator="\n").writerows(rows_of(SEMICOLONS))
    doc = yaml.safe_load(project.config.read_text())
    del doc["inputs"][1]["csv"]
    project.config.write_text(yaml.safe_dump(doc, sort_keys=False))
    assert project.build() == EXIT_OK
    assert len(billed_ids(simulator)) == billed


def rows_of(text: str) -> list[list[str]]:
    return list(csv.reader(text.splitlines(), delimiter=";", quotechar="'"))


def test_a_tsv_file_is_tab_delimited_by_default(tmp_path: Path, simulator) -> None:
    project = data_project(tmp_path, data="data/reviews.tsv")
    (tmp_path / "data" / "reviews.tsv").write_text("review_id\ttext\nt0\tone, two\nt1\tthree\n")
    assert project.build() == EXIT_OK
    assert [o["custom_id"] for o in project.output("sentiment")] == ["t0", "t1"]
    assert [r[1] for r in table(project.out / "sentiment.csv")[1:]] == ["one, two", "three"]


def test_a_header_with_the_id_column_under_another_delimiter_is_read_so(
    tmp_path: Path, simulator
) -> None:
    """No csv: given: a header that has the id column only when split by ; (or tab, or |)
    says how the file is delimited; rewritten as plain CSV it makes the same requests."""
    text = 'review_id;text\nrv0;"Good; really good"\nrv1;Bad, sadly\n'
    project = data_project(tmp_path, text)
    assert project.build() == EXIT_OK
    assert sorted(i for i in billed_ids(simulator) if i.startswith("rv")) == ["rv0", "rv1"]
    rows = table(project.out / "sentiment.csv")
    assert [r[:2] for r in rows] == [["review_id", "text"], ["rv0", "Good; really good"],
                                     ["rv1", "Bad, sadly"]]  # fmt: skip
    billed = len(billed_ids(simulator))
    (tmp_path / "data" / "reviews.csv").write_text(
        'review_id,text\nrv0,Good; really good\nrv1,"Bad, sadly"\n'
    )
    assert project.build() == EXIT_OK
    assert len(billed_ids(simulator)) == billed
    (tmp_path / "data" / "reviews.csv").write_text("review_id\ttext\nrv0\tGood; really good\n")
    assert project.build() == EXIT_OK
    assert len(billed_ids(simulator)) == billed  # tabs too


def test_a_missing_id_column_names_the_columns_and_the_delimiter(tmp_path: Path, capsys) -> None:
    # an explicit csv: is not second-guessed; the hint says what the header shows
    project = data_project(tmp_path, SEMICOLONS, csv={"delimiter": ","})
    assert main(["validate", str(project.config)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "reviews.csv:2: target sentiment: no id column 'review_id'" in err, err
    assert 'set csv: {delimiter: ";"} on the target' in err, err
    # sniffed, but the quotes are not the default's: the row's fields are counted by ;
    (tmp_path / "q").mkdir()
    project = data_project(tmp_path / "q", SEMICOLONS)
    assert main(["validate", str(project.config)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "row has 3 fields, the header 2 (columns separated by ';')" in err, err
    (tmp_path / "q" / "data" / "reviews.csv").write_text("name,text\nt0,x|y\n")
    assert main(["validate", str(project.config)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "the columns are name, text; set id: to one of them" in err and "csv: {" not in err
    assert not project.out.exists()


def test_a_bad_dialect_is_a_config_error_at_its_line(tmp_path: Path, capsys) -> None:
    cases = [
        ({"delimiter": ";;"}, "inputs[1].csv.delimiter"),
        ({"delimiter": '"'}, "csv: delimiter and quotechar are both '\"'"),
        ({"delimiter": "\n"}, "csv: delimiter '\\n' is not one character"),
        ({"separator": ";"}, "separator"),
    ]
    for dialect, expected in cases:
        project = data_project(tmp_path, SEMICOLONS, csv=dialect)
        assert main(["validate", str(project.config)]) == EXIT_BAD_INPUT, dialect
        err = capsys.readouterr().err
        assert expected in err, (dialect, err)
        lines = project.config.read_text().splitlines()
        line = next(i for i, text in enumerate(lines, 1) if text.strip().startswith("csv:"))
        assert f"batch.yaml:{line}" in err or f"batch.yaml:{line + 1}" in err, (dialect, err)
    records = tmp_path / "data" / "reviews.jsonl"
    records.write_text('{"review_id": "a", "text": "x"}\n')
    project = data_project(tmp_path, SEMICOLONS, data="data/reviews.jsonl", csv={"delimiter": ";"})
    assert main(["validate", str(project.config)]) == EXIT_BAD_INPUT
    assert "csv: applies to CSV data, not .jsonl files" in capsys.readouterr().err
    assert not project.out.exists()
