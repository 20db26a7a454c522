"""Parquet data targets (`gptbatch[parquet]`): read a batch at a time, answers back as Parquet."""

from __future__ import annotations

import csv
import datetime
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from buildkit import REPO, billed_ids, read_jsonl
from test_data_answers import SCHEMA_TEMPLATE
from test_data_targets import data_project

from gptbatch.cli import main
from gptbatch.errors import EXIT_BAD_INPUT, EXIT_OK
from gptbatch.inputs import parquet


def write_reviews(path: Path, n: int = 6, edit: dict[int, str] | None = None) -> None:
    table = pa.table(
        {
            "review_id": pa.array([f"rv{i}" for i in range(n)]),
            "text": pa.array([(edit or {}).get(i, f"Review number {i}") for i in range(n)]),
            "stars": pa.array([i % 5 for i in range(n)], type=pa.int32()),
            "verified": pa.array([i % 2 == 0 for i in range(n)]),
            "note": pa.array([None if i % 3 else f"n{i}" for i in range(n)]),
            "day": pa.array([datetime.date(2026, 1, 1 + i) for i in range(n)]),
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=2)  # several row groups: read in batches


TEMPLATE = {
    **SCHEMA_TEMPLATE,
    "body": {
        **SCHEMA_TEMPLATE["body"],
        "messages": [
            {"role": "user", "content": "{{ text }} ({{ stars }}*, {{ verified }}, {{ day }})"},
            {"role": "user", "content": "note: [{{ note }}]"},
        ],
    },
}


def parquet_project(tmp_path: Path, **target):
    project = data_project(tmp_path, request=TEMPLATE, data="data/reviews.parquet", **target)
    write_reviews(tmp_path / "data" / "reviews.parquet")
    return project


def test_a_parquet_target_builds_and_writes_its_table_as_parquet(tmp_path: Path, simulator) -> None:
    project = parquet_project(tmp_path)
    assert project.build() == EXIT_OK
    ids = [f"rv{i}" for i in range(6)]
    assert sorted(i for i in billed_ids(simulator) if i.startswith("rv")) == ids
    rendered = read_jsonl(project.out / ".gptbatch" / "rendered" / "sentiment.jsonl")
    # values rendered as a CSV export holds them; null is the empty string, as in CSV
    assert (
        rendered[1]["body"]["messages"][0]["content"] == "Review number 1 (1*, false, 2026-01-02)"
    )
    assert rendered[1]["body"]["messages"][1]["content"] == "note: []"
    assert rendered[0]["body"]["messages"][1]["content"] == "note: [n0]"
    table = pq.read_table(project.out / "sentiment.parquet")
    assert table.column("review_id").to_pylist() == ids
    # the data's columns keep their types; the answer is text, each schema property is a
    # column of its JSON type
    assert table.schema.field("stars").type == pa.int32()
    assert table.schema.field("day").type == pa.date32()
    assert table.column("note").to_pylist()[:2] == ["n0", None]
    assert table.schema.field("answer").type == pa.string()
    assert table.schema.field("sentiment").type == pa.string()
    answers = table.column("sentiment").to_pylist()
    assert all(a in ("positive", "negative", "mixed") for a in answers), answers
    assert table.schema.field("score").type == pa.int64()
    scores = table.column("score").to_pylist()
    assert all(type(v) is int and 1 <= v <= 5 for v in scores), scores
    with open(project.out / "sentiment.csv", encoding="utf-8") as f:
        assert f.readline().startswith("review_id,text,stars,verified,note,day,answer,")
    # no change: nothing billed, the Parquet table not written again
    stamp = (project.out / "sentiment.parquet").stat().st_mtime_ns
    billed = len(billed_ids(simulator))
    assert project.build() == EXIT_OK
    assert len(billed_ids(simulator)) == billed
    assert (project.out / "sentiment.parquet").stat().st_mtime_ns == stamp
    # one row edited: one request billed, and the Parquet table has its new text
    write_reviews(tmp_path / "data" / "reviews.parquet", edit={4: "Edited review"})
    assert project.build() == EXIT_OK
    assert billed_ids(simulator)[billed:] == ["rv4"]
    table = pq.read_table(project.out / "sentiment.parquet")
    assert table.column("text").to_pylist()[4] == "Edited review"
    assert table.column("sentiment").to_pylist()[4] in ("positive", "negative", "neutral")
    # clean removes the Parquet table with the rest of the outputs
    assert main(["clean", str(project.config), "--yes"]) == EXIT_OK
    assert not (project.out / "sentiment.parquet").exists()
    assert (tmp_path / "data" / "reviews.parquet").exists()


def test_a_parquet_table_leaves_out_the_rows_where_filters(tmp_path: Path, simulator) -> None:
    project = parquet_project(tmp_path, where="verified == 'true'")
    assert project.build() == EXIT_OK
    assert sorted(i for i in billed_ids(simulator) if i.startswith("rv")) == ["rv0", "rv2", "rv4"]
    table = pq.read_table(project.out / "sentiment.parquet")
    assert table.column("review_id").to_pylist() == ["rv0", "rv2", "rv4"]
    assert table.column("verified").to_pylist() == [True, True, True]


def test_a_parquet_row_error_names_the_row(tmp_path: Path, simulator, capsys) -> None:
    project = data_project(tmp_path, data="data/reviews.parquet")
    table = pa.table({"review_id": ["a", "b", "a"], "text": ["x", "y", "z"]})
    pq.write_table(table, tmp_path / "data" / "reviews.parquet")
    assert project.build() == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "data/reviews.parquet:3: target sentiment: duplicate id 'a' (first on line 1)" in err
    assert not project.out.exists()


def test_a_file_that_is_not_parquet_is_a_located_error(tmp_path: Path, capsys) -> None:
    project = data_project(tmp_path, data="data/reviews.parquet")
    (tmp_path / "data" / "reviews.parquet").write_bytes(b"PAR1\x00\x01\x02binary")
    assert main(["validate", str(project.config)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "data/reviews.parquet: not a readable Parquet file" in err, err
    assert not project.out.exists()


def test_parquet_without_pyarrow_names_the_install_and_writes_nothing(
    tmp_path: Path, simulator
) -> None:
    project = parquet_project(tmp_path)
    # A fresh interpreter in which pyarrow cannot be imported, running the real CLI.
    code = (
        "import sys; sys.modules['pyarrow'] = None; sys.modules['pyarrow.parquet'] = None\n"
        "from gptbatch.cli import main\n"
        f"sys.exit(main(['build', {str(project.config)!r}]))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == EXIT_BAD_INPUT, run.stderr
    lines = project.config.read_text().splitlines()
    line = next(i for i, text in enumerate(lines, 1) if "reviews.parquet" in text)
    assert f"batch.yaml:{line}: inputs[1]: target sentiment: 'data/reviews.parquet'" in run.stderr
    assert "pip install 'gptbatch[parquet]'" in run.stderr
    assert not project.out.exists()
    assert simulator.journal.calls == []


def test_values_are_given_as_csv_text() -> None:
    assert parquet.as_text(None) == ""
    assert parquet.as_text(True) == "true"
    assert parquet.as_text(3) == "3"
    assert parquet.as_text(0.5) == "0.5"
    assert parquet.as_text(datetime.datetime(2026, 1, 2, 3, 4)) == "2026-01-02T03:04:00"
    assert parquet.as_text({"b": [1, None], "a": "x"}) == '{"a":"x","b":[1,null]}'
    assert parquet.as_text(b"\xff") == "/w=="


EMBED = {
    "url": "/v1/embeddings",
    "body": {"model": "text-embedding-3-small", "input": "{{ text }}"},
}


def test_an_embeddings_target_writes_each_rows_vector_in_the_parquet_table(
    tmp_path: Path, simulator, capsys
) -> None:
    project = data_project(tmp_path, request=EMBED, data="data/reviews.parquet")
    write_reviews(tmp_path / "data" / "reviews.parquet", n=4)
    assert project.build() == EXIT_OK
    results = {o["custom_id"]: o for o in read_jsonl(project.out / "sentiment.jsonl")}
    table = pq.read_table(project.out / "sentiment.parquet")
    assert table.schema.field("answer").type == pa.list_(pa.float64())
    for rid, vector in zip(
        table.column("review_id").to_pylist(), table.column("answer").to_pylist(), strict=True
    ):
        expected = results[rid]["response"]["body"]["data"][0]["embedding"]
        assert vector == pytest.approx(expected) and len(vector) > 1
    # the CSV table counts them answered (a vector is not CSV text: its cell is empty)
    with open(project.out / "sentiment.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and all(r["answer"] == "" for r in rows)
    assert "sentiment.csv: 4 rows, 4 answered" in capsys.readouterr().out
