"""Data targets end to end: a table and a request template built against the simulator."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from buildkit import Project, billed_ids, chat, read_jsonl, write_jsonl
from conftest import copy_examples

from gptbatch.cli import main
from gptbatch.errors import EXIT_BAD_INPUT, EXIT_OK

TEMPLATE: dict[str, Any] = {
    "url": "/v1/chat/completions",
    "body": {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Classify the review's sentiment."},
            {"role": "user", "content": "{{ text }}"},
        ],
    },
}


def reviews(n: int = 6, edit: dict[int, str] | None = None) -> str:
    rows = ["review_id,text"]
    for i in range(n):
        text = (edit or {}).get(i, f"Review number {i}, fine enough")
        rows.append(f'rv{i},"{text}"')
    return "\n".join(rows) + "\n"


def data_project(
    tmp_path: Path,
    csv_text: str | None = None,
    request: Any = None,
    extra: list[Any] | None = None,
    **target: Any,
) -> Project:
    """A project whose inputs are a plain request file and a `sentiment` data target."""
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / "reviews.csv").write_text(csv_text if csv_text is not None else reviews())
    write_jsonl(tmp_path / "inputs" / "extra.jsonl", [chat(f"x{i}") for i in range(3)])
    entry = {
        "name": "sentiment",
        "data": "data/reviews.csv",
        "id": "review_id",
        "request": TEMPLATE if request is None else request,
        **target,
    }
    doc = {
        "version": 1,
        "inputs": ["inputs/extra.jsonl", entry, *(extra or [])],
        "output_dir": "out",
        "project": f"test-{tmp_path.name}",
        "polling": {"initial_seconds": 0.02, "max_seconds": 0.2, "factor": 1.5},
    }
    config = tmp_path / "batch.yaml"
    config.write_text(yaml.safe_dump(doc, sort_keys=False))
    return Project(tmp_path, config)


def set_template(project: Project, request: Any) -> None:
    doc = yaml.safe_load(project.config.read_text())
    doc["inputs"][1]["request"] = request
    project.config.write_text(yaml.safe_dump(doc, sort_keys=False))


def test_csv_target_builds_one_request_per_row(tmp_path: Path, simulator) -> None:
    project = data_project(tmp_path)
    assert project.build() == EXIT_OK
    out = project.output("sentiment")
    assert [o["custom_id"] for o in out] == [f"rv{i}" for i in range(6)]
    assert all(o["response"]["status_code"] == 200 for o in out)
    assert sorted(billed_ids(simulator)) == sorted(
        [f"rv{i}" for i in range(6)] + ["x0", "x1", "x2"]
    )
    rendered = read_jsonl(project.out / ".gptbatch" / "rendered" / "sentiment.jsonl")
    assert rendered[2]["body"]["messages"][1]["content"] == "Review number 2, fine enough"
    assert rendered[2]["method"] == "POST"
    assert project.output("extra")  # the plain request file still builds beside it


def test_edits_bill_exactly_what_changed(tmp_path: Path, simulator) -> None:
    project = data_project(tmp_path)
    assert project.build() == EXIT_OK
    assert len(billed_ids(simulator)) == 9

    # No change: nothing billed, nothing rendered again.
    marker = project.out / ".gptbatch" / "rendered" / "sentiment.jsonl"
    stamp = marker.stat().st_mtime_ns
    assert project.build() == EXIT_OK
    assert len(billed_ids(simulator)) == 9
    assert marker.stat().st_mtime_ns == stamp

    # One row edited: that row's request only.
    (tmp_path / "data" / "reviews.csv").write_text(reviews(edit={3: "Changed my mind: awful"}))
    assert project.build() == EXIT_OK
    assert billed_ids(simulator)[9:] == ["rv3"]

    # The prompt edited: every request of the target, none of the plain input.
    changed = json.loads(json.dumps(TEMPLATE))
    changed["body"]["messages"][0]["content"] = "Say whether the review is positive or negative."
    set_template(project, changed)
    assert project.build() == EXIT_OK
    assert sorted(billed_ids(simulator)[10:]) == [f"rv{i}" for i in range(6)]

    # The same template with other key order and layout: no request billed.
    doc = yaml.safe_load(project.config.read_text())
    entry = doc["inputs"][1]
    doc["inputs"][1] = {k: entry[k] for k in ("request", "id", "data", "name")}
    body = entry["request"]["body"]
    doc["inputs"][1]["request"] = {
        "body": {k: body[k] for k in reversed(body)},
        "url": TEMPLATE["url"],
    }
    project.config.write_text(
        yaml.safe_dump(doc, sort_keys=True, default_flow_style=True, width=60)
    )
    assert project.build() == EXIT_OK
    assert len(billed_ids(simulator)) == 16


def test_template_file_is_part_of_the_key(tmp_path: Path, simulator) -> None:
    (tmp_path / "prompts").mkdir()
    template = tmp_path / "prompts" / "sentiment.yaml"
    template.write_text(yaml.safe_dump(TEMPLATE))
    project = data_project(tmp_path, request="prompts/sentiment.yaml")
    assert project.build() == EXIT_OK
    assert len(billed_ids(simulator)) == 9
    template.write_text(yaml.safe_dump(TEMPLATE).replace("Classify", "Please classify"))
    assert project.build() == EXIT_OK
    assert sorted(billed_ids(simulator)[9:]) == [f"rv{i}" for i in range(6)]


def test_jsonl_records_and_bom_csv(tmp_path: Path, simulator) -> None:
    records = tmp_path / "data" / "reviews.jsonl"
    records.parent.mkdir()
    records.write_text(
        "".join(json.dumps({"review_id": f"j{i}", "text": f"t{i}"}) + "\n" for i in range(3))
    )
    bom = tmp_path / "data" / "bom.csv"
    bom.write_bytes("\ufeffreview_id,text\nb1,héllo\n".encode())
    extra = [{"name": "bom", "data": "data/bom.csv", "id": "review_id", "request": TEMPLATE}]
    project = data_project(tmp_path, extra=extra, data="data/reviews.jsonl")
    assert project.build() == EXIT_OK
    assert [o["custom_id"] for o in project.output("sentiment")] == ["j0", "j1", "j2"]
    assert [o["custom_id"] for o in project.output("bom")] == ["b1"]


def prompt(text: str) -> dict[str, Any]:
    """A template whose one rendered string is text."""
    return {**TEMPLATE, "body": {"model": "m", "prompt": text}}


DUPLICATE, EMPTY, RAGGED = (
    "review_id,text\na,1\nb,2\na,3\n",
    "review_id,text\na,1\n ,2\n",
    "review_id,text\na,1\nb,2,3\n",
)
BAD: list[tuple[str, str, Any, str]] = [
    # (case, CSV text, request template or None, what the error says)
    ("unknown column", reviews(), prompt("{{ txt }}"), "reviews.csv:2: row 'rv0': template "),
    (
        "duplicate id",
        DUPLICATE,
        None,
        "reviews.csv:4: target sentiment: duplicate id 'a' (first on line 2)",
    ),
    ("empty id", EMPTY, None, "reviews.csv:3: target sentiment: empty id"),
    ("ragged row", RAGGED, None, "reviews.csv:3: row has 3 fields, the header 2"),
    ("syntax error", reviews(), prompt("{{ text "), "batch.yaml:"),
    ("sandbox", reviews(), prompt("{{ text.__class__.__mro__ }}"), "the sandbox refused"),
    ("no id column", "name,text\na,1\n", None, "target sentiment: no id column 'review_id'"),
]


@pytest.mark.parametrize(("case", "csv_text", "template", "expected"), BAD, ids=[b[0] for b in BAD])
def test_bad_data_is_a_located_error_that_writes_nothing(
    tmp_path: Path, simulator, capsys, case: str, csv_text: str, template: Any, expected: str
) -> None:
    project = data_project(tmp_path, csv_text, template)
    assert project.build() == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert expected in err, err
    assert not project.out.exists()
    assert not (tmp_path / "out-simulated").exists()
    assert simulator.journal.calls == []
    if case == "unknown column":
        assert "batch.yaml:11: placeholder {{ txt }} names no column" in err
        assert "the columns are review_id, text" in err
    if case == "syntax error":
        assert "Jinja2 syntax error" in err


def test_wrong_encoding_names_the_line(tmp_path: Path, capsys) -> None:
    project = data_project(tmp_path)
    (tmp_path / "data" / "reviews.csv").write_bytes(b"review_id,text\na,ok\nb,caf\xe9\n")
    assert main(["validate", str(project.config)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "reviews.csv:3: not UTF-8 (byte 26)" in err
    assert not project.out.exists()


def test_syntax_error_in_a_template_file_names_its_line(tmp_path: Path, capsys) -> None:
    (tmp_path / "prompts").mkdir()
    bad = {
        "url": TEMPLATE["url"],
        "body": {"model": "m", "messages": [{"role": "user", "content": "{% if text %}"}]},
    }
    (tmp_path / "prompts" / "t.yaml").write_text(yaml.safe_dump(bad, sort_keys=False))
    project = data_project(tmp_path, request="prompts/t.yaml")
    assert main(["validate", str(project.config)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    lines = (tmp_path / "prompts" / "t.yaml").read_text().splitlines()
    line = next(i for i, text in enumerate(lines, 1) if "{% if" in text)
    assert f"prompts/t.yaml:{line}: target sentiment: Jinja2 syntax error" in err, err
    assert not project.out.exists()


def test_a_bad_target_entry_names_its_yaml_line(tmp_path: Path, capsys) -> None:
    project = data_project(tmp_path, data="data/missing.csv")
    assert main(["validate", str(project.config)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    lines = project.config.read_text().splitlines()
    line = next(i for i, text in enumerate(lines, 1) if "missing.csv" in text)
    assert f"batch.yaml:{line}: inputs[1]: target sentiment: no data file 'data/missing.csv'" in err


def test_the_data_example_builds_and_rebuilds_what_changed(tmp_path: Path, simulator) -> None:
    copy_examples(tmp_path)
    config = tmp_path / "examples" / "data.yaml"
    with open(config, "a") as f:  # the test's simulator is fast: poll it often
        f.write("polling: {initial_seconds: 0.02, max_seconds: 0.2, factor: 1.5}\n")
    assert main(["build", str(config), "--simulate"]) == EXIT_OK
    rehearsed = read_jsonl(tmp_path / "examples" / "out-data-simulated" / "sentiment.jsonl")
    assert [o["custom_id"] for o in rehearsed] == [f"rv-00{i}" for i in range(1, 7)]
    assert main(["build", str(config)]) == EXIT_OK  # against the test's simulator
    out = tmp_path / "examples" / "out-data"

    def sentiment() -> list[str]:
        return [i for i in billed_ids(simulator) if not i.startswith("reply:")]

    def replies() -> list[str]:
        return [i for i in billed_ids(simulator) if i.startswith("reply:")]

    def negative() -> list[str]:  # the rows the step's `where` keeps
        with open(out / "sentiment.csv", newline="", encoding="utf-8") as f:
            return [r["review_id"] for r in csv.DictReader(f) if r["sentiment"] == "negative"]

    assert len(sentiment()) == 6
    assert sorted(replies()) == sorted(f"reply:{i}" for i in negative())  # the second step
    before = len(replies())
    data = tmp_path / "examples" / "data" / "reviews.csv"
    data.write_text(data.read_text().replace("Boils fast", "Boils slowly"))
    assert main(["build", str(config)]) == EXIT_OK
    assert sentiment()[6:] == ["rv-001"]
    assert replies()[before:] == (["reply:rv-001"] if "rv-001" in negative() else [])
    template = tmp_path / "examples" / "data" / "sentiment.yaml"
    template.write_text(template.read_text().replace("one word", "a single word"))
    assert main(["build", str(config)]) == EXIT_OK
    assert len(sentiment()) == 13
    billed = len(billed_ids(simulator))
    assert main(["build", str(config)]) == EXIT_OK
    assert len(billed_ids(simulator)) == billed


def test_a_target_is_built_alone_by_its_name(tmp_path: Path, simulator) -> None:
    project = data_project(tmp_path)
    assert project.build("sentiment") == EXIT_OK
    assert sorted(billed_ids(simulator)) == [f"rv{i}" for i in range(6)]
    assert not (project.out / "extra.jsonl").exists()


def test_commands_other_than_build_write_nothing_and_a_rehearsal_keeps_to_its_own_dir(
    tmp_path: Path, simulator, capsys
) -> None:
    project = data_project(tmp_path)
    config = str(project.config)
    for command in (["validate"], ["plan"], ["status"]):
        assert main([*command, config]) in (EXIT_OK, 3), command
        assert not project.out.exists(), f"{command[0]} created {project.out}"
    capsys.readouterr()
    assert main(["build", config, "--simulate"]) == EXIT_OK
    assert not project.out.exists()  # rendered into the rehearsal's own state
    rehearsal = tmp_path / "out-simulated"
    assert (rehearsal / ".gptbatch" / "rendered" / "sentiment.jsonl").is_file()
    assert main(["status", config, "--simulate"]) == EXIT_OK
    assert main(["build", config]) == EXIT_OK  # for real: its own rendered requests
    assert (project.out / ".gptbatch" / "rendered" / "sentiment.jsonl").is_file()
