"""Data targets under adversarial use: regressions found by review (issue 18)."""

from __future__ import annotations

import csv
import json
import signal
from pathlib import Path

import pytest
import yaml
from buildkit import billed_ids, billed_twice, creates, read_jsonl, start_build, wait_until
from test_data_answers import SCHEMA_TEMPLATE
from test_data_steps import IDS, STEP
from test_data_targets import TEMPLATE, data_project, reviews

import gptbatch
from gptbatch.cli import main
from gptbatch.errors import EXIT_BAD_INPUT, EXIT_PENDING


def test_a_data_file_where_its_table_goes_is_refused_not_overwritten(
    tmp_path: Path, simulator, capsys
) -> None:
    # output_dir "." and a target named as its data file: the table <name>.csv is the data.
    project = data_project(tmp_path)
    data = tmp_path / "reviews.csv"
    data.write_text(reviews())
    doc = yaml.safe_load(project.config.read_text())
    doc["inputs"] = [
        {"name": "reviews", "data": "reviews.csv", "id": "review_id", "request": TEMPLATE}
    ]
    doc["output_dir"] = "."
    project.config.write_text(yaml.safe_dump(doc, sort_keys=False))
    before = data.read_bytes()
    assert project.build() == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "data file 'reviews.csv' is under output_dir ./" in err, err
    assert data.read_bytes() == before
    assert simulator.journal.calls == []
    assert not (tmp_path / ".gptbatch").exists()


def test_a_template_file_under_output_dir_is_refused(tmp_path: Path, capsys) -> None:
    project = data_project(tmp_path, request="out/t.yaml")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "t.yaml").write_text(yaml.safe_dump(TEMPLATE))
    assert main(["validate", str(project.config)]) == EXIT_BAD_INPUT
    assert "request template 'out/t.yaml' is under output_dir out/" in capsys.readouterr().err


def test_a_forced_python_build_with_steps_pays_each_request_once(tmp_path: Path, simulator) -> None:

    made = data_project(tmp_path, request=SCHEMA_TEMPLATE, extra=[STEP])
    project = gptbatch.load(made.config)
    assert project.build().exit_code == 0
    first = len(billed_ids(simulator))
    (tmp_path / "data" / "reviews.csv").write_text(reviews(edit={3: "Changed my mind: awful"}))
    assert project.build(force=True).exit_code == 0
    again = billed_ids(simulator)[first:]
    # the step is forced in its own round, over the answers the upstream's round made:
    # before, reply:rv3 was paid for as it was, then again over the new answer
    assert sorted(again) == sorted([*IDS, *(f"reply:{i}" for i in IDS), "x0", "x1", "x2"])
    assert set(again[:9]) == {*IDS, "x0", "x1", "x2"}
    assert billed_twice(simulator) == sorted([*IDS, *(f"reply:{i}" for i in IDS), "x0", "x1", "x2"])


def test_a_row_edited_during_a_build_keeps_its_table_row_with_its_own_answer(
    tmp_path: Path, simulator_factory
) -> None:
    sim = simulator_factory(validating_seconds=150.0)  # the batch stays in flight ~1.5 s
    project = data_project(tmp_path)
    proc = start_build(project)
    assert wait_until(lambda: creates(sim) >= 1)
    (tmp_path / "data" / "reviews.csv").write_text(reviews(edit={2: "Changed: awful"}))
    assert proc.wait(timeout=60) == 0, proc.stderr.read() if proc.stderr else ""

    def table() -> list[dict[str, str]]:
        with open(project.out / "sentiment.csv", newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))

    # The table pairs each row with the answer to the request rendered from it: row rv2 as
    # it was sent, not its new text beside the answer to the old one.
    outputs = {o["custom_id"]: o for o in read_jsonl(project.out / "sentiment.jsonl")}
    rows = table()
    assert rows[2]["text"] == "Review number 2, fine enough"
    answer = outputs["rv2"]["response"]["body"]["choices"][0]["message"]["content"]
    assert rows[2]["answer"] == answer
    # The next build sends the edited row, and the table shows it with its new answer.
    billed = len(billed_ids(sim))
    assert project.build() == 0
    assert billed_ids(sim)[billed:] == ["rv2"]
    assert table()[2]["text"] == "Changed: awful"
    assert table()[2]["answer"] != answer


