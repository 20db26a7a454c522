"""`gptbatch init --data FILE`: a data target scaffolded from a table's header, ready to build."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from gptbatch.cli import main
from gptbatch.errors import EXIT_BAD_INPUT, EXIT_OK

CSV = "review_id,product,text\nrv-1,kettle,Boils fast.\nrv-2,lamp,Too dim.\nrv-3,kettle,Leaks.\n"


def _table(tmp_path: Path, name: str = "reviews.csv", text: str = CSV) -> Path:
    data = tmp_path / "data" / name
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text(text, encoding="utf-8")
    return data


def test_init_data_writes_a_target_that_builds_one_request_per_row(tmp_path: Path, capsys) -> None:
    data = _table(tmp_path)
    project = tmp_path / "proj"
    assert main(["init", str(project), "--data", str(data)]) == EXIT_OK
    printed = capsys.readouterr().out
    assert "target reviews: one request per row" in printed and "column review_id" in printed
    config = yaml.safe_load((project / "batch.yaml").read_text())
    (target,) = config["inputs"]
    assert target == {
        "name": "reviews",
        "data": "../data/reviews.csv",
        "id": "review_id",
        "request": "prompts/reviews.yaml",
    }
    template = yaml.safe_load((project / "prompts" / "reviews.yaml").read_text())
    user = template["body"]["messages"][-1]["content"]
    assert user == "product: {{ product }}\ntext: {{ text }}"  # every column but the id

    assert main(["validate", str(project / "batch.yaml")]) == EXIT_OK
    assert main(["build", str(project / "batch.yaml"), "--simulate"]) == EXIT_OK
    out = project / "out-simulated" / "reviews.jsonl"
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["custom_id"] for r in lines] == ["rv-1", "rv-2", "rv-3"]


def test_init_data_keeps_an_existing_template_and_reads_jsonl_records(
    tmp_path: Path, capsys
) -> None:
    rows = [
        {"doc_id": "d1", "title": "A", "body": "x"},
        {"doc_id": "d2", "title": "B", "body": "y"},
    ]
    data = _table(tmp_path, "docs.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    mine = tmp_path / "prompts" / "docs.yaml"
    mine.parent.mkdir()
    mine.write_text("url: /v1/chat/completions\nbody: {model: gpt-4o-mini, messages: []}\n")
    before = mine.read_bytes()
    assert main(["init", str(tmp_path), "--data", str(data)]) == EXIT_OK
    assert "kept the existing template" in capsys.readouterr().out
    assert mine.read_bytes() == before
    (target,) = yaml.safe_load((tmp_path / "batch.yaml").read_text())["inputs"]
    assert (target["name"], target["id"], target["data"]) == ("docs", "doc_id", "data/docs.jsonl")


def test_init_data_asks_for_the_id_column_when_none_looks_like_one(tmp_path: Path, capsys) -> None:
    data = _table(tmp_path, "t.csv", "product,text\nkettle,Boils\n")
    assert main(["init", str(tmp_path / "p"), "--data", str(data)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "no column looks like a row id (columns: product, text)" in err and "--id" in err
    assert not (tmp_path / "p").exists()  # nothing written
    assert main(["init", str(tmp_path / "p"), "--data", str(data), "--id", "nope"]) == (
        EXIT_BAD_INPUT
    )
    assert "--id nope: t.csv has no such column" in capsys.readouterr().err
    assert main(["init", str(tmp_path / "p"), "--data", str(data), "--id", "product"]) == EXIT_OK
    (target,) = yaml.safe_load((tmp_path / "p" / "batch.yaml").read_text())["inputs"]
    assert target["id"] == "product"


def test_init_data_never_touches_an_existing_config(tmp_path: Path, capsys) -> None:
    data = _table(tmp_path)
    assert main(["init", str(tmp_path)]) == EXIT_OK
    before = (tmp_path / "batch.yaml").read_bytes()
    for extra in ([], ["--force"]):
        assert main(["init", str(tmp_path), "--data", str(data), *extra]) == EXIT_BAD_INPUT
        assert "add the data target to its inputs by hand" in capsys.readouterr().err
        assert (tmp_path / "batch.yaml").read_bytes() == before
    assert not (tmp_path / "prompts").exists()


def test_init_data_refuses_a_missing_table_and_id_without_data(tmp_path: Path, capsys) -> None:
    assert main(["init", str(tmp_path), "--data", str(tmp_path / "none.csv")]) == EXIT_BAD_INPUT
    assert "none.csv: no such file" in capsys.readouterr().err
    assert main(["init", str(tmp_path), "--id", "x"]) == EXIT_BAD_INPUT
    assert "pass --data too" in capsys.readouterr().err
    assert not (tmp_path / "batch.yaml").exists()


def test_init_data_reads_a_parquet_schema_and_a_semicolon_header(tmp_path: Path, capsys) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = tmp_path / "data" / "rows.parquet"
    data.parent.mkdir(parents=True)
    pq.write_table(pa.table({"row_id": ["a", "b"], "body": ["one", "two"], "n": [1, 2]}), data)
    semis = _table(tmp_path, "semi.csv", "review_id;product;text\nrv-1;kettle;Boils fast.\n")
    cases = (
        (data, "body: {{ body }}\nn: {{ n }}", ["a", "b"]),
        (semis, "product: {{ product }}\ntext: {{ text }}", ["rv-1"]),
    )
    for table, columns, expected in cases:
        project = tmp_path / table.stem
        assert main(["init", str(project), "--data", str(table)]) == EXIT_OK
        capsys.readouterr()
        template = yaml.safe_load((project / "prompts" / f"{table.stem}.yaml").read_text())
        assert template["body"]["messages"][-1]["content"] == columns
        assert main(["build", str(project / "batch.yaml"), "--simulate"]) == EXIT_OK
        out = project / "out-simulated" / f"{table.stem}.jsonl"
        ids = [json.loads(line)["custom_id"] for line in out.read_text().splitlines()]
        assert ids == expected
