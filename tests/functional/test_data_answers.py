"""Answers back to data: a data target's <name>.csv table, its schema columns, invalid
answers and retry_invalid, built with the real CLI against the simulator."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from buildkit import billed_ids
from conftest import copy_examples
from jsonschema import Draft202012Validator
from test_data_targets import TEMPLATE, data_project, reviews, set_template

from gptbatch.cli import main
from gptbatch.errors import EXIT_FAILED_REQUESTS, EXIT_OK, EXIT_PENDING
from gptbatch.simulator import Fault
from gptbatch.state.store import Store

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["sentiment", "score"],
    "properties": {
        "sentiment": {"type": "string", "enum": ["positive", "negative", "mixed"]},
        "score": {"type": "integer", "minimum": 1, "maximum": 5},
    },
}
SCHEMA_TEMPLATE: dict[str, Any] = {
    "url": TEMPLATE["url"],
    "body": {
        **TEMPLATE["body"],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "sentiment", "strict": True, "schema": SCHEMA},
        },
    },
}
IDS = [f"rv{i}" for i in range(6)]


def table(project: Any) -> tuple[list[str], list[dict[str, str]]]:
    """The header and rows of out/sentiment.csv."""
    with open(project.out / "sentiment.csv", newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def test_the_table_has_one_row_per_data_row_with_schema_columns(tmp_path: Path, simulator):
    project = data_project(tmp_path, request=SCHEMA_TEMPLATE)
    assert project.build() == EXIT_OK
    header, rows = table(project)
    assert header == ["review_id", "text", "answer", "sentiment", "score"]
    assert [r["review_id"] for r in rows] == IDS
    assert rows[4]["text"] == "Review number 4, fine enough"
    validator = Draft202012Validator(SCHEMA)
    for row in rows:
        answer = json.loads(row["answer"])
        assert list(validator.iter_errors(answer)) == []
        assert row["sentiment"] == answer["sentiment"]
        assert row["score"] == str(answer["score"])
    assert not (project.out / "sentiment.errors.jsonl").exists()
    # the plain request file gets no table
    assert not (project.out / "extra.csv").exists()

    # No change: nothing billed and the table is not written again.
    stamp = (project.out / "sentiment.csv").stat().st_mtime_ns
    assert project.build() == EXIT_OK
    assert len(billed_ids(simulator)) == 9
    assert (project.out / "sentiment.csv").stat().st_mtime_ns == stamp

    # A deleted table comes back on the next build, for free.
    (project.out / "sentiment.csv").unlink()
    assert project.build() == EXIT_OK
    assert table(project)[1] == rows
    assert len(billed_ids(simulator)) == 9

    # One row edited: one request billed, and only that row of the table changes.
    edited = reviews(edit={3: "Changed my mind: awful"})
    (tmp_path / "data" / "reviews.csv").write_text(edited)
    assert project.build() == EXIT_OK
    assert billed_ids(simulator)[9:] == ["rv3"]
    _, after = table(project)
    assert [r["review_id"] for r in after] == IDS
    assert after[3]["text"] == "Changed my mind: awful"
    assert after[3]["answer"] and after[3]["answer"] != rows[3]["answer"]
    assert [r for i, r in enumerate(after) if i != 3] == [r for i, r in enumerate(rows) if i != 3]

    # A column the template does not use: the table follows, nothing is billed.
    lines = edited.splitlines()
    starred = [lines[0] + ",stars"] + [f"{line},{i % 5 + 1}" for i, line in enumerate(lines[1:])]
    (tmp_path / "data" / "reviews.csv").write_text("\n".join(starred) + "\n")
    assert project.build() == EXIT_OK
    assert len(billed_ids(simulator)) == 10
    header, rows = table(project)
    assert header == ["review_id", "text", "stars", "answer", "sentiment", "score"]
    assert [r["stars"] for r in rows] == ["1", "2", "3", "4", "5", "1"]
    assert [r["answer"] for r in rows] == [r["answer"] for r in after]


def test_rows_without_an_answer_yet_are_empty(tmp_path: Path, simulator) -> None:
    project = data_project(tmp_path, request=SCHEMA_TEMPLATE)
    # one pass: submitted, nothing collected yet (it only collects what it polled before)
    assert project.build("--no-wait") == EXIT_PENDING
    header, rows = table(project)
    assert header[-3:] == ["answer", "sentiment", "score"]
    assert [r["review_id"] for r in rows] == IDS
    assert all(r["answer"] == r["sentiment"] == r["score"] == "" for r in rows)
    assert project.build() == EXIT_OK
    assert all(r["sentiment"] for r in table(project)[1])
    assert len(billed_ids(simulator)) == 9


def test_an_invalid_answer_is_recorded_not_retried_by_default(
    tmp_path: Path, simulator_factory
) -> None:
    sim = simulator_factory(faults=(Fault.invalid_json("rv2"),))
    project = data_project(tmp_path, request=SCHEMA_TEMPLATE)
    assert project.build() == EXIT_OK
    assert billed_ids(sim).count("rv2") == 1
    _, rows = table(project)
    assert [r["review_id"] for r in rows] == IDS
    assert rows[2]["answer"] == rows[2]["sentiment"] == rows[2]["score"] == ""
    assert all(r["sentiment"] for i, r in enumerate(rows) if i != 2)
    [error] = project.errors("sentiment")
    assert error["custom_id"] == "rv2"
    assert error["error"].startswith("invalid answer: the answer is not JSON")
    assert error["input"] == "data/reviews.csv:4"
    # the result line itself is kept in the JSONL output, as the API returned it
    assert [o["custom_id"] for o in project.output("sentiment")] == IDS
    # a later build sends nothing again
    assert project.build() == EXIT_OK
    assert billed_ids(sim).count("rv2") == 1
    assert len(project.errors("sentiment")) == 1


def test_retry_invalid_sends_an_invalid_answer_again(tmp_path: Path, simulator_factory) -> None:
    sim = simulator_factory(faults=(Fault.invalid_json("rv2", attempts=1),))
    project = data_project(tmp_path, request=SCHEMA_TEMPLATE, retry_invalid=True)
    assert project.build() == EXIT_OK
    assert billed_ids(sim).count("rv2") == 2
    assert all(billed_ids(sim).count(i) == 1 for i in IDS if i != "rv2")
    _, rows = table(project)
    assert rows[2]["sentiment"] in ("positive", "negative", "mixed")
    assert project.errors("sentiment") == []


def test_retry_invalid_gives_up_after_retries(tmp_path: Path, simulator_factory) -> None:
    sim = simulator_factory(faults=(Fault.invalid_json("rv2"),))
    project = data_project(tmp_path, request=SCHEMA_TEMPLATE, retry_invalid=True)
    doc = project.config.read_text() + "retries: 1\n"
    project.config.write_text(doc)
    assert project.build() == EXIT_FAILED_REQUESTS
    assert billed_ids(sim).count("rv2") == 2  # the first try and one retry
    [error] = project.errors("sentiment")
    assert error["custom_id"] == "rv2"
    assert "gave up after 2 attempts: invalid answer: the answer is not JSON" in error["error"]
    assert error["input"] == "data/reviews.csv:4"
    _, rows = table(project)
    assert rows[2]["answer"] == ""
    assert project.build() == EXIT_FAILED_REQUESTS
    assert billed_ids(sim).count("rv2") == 2


def test_a_plain_answer_and_an_embedding_row(tmp_path: Path, simulator) -> None:
    embed = {
        "url": "/v1/embeddings",
        "body": {"model": "text-embedding-3-small", "input": "{{ t }}"},
    }
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "words.jsonl").write_text(
        "".join(json.dumps({"wid": f"w{i}", "t": f"word {i}", "n": i}) + "\n" for i in range(3))
    )
    extra = [{"name": "vectors", "data": "data/words.jsonl", "id": "wid", "request": embed}]
    project = data_project(tmp_path, extra=extra)
    assert project.build() == EXIT_OK
    header, rows = table(project)
    assert header == ["review_id", "text", "answer"]
    assert all(r["answer"].startswith("Simulated reply to request") for r in rows)
    with open(project.out / "vectors.csv", newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        vectors = list(reader)
    assert reader.fieldnames == ["wid", "t", "n", "answer"]
    assert [(r["wid"], r["n"]) for r in vectors] == [("w0", "0"), ("w1", "1"), ("w2", "2")]
    assert all(r["answer"] == "" for r in vectors)  # vectors are in vectors.jsonl only
    assert project.output("vectors")[0]["response"]["body"]["data"][0]["embedding"]


def explained(project: Any, capsys: Any) -> dict[str, str]:
    """custom_id -> its line of `status --explain --limit 0`."""
    capsys.readouterr()
    assert project.cli("status", "--explain", "--limit", "0") == EXIT_PENDING
    lines = {}
    for line in capsys.readouterr().out.splitlines():
        parts = line.split(": ")
        if len(parts) > 2:
            lines[parts[1]] = line
    return lines


def test_explain_says_whether_the_row_or_the_template_changed(
    tmp_path: Path, simulator, capsys
) -> None:
    project = data_project(tmp_path)
    assert project.build() == EXIT_OK
    data = tmp_path / "data" / "reviews.csv"
    data.write_text(reviews(edit={3: "Changed my mind: awful"}))
    lines = explained(project, capsys)
    assert list(lines) == ["rv3"]
    assert "its data row changed since its last result" in lines["rv3"]

    # Synced by a build that sends nothing (a spend cap of 0): the store keeps the reason.
    assert project.build("--no-wait", "--max-cost", "0") in (EXIT_OK, EXIT_PENDING)
    rendered = project.out / ".gptbatch" / "rendered" / "sentiment.jsonl"
    store = Store(project.out / ".gptbatch")
    try:
        reasons = {r.custom_id: r.reason for r in store.requests_of(str(rendered))}
    finally:
        store.close()
    assert reasons["rv3"] == "row changed"
    assert project.build() == EXIT_OK
    assert billed_ids(simulator)[9:] == ["rv3"]

    changed = json.loads(json.dumps(TEMPLATE))
    changed["body"]["messages"][0]["content"] = "Is this review positive or negative?"
    set_template(project, changed)
    data.write_text(reviews(edit={3: "Changed my mind: awful", 1: "Edited too"}))
    lines = explained(project, capsys)
    assert sorted(lines) == IDS
    assert all("request template changed" in line for line in lines.values())


def test_the_data_example_writes_its_table(tmp_path: Path) -> None:
    copy_examples(tmp_path)
    config = tmp_path / "examples" / "data.yaml"
    with open(config, "a") as f:  # poll the rehearsal's simulator often
        f.write("polling: {initial_seconds: 0.02, max_seconds: 0.2, factor: 1.5}\n")
    assert main(["build", str(config), "--simulate"]) == EXIT_OK
    path = tmp_path / "examples" / "out-data-simulated" / "sentiment.csv"
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == ["review_id", "product", "text", "answer", "sentiment", "stars"]
    assert [r["review_id"] for r in rows] == [f"rv-00{i}" for i in range(1, 7)]
    assert all(r["sentiment"] in ("positive", "negative", "mixed") for r in rows)
    assert all(1 <= int(r["stars"]) <= 5 for r in rows)
    # the second step: a reply to each negative review, with the row's columns and answer
    with open(path.with_name("reply.csv"), newline="", encoding="utf-8") as f:
        replies = list(csv.DictReader(f))
    negative = [r["review_id"] for r in rows if r["sentiment"] == "negative"]
    assert [r["review_id"] for r in replies] == negative
    assert all(r["answer.answer"] for r in replies)


def test_sample_builds_the_same_few_rows_and_the_full_build_reuses_them(
    tmp_path: Path, simulator
) -> None:
    project = data_project(tmp_path, reviews(40), request=SCHEMA_TEMPLATE)
    assert project.build("sentiment", "--sample", "5") == EXIT_OK
    sampled = billed_ids(simulator)
    assert len(sampled) == 5 and len(set(sampled)) == 5
    positions = sorted(int(i[2:]) for i in sampled)
    assert positions[-1] - positions[0] > 5  # spread over the table, not its first rows
    _, rows = table(project)
    assert [r["review_id"] for r in rows] == [f"rv{i}" for i in range(40)]
    assert sorted(r["review_id"] for r in rows if r["sentiment"]) == sorted(sampled)
    assert [o["custom_id"] for o in project.output("sentiment")] == [f"rv{i}" for i in positions]

    # The same sample again: nothing billed.
    assert project.build("sentiment", "--sample", "5") == EXIT_OK
    assert len(billed_ids(simulator)) == 5

    # Rows added: the sample keeps its rows but for new ones that hash lower.
    (tmp_path / "data" / "reviews.csv").write_text(reviews(60))
    assert project.build("sentiment", "--sample", "5") == EXIT_OK
    again = billed_ids(simulator)[5:]
    assert all(int(i[2:]) >= 40 for i in again)
    assert len(again) <= 5

    # The full build: every other row, none of the sampled ones again.
    assert project.build() == EXIT_OK
    billed = billed_ids(simulator)
    assert sorted(billed) == sorted({f"rv{i}" for i in range(60)} | {"x0", "x1", "x2"})
    assert len(billed) == len(set(billed))  # nothing paid twice
    assert all(r["sentiment"] for r in table(project)[1])


def test_clean_removes_the_tables_and_rendered_requests(tmp_path: Path, simulator) -> None:
    project = data_project(tmp_path, request=SCHEMA_TEMPLATE)
    assert project.build() == EXIT_OK
    assert (project.out / "sentiment.csv").exists()
    assert main(["clean", str(project.config), "--yes"]) == EXIT_OK
    assert not project.out.exists()
    assert (tmp_path / "data" / "reviews.csv").exists()
    assert project.build() == EXIT_OK  # the batches are adopted: nothing paid again
    assert len(billed_ids(simulator)) == 9
    assert len(table(project)[1]) == 6


def test_an_edited_table_is_written_again_for_free(tmp_path: Path, simulator) -> None:
    project = data_project(tmp_path, request=SCHEMA_TEMPLATE)
    assert project.build() == EXIT_OK
    path = project.out / "sentiment.csv"
    good = path.read_bytes()
    path.write_bytes(good.replace(b"rv3", b"XX3"))
    (project.out / "sentiment.errors.jsonl").write_text('{"custom_id": "bogus"}\n')
    assert project.build() == EXIT_OK
    assert path.read_bytes() == good
    assert not (project.out / "sentiment.errors.jsonl").exists()
    assert len(billed_ids(simulator)) == 9