def test_a_data_column_or_schema_property_named_answer_keeps_columns_apart(
    tmp_path: Path, simulator
) -> None:
    schema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["answer", "confidence"],
        "properties": {"answer": {"type": "string"}, "confidence": {"type": "number"}},
    }
    template = {
        "url": TEMPLATE["url"],
        "body": {
            **TEMPLATE["body"],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "a", "strict": True, "schema": schema},
            },
        },
    }
    # the data has its own `answer` column, empty but on one row
    data = "review_id,text,answer\nrv0,good,\nrv1,bad,yes\nrv2,meh,\n"
    step = {**STEP, "request": TEMPLATE}
    project = data_project(tmp_path, data, template, extra=[step])
    assert project.build() == 0
    with open(project.out / "sentiment.csv", newline="", encoding="utf-8") as f:
        header = next(csv.reader(f))
    assert len(header) == len(set(header)), header  # was answer.answer twice
    assert header[:3] == ["review_id", "text", "answer"]
    # The step takes every row the model answered, not the rows whose data says `answer`.
    assert sorted(i for i in billed_ids(simulator) if i.startswith("reply:")) == [
        "reply:rv0",
        "reply:rv1",
        "reply:rv2",
    ]
    with open(project.out / "reply.csv", newline="", encoding="utf-8") as f:
        assert [r["review_id"] for r in csv.DictReader(f)] == ["rv0", "rv1", "rv2"]


def test_an_unclosed_quote_is_a_located_error_not_rows_silently_dropped(
    tmp_path: Path, simulator, capsys
) -> None:
    # the lenient reader made rows 3 and 4 part of row 2's text: 2 requests, 2 rows lost
    project = data_project(tmp_path, 'review_id,text\nrv1,ok\nrv2,"unclosed\nrv3,x\nrv4,y\n')
    assert project.build() == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "reviews.csv:3: bad CSV in the row starting here: unexpected end of data" in err, err
    assert simulator.journal.calls == []
    assert not project.out.exists()


def test_crlf_bom_and_quoted_newlines_render_and_table_round_trip(
    tmp_path: Path, simulator
) -> None:
    text = '\ufeffreview_id,text\r\nrv1,"line one\r\nline two"\r\nrv2,"a ""quoted"", comma"\r\n'
    project = data_project(tmp_path)
    (tmp_path / "data" / "reviews.csv").write_bytes(text.encode())
    assert project.build() == 0
    rendered = read_jsonl(project.out / ".gptbatch" / "rendered" / "sentiment.jsonl")
    assert [r["body"]["messages"][1]["content"] for r in rendered] == [
        "line one\r\nline two",
        'a "quoted", comma',
    ]
    with open(project.out / "sentiment.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [(r["review_id"], r["text"]) for r in rows] == [
        ("rv1", "line one\r\nline two"),
        ("rv2", 'a "quoted", comma'),
    ]


