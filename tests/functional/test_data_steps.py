"""Steps: a data target whose data is another target's answers, built in dependency order."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import yaml
from buildkit import billed_ids
from test_data_answers import SCHEMA_TEMPLATE
from test_data_targets import TEMPLATE, data_project, reviews

from gptbatch.cli import main
from gptbatch.errors import EXIT_BAD_INPUT, EXIT_OK, EXIT_PENDING
from gptbatch.simulator import Fault

REPLY: dict[str, Any] = {
    "url": TEMPLATE["url"],
    "body": {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Answer a {{ sentiment }} review politely."},
            {"role": "user", "content": "{{ text }}"},
        ],
    },
}
STEP = {"name": "reply", "data": "sentiment", "id": "review_id", "request": REPLY}
IDS = [f"rv{i}" for i in range(6)]


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_a_step_builds_over_its_upstream_answers(tmp_path: Path, simulator, capsys) -> None:
    project = data_project(tmp_path, request=SCHEMA_TEMPLATE, extra=[STEP])
    assert project.build() == EXIT_OK
    billed = billed_ids(simulator)
    assert sorted(billed) == sorted([*IDS, *(f"reply:{i}" for i in IDS), "x0", "x1", "x2"])
    upstream = rows(project.out / "sentiment.csv")
    table = rows(project.out / "reply.csv")
    assert [r["review_id"] for r in table] == IDS
    assert [r["sentiment"] for r in table] == [r["sentiment"] for r in upstream]
    assert all(r["answer.answer"].startswith("Simulated reply") for r in table)
    # the step's requests carry the upstream answer
    rendered = [
        json.loads(line)
        for line in (project.out / ".gptbatch" / "rendered" / "reply.jsonl")
        .read_text()
        .splitlines()
    ]
    assert rendered[0]["custom_id"] == "reply:rv0"
    system = rendered[0]["body"]["messages"][0]["content"]
    assert system == f"Answer a {upstream[0]['sentiment']} review politely."

    # No change: nothing billed.
    assert project.build() == EXIT_OK
    assert len(billed_ids(simulator)) == len(billed)

    # One upstream row edited: that row, then its step's row, nothing else.
    (tmp_path / "data" / "reviews.csv").write_text(reviews(edit={3: "Changed my mind: awful"}))
    assert project.build("sentiment") == EXIT_OK  # the upstream alone first
    assert billed_ids(simulator)[len(billed) :] == ["rv3"]
    capsys.readouterr()
    assert project.cli("status", "--explain") == EXIT_PENDING
    out = capsys.readouterr().out
    assert "reply:rv3: its upstream target's answer (or row) changed" in out, out
    assert project.build() == EXIT_OK
    assert billed_ids(simulator)[len(billed) :] == ["rv3", "reply:rv3"]
    assert rows(project.out / "reply.csv")[3]["text"] == "Changed my mind: awful"
    assert project.build() == EXIT_OK
    assert len(billed_ids(simulator)) == len(billed) + 2


def test_a_step_skips_rows_without_a_valid_upstream_answer(tmp_path: Path, simulator_factory):
    sim = simulator_factory(faults=(Fault.invalid_json("rv2"),))
    project = data_project(tmp_path, request=SCHEMA_TEMPLATE, extra=[STEP])
    assert project.build() == EXIT_OK
    assert "reply:rv2" not in billed_ids(sim)
    assert [r["review_id"] for r in rows(project.out / "reply.csv")] == [
        i for i in IDS if i != "rv2"
    ]


def with_steps(tmp_path: Path, steps: list[dict[str, Any]]) -> Any:
    return data_project(tmp_path, request=SCHEMA_TEMPLATE, extra=steps)


def test_a_cycle_of_steps_is_a_located_config_error(tmp_path: Path, capsys) -> None:
    project = with_steps(
        tmp_path, [{**STEP, "data": "again"}, {**STEP, "name": "again", "data": "reply"}]
    )
    assert main(["validate", str(project.config)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    lines = project.config.read_text().splitlines()
    line = next(i for i, text in enumerate(lines, 1) if "data: again" in text)
    assert f"batch.yaml:{line}: inputs[2]: target reply: its steps form a cycle: " in err, err
    assert "reply -> again -> reply" in err
    assert not project.out.exists()


def test_a_step_over_itself_or_an_unknown_target_is_an_error(tmp_path: Path, capsys) -> None:
    project = with_steps(tmp_path, [{**STEP, "data": "reply"}])
    assert main(["validate", str(project.config)]) == EXIT_BAD_INPUT
    assert "its steps form a cycle: reply -> reply" in capsys.readouterr().err
    doc = yaml.safe_load(project.config.read_text())
    doc["inputs"][2]["data"] = "sentimnet"
    project.config.write_text(yaml.safe_dump(doc, sort_keys=False))
    assert main(["validate", str(project.config)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "target reply: no data file 'sentimnet'" in err
    assert "the name of another target (a step over its answers: reply, sentiment)" in err


def test_one_pass_leaves_the_steps_pending_and_says_so(tmp_path: Path, simulator, capsys) -> None:
    project = data_project(tmp_path, request=SCHEMA_TEMPLATE, extra=[STEP])
    assert project.build("--max-cost", "5") == EXIT_PENDING  # one round only
    assert "steps reply: their upstream answers changed; run" in capsys.readouterr().err
    assert not any(i.startswith("reply:") for i in billed_ids(simulator))
    assert project.build() == EXIT_OK
    assert sorted(i for i in billed_ids(simulator) if i.startswith("reply:")) == [
        f"reply:{i}" for i in IDS
    ]


def test_a_forced_build_with_steps_sends_each_request_once(tmp_path: Path, simulator) -> None:
    project = data_project(tmp_path, request=SCHEMA_TEMPLATE, extra=[STEP])
    assert project.build() == EXIT_OK
    first = len(billed_ids(simulator))
    assert first == 15
    (tmp_path / "data" / "reviews.csv").write_text(reviews(edit={3: "Changed my mind: awful"}))
    assert project.build("-B") == EXIT_OK
    again = billed_ids(simulator)[first:]
    # Round 1 forces the upstream and the plain file; round 2 the step, over the answers
    # round 1 made: each request once. (Forcing the step in round 1 paid for reply:rv3 as it
    # was, then for the new one; with a real model every upstream answer changes under -B,
    # so every step request was paid twice.)
    assert sorted(again) == sorted([*IDS, *(f"reply:{i}" for i in IDS), "x0", "x1", "x2"])
    assert set(again[:9]) == {*IDS, "x0", "x1", "x2"}  # the step only after its upstream


def test_a_rehearsal_builds_steps_in_its_own_state(tmp_path: Path, capsys) -> None:
    project = data_project(tmp_path, request=SCHEMA_TEMPLATE, extra=[STEP])
    assert project.build("--simulate") == EXIT_OK
    rehearsal = tmp_path / "out-simulated"
    assert [r["review_id"] for r in rows(rehearsal / "reply.csv")] == IDS
    (tmp_path / "data" / "reviews.csv").write_text(reviews(edit={3: "Changed my mind: awful"}))
    capsys.readouterr()
    assert project.build("--simulate") == EXIT_OK  # both rounds, not "run it again"
    assert "their upstream answers changed: building them" in capsys.readouterr().err
    assert rows(rehearsal / "reply.csv")[3]["text"] == "Changed my mind: awful"
    assert not project.out.exists()  # the real project is untouched
