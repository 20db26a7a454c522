"""`where:` on a data target: a row filter, billed against the simulator."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import yaml
from buildkit import Project, billed_ids
from test_data_targets import data_project

from gptbatch.cli import main
from gptbatch.errors import EXIT_BAD_INPUT, EXIT_OK

MOODS = ["negative", "positive", "negative", "neutral", "negative", "positive"]


def moods_csv(moods: list[str] = MOODS) -> str:
    rows = ["review_id,mood,text"]
    rows += [f"rv{i},{mood},Review number {i}" for i, mood in enumerate(moods)]
    return "\n".join(rows) + "\n"


def set_where(project: Project, where: str | None) -> None:
    doc = yaml.safe_load(project.config.read_text())
    if where is None:
        doc["inputs"][1].pop("where", None)
    else:
        doc["inputs"][1]["where"] = where
    project.config.write_text(yaml.safe_dump(doc, sort_keys=False))


def table_ids(project: Project, name: str = "sentiment") -> list[str]:
    with open(project.out / f"{name}.csv", newline="", encoding="utf-8") as f:
        return [r["review_id"] for r in csv.DictReader(f)]


def test_where_sends_only_the_rows_that_pass(tmp_path: Path, simulator, capsys) -> None:
    project = data_project(tmp_path, moods_csv(), where="mood == 'negative'")
    assert project.build() == EXIT_OK
    negative = ["rv0", "rv2", "rv4"]
    assert sorted(billed_ids(simulator)) == sorted([*negative, "x0", "x1", "x2"])
    assert [o["custom_id"] for o in project.output("sentiment")] == negative
    assert table_ids(project) == negative
    capsys.readouterr()
    assert main(["status", str(project.config), "--explain"]) == EXIT_OK
    assert "target sentiment: 3 rows filtered out by where" in capsys.readouterr().out
    assert main(["plan", str(project.config)]) == EXIT_OK
    assert "target sentiment: 3 rows filtered out by where" in capsys.readouterr().out
    assert main(["status", str(project.config), "--json"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["filtered_out"] == {"sentiment": 3}


def test_plan_counts_filtered_rows_before_any_build(tmp_path: Path, capsys) -> None:
    project = data_project(tmp_path, moods_csv(), where="mood != 'negative'")
    assert main(["plan", str(project.config), "--json"]) == EXIT_OK
    doc = json.loads(capsys.readouterr().out)
    assert doc["filtered_out"] == {"sentiment": 3}
    assert doc["totals"]["requests"] == 3 + 3  # three rows pass, and extra.jsonl's three
    assert not project.out.exists()


def test_changing_where_sends_the_rows_that_enter_and_reuses_those_that_return(
    tmp_path: Path, simulator
) -> None:
    project = data_project(tmp_path, moods_csv(), where="mood == 'negative'")
    assert project.build() == EXIT_OK
    assert len(billed_ids(simulator)) == 6

    # Widened: exactly the rows that enter are billed.
    set_where(project, "mood in ['negative', 'neutral']")
    assert project.build() == EXIT_OK
    assert billed_ids(simulator)[6:] == ["rv3"]
    assert table_ids(project) == ["rv0", "rv2", "rv3", "rv4"]

    # Narrowed: rows that leave drop out of the outputs and the table; nothing is billed.
    set_where(project, "mood == 'neutral'")
    assert project.build() == EXIT_OK
    assert len(billed_ids(simulator)) == 7
    assert [o["custom_id"] for o in project.output("sentiment")] == ["rv3"]
    assert table_ids(project) == ["rv3"]

    # They come back: their earlier results are reused, 0 billed; then the rest are sent.
    set_where(project, "mood in ['negative', 'neutral']")
    assert project.build() == EXIT_OK
    assert len(billed_ids(simulator)) == 7
    assert [o["custom_id"] for o in project.output("sentiment")] == ["rv0", "rv2", "rv3", "rv4"]
    set_where(project, None)
    assert project.build() == EXIT_OK
    assert sorted(billed_ids(simulator)[7:]) == ["rv1", "rv5"]
    assert table_ids(project) == [f"rv{i}" for i in range(6)]
    assert main(["status", str(project.config), "--json"]) == EXIT_OK


def test_a_where_that_passes_no_row_sends_nothing_of_the_target(tmp_path: Path, simulator) -> None:
    project = data_project(tmp_path, moods_csv(), where="mood == 'furious'")
    assert project.build() == EXIT_OK
    assert sorted(billed_ids(simulator)) == ["x0", "x1", "x2"]
    assert table_ids(project) == []


def test_a_where_syntax_error_is_a_config_error_at_its_yaml_line(
    tmp_path: Path, simulator, capsys
) -> None:
    project = data_project(tmp_path, moods_csv(), where="mood == 'negative' and")
    assert project.build() == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    lines = project.config.read_text().splitlines()
    line = next(i for i, text in enumerate(lines, 1) if "where:" in text)
    assert f"batch.yaml:{line}: inputs[1]: target sentiment: where: Jinja2 syntax error" in err
    assert not project.out.exists()
    assert simulator.journal.calls == []


def test_a_missing_column_in_where_names_the_data_file_row_and_name(
    tmp_path: Path, simulator, capsys
) -> None:
    project = data_project(tmp_path, moods_csv(), where="mod == 'negative'")
    assert project.build() == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "data/reviews.csv:2: target sentiment, row 'rv0': where \"mod == 'negative'\"" in err
    assert "'mod' names no column" in err
    assert "the columns are review_id, mood, text" in err
    assert not project.out.exists()
    assert simulator.journal.calls == []


def test_where_compares_values_and_refuses_code(tmp_path: Path, capsys) -> None:
    project = data_project(tmp_path, moods_csv(), where="review_id|replace('rv', '')|int >= 4")
    assert main(["validate", str(project.config)]) == EXIT_OK
    capsys.readouterr()
    assert main(["plan", str(project.config), "--json"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["filtered_out"] == {"sentiment": 4}
    set_where(project, "mood.__class__.__mro__")
    assert main(["validate", str(project.config)]) == EXIT_BAD_INPUT
    assert "the sandbox refused" in capsys.readouterr().err
    assert not project.out.exists()


def test_a_sample_is_drawn_from_the_rows_that_pass(tmp_path: Path, simulator) -> None:
    project = data_project(tmp_path, moods_csv(), where="mood == 'negative'")
    assert project.build("--sample", "2") == EXIT_OK
    first = billed_ids(simulator)
    sent = [i for i in first if i.startswith("rv")]
    assert len(sent) == 2 and set(sent) <= {"rv0", "rv2", "rv4"}
    assert project.build() == EXIT_OK
    rest = billed_ids(simulator)[len(first) :]
    assert sorted(sent + rest) == ["rv0", "rv2", "rv4"]
    assert table_ids(project) == ["rv0", "rv2", "rv4"]


def test_a_step_filters_its_upstream_answers(tmp_path: Path, simulator) -> None:
    from test_data_answers import SCHEMA_TEMPLATE
    from test_data_steps import STEP

    step = {**STEP, "where": "sentiment == 'negative'"}
    project = data_project(tmp_path, moods_csv(), request=SCHEMA_TEMPLATE, extra=[step])
    assert project.build() == EXIT_OK
    with open(project.out / "sentiment.csv", newline="", encoding="utf-8") as f:
        negative = [r["review_id"] for r in csv.DictReader(f) if r["sentiment"] == "negative"]
    assert 0 < len(negative) < 6, negative  # the simulator's answers: some of each
    replies = sorted(i for i in billed_ids(simulator) if i.startswith("reply:"))
    assert replies == sorted(f"reply:{i}" for i in negative)
    assert table_ids(project, "reply") == negative