def test_a_data_target_and_its_step_build_on_anthropic(tmp_path: Path, simulator) -> None:
    template = {"body": {"max_tokens": 50, "messages": [{"role": "user", "content": "{{ text }}"}]}}
    step = {
        **STEP,
        "request": {
            "url": "/v1/messages",
            "body": {
                "max_tokens": 50,
                "messages": [{"role": "user", "content": "Reply to: {{ answer }}"}],
            },
        },
    }
    project = data_project(tmp_path, reviews(3), template, extra=[step])
    doc = yaml.safe_load(project.config.read_text())
    doc["inputs"] = doc["inputs"][1:]  # the plain file is in OpenAI's shape
    doc.update(api={"provider": "anthropic"}, model="claude-sonnet-4-5")
    project.config.write_text(yaml.safe_dump(doc, sort_keys=False))
    # the rendered lines were OpenAI's shape: a located error at a generated file, never sent
    assert project.build() == 0
    sent = [b.custom_id for b in simulator.journal.billed]
    assert len(sent) == 6 and len(set(sent)) == 6
    for name, ids in (("sentiment", ["rv0", "rv1", "rv2"]), ("reply", ["rv0", "rv1", "rv2"])):
        with open(project.out / f"{name}.csv", newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        assert [r["review_id"] for r in rows] == ids
        assert all(r["answer" if name == "sentiment" else "answer.answer"] for r in rows), rows
    (tmp_path / "data" / "reviews.csv").write_text(reviews(3, edit={1: "Changed: awful"}))
    assert project.build() == 0
    assert len(simulator.journal.billed) == 8  # the row, then its step's row
    assert project.build() == 0
    assert len(simulator.journal.billed) == 8


def test_an_openai_url_in_an_anthropic_template_is_a_config_error(tmp_path: Path, capsys) -> None:
    project = data_project(tmp_path)
    doc = yaml.safe_load(project.config.read_text())
    doc["inputs"] = doc["inputs"][1:]
    doc.update(api={"provider": "anthropic"}, model="claude-sonnet-4-5")
    project.config.write_text(yaml.safe_dump(doc, sort_keys=False))
    assert main(["validate", str(project.config)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "the request template's url is /v1/chat/completions; api.provider anthropic" in err
    assert ".gptbatch/rendered" not in err


def test_a_validate_during_a_build_cannot_pair_a_row_with_another_answer(
    tmp_path: Path, simulator_factory
) -> None:
    sim = simulator_factory(validating_seconds=150.0)  # the batch stays in flight ~1.5 s
    project = data_project(tmp_path)
    proc = start_build(project)
    assert wait_until(lambda: creates(sim) >= 1)
    (tmp_path / "data" / "reviews.csv").write_text(reviews(edit={2: "Changed: awful"}))
    # validate renders the edited data into the state (over the build's rendered requests
    # and the data copy its table is written from)
    assert main(["validate", str(project.config)]) == 0
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    table = project.out / "sentiment.csv"
    if table.exists():  # whatever was written pairs each row with its own answer
        outputs = {o["custom_id"]: o for o in read_jsonl(project.out / "sentiment.jsonl")}
        answer = outputs["rv2"]["response"]["body"]["choices"][0]["message"]["content"]
        with open(table, newline="", encoding="utf-8") as f:
            row = list(csv.DictReader(f))[2]
        assert (row["text"], row["answer"]) == ("Review number 2, fine enough", answer), row
    else:
        assert "sentiment.csv: not written: its data was rendered again" in out, out
    billed = len(billed_ids(sim))
    assert project.build() == 0
    assert billed_ids(sim)[billed:] == ["rv2"]
    with open(table, newline="", encoding="utf-8") as f:
        row = list(csv.DictReader(f))[2]
    assert row["text"] == "Changed: awful"


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "point", ["after_create:2", "after_submitted_state:2", "mid_download:2", "after_collect:2"]
)
@pytest.mark.parametrize("forced", [False, True])
def test_a_kill_in_a_steps_round_pays_nothing_twice(
    tmp_path: Path, simulator, point: str, forced: bool
) -> None:
    project = data_project(tmp_path, request=SCHEMA_TEMPLATE, extra=[STEP])
    everything = sorted([*IDS, *(f"reply:{i}" for i in IDS), "x0", "x1", "x2"])
    if forced:
        assert project.build() == 0
    args = ["-B"] if forced else []
    run = project.build_process(*args, env={"GPTBATCH_CRASH_AT": point}, timeout=90)
    assert run.returncode == -signal.SIGKILL, run.stderr[-2000:]
    rerun = project.build_process(timeout=90)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert sorted(billed_ids(simulator)) == sorted(everything * (2 if forced else 1))
    with open(project.out / "reply.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["review_id"] for r in rows] == IDS and all(r["answer.answer"] for r in rows)


def test_a_parquet_data_file_is_read_as_parquet(tmp_path: Path, capsys) -> None:
    project = data_project(tmp_path, data="data/reviews.parquet")
    (tmp_path / "data" / "reviews.parquet").write_bytes(b"PAR1\x00\x01\x02binary")
    assert main(["validate", str(project.config)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    # it was read as a CSV: "no data rows", with no word of the format (Parquet is read
    # since; a spreadsheet is still refused by name)
    assert "data/reviews.parquet: not a readable Parquet file" in err, err
    assert "no data rows" not in err
    project = data_project(tmp_path, data="data/reviews.xlsx")
    (tmp_path / "data" / "reviews.xlsx").write_bytes(b"PK\x03\x04binary")
    assert main(["validate", str(project.config)]) == EXIT_BAD_INPUT
    assert "'data/reviews.xlsx': data targets do not read spreadsheets" in capsys.readouterr().err


def test_a_forced_one_round_build_says_how_to_force_its_steps(
    tmp_path: Path, simulator, capsys, monkeypatch
) -> None:
    project = data_project(tmp_path, request=SCHEMA_TEMPLATE, extra=[STEP])
    assert project.build() == 0
    first = len(billed_ids(simulator))
    capsys.readouterr()
    assert project.build("-B", "--max-cost", "5") == EXIT_PENDING
    err = capsys.readouterr().err
    assert "steps reply: not forced" in err and "`gptbatch build -B reply`" in err, err
    assert sorted(billed_ids(simulator)[first:]) == sorted([*IDS, "x0", "x1", "x2"])
    # the step alone (named as the message says, from the config's directory): forced at once
    monkeypatch.chdir(tmp_path)
    assert main(["build", "-B", "reply"]) == 0
    assert sorted(billed_ids(simulator)[first + 9 :]) == [f"reply:{i}" for i in IDS]


def test_export_of_an_anthropic_project_has_the_replies(tmp_path: Path, simulator, capsys) -> None:
    from test_build_anthropic import claude, claude_project

    project = claude_project(tmp_path, [claude(f"q{i}") for i in range(3)])
    assert project.build() == 0
    capsys.readouterr()
    assert main(["export", str(project.config)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["custom_id"] for r in rows] == ["q0", "q1", "q2"]
    replies = [o["response"]["body"]["content"][0]["text"] for o in project.output()]
    assert [r["reply"] for r in rows] == replies  # was null: only OpenAI bodies were read
    assert all(r["finish_reason"] == "end_turn" for r in rows), rows
