"""The Python API (`gptbatch.load`): build, status and results, on the same engine as the CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from buildkit import billed_ids, chat, make_project, write_jsonl

import gptbatch
from gptbatch.errors import ConfigError, UsageError


def test_load_build_and_read_results_in_input_order(tmp_path: Path, simulator) -> None:
    reqs = [chat(f"r{i}") for i in range(5)]
    made = make_project(tmp_path, {"a.jsonl": reqs, "b.jsonl": [chat("b0")]})
    project = gptbatch.load(made.config)
    events: list[tuple[str, dict[str, Any]]] = []

    summary = project.build(progress=lambda kind, fields: events.append((kind, fields)))

    assert (summary.total, summary.ok, summary.pending, summary.exit_code) == (6, 6, 0, 0)
    kinds = [k for k, _ in events]
    assert {"input", "start", "submitted", "collected"} <= set(kinds) and "summary" in kinds
    assert [r["custom_id"] for r in project.results("a.jsonl")] == [f"r{i}" for i in range(5)]
    assert [r["custom_id"] for r in project.results("inputs/b.jsonl")] == ["b0"]
    assert all(r["response"]["status_code"] == 200 for r in project.results("a"))
    assert list(project.errors("a.jsonl")) == []
    status = project.status()
    assert (status.ok, status.pending, status.exit_code) == (6, 0, 0)

    # Again: nothing is sent; one edited line: one request is billed.
    assert project.build().submitted == 0
    reqs[2] = chat("r2", "edited")
    write_jsonl(made.input("a.jsonl"), reqs)
    assert project.status().pending == 1
    assert project.build().submitted == 1
    assert sorted(billed_ids(simulator)) == sorted([*(f"r{i}" for i in range(5)), "b0", "r2"])


def test_a_rehearsal_and_max_cost_as_the_flags(tmp_path: Path) -> None:
    made = make_project(tmp_path, {"a.jsonl": [chat("x"), chat("y")]})
    project = gptbatch.load(made.config, simulate=True)
    assert project.output_dir == tmp_path / "out-simulated"

    capped = project.build(max_cost=0.0000001)
    assert capped.submitted == 0 and capped.stopped_by_cost and capped.pending == 2

    done = project.build()
    assert done.ok == 2 and [r["custom_id"] for r in project.results("a.jsonl")] == ["x", "y"]
    assert not (tmp_path / "out").exists()  # a rehearsal never writes the real outputs


def test_bad_names_and_configs_raise_the_cli_errors(tmp_path: Path) -> None:
    made = make_project(tmp_path, {"a.jsonl": [chat("x")]})
    project = gptbatch.load(made.config)
    assert list(project.results("a.jsonl")) == []  # not built yet: nothing, no error
    with pytest.raises(UsageError, match=r"nope\.jsonl: not an input of batch\.yaml"):
        list(project.results("nope.jsonl"))
    (tmp_path / "bad.yaml").write_text("version: 1\ninputs: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml"):
        gptbatch.load(tmp_path / "bad.yaml")


def test_answers_of_a_data_target_and_a_request_file(tmp_path: Path, simulator) -> None:
    from test_data_answers import SCHEMA, SCHEMA_TEMPLATE
    from test_data_targets import data_project, reviews

    made = data_project(tmp_path, request=SCHEMA_TEMPLATE)
    project = gptbatch.load(made.config)
    assert project.inputs() == ["sentiment", str(made.input("extra.jsonl"))]
    assert list(project.answers("sentiment")) == []  # nothing built yet
    assert project.build().ok == 9

    rows = list(project.answers("sentiment"))
    assert [r["review_id"] for r in rows] == [f"rv{i}" for i in range(6)]
    for row in rows:  # the data row's columns, the answer, one column per schema property
        assert set(SCHEMA["properties"]) <= set(row) and row["answer"]
        assert row["text"].startswith("Review number")
    plain = list(project.answers("extra.jsonl"))
    assert [a["custom_id"] for a in plain] == ["x0", "x1", "x2"]
    assert all(a["answer"] and a["error"] is None for a in plain)

    (tmp_path / "data" / "reviews.csv").write_text(reviews(edit={4: "Broke on day one"}))
    assert project.build().submitted == 1
    assert billed_ids(simulator).count("rv4") == 2 and billed_ids(simulator).count("rv3") == 1
    assert [r["text"] for r in project.answers("sentiment")][4] == "Broke on day one"


def test_dataframe_needs_pandas_or_says_so(tmp_path: Path, simulator) -> None:
    made = make_project(tmp_path, {"a.jsonl": [chat("x"), chat("y")]})
    project = gptbatch.load(made.config)
    project.build()
    try:
        import pandas  # noqa: F401
    except ImportError:
        with pytest.raises(UsageError, match="pip install pandas"):
            project.dataframe("a.jsonl")
    else:
        frame = project.dataframe("a.jsonl")
        assert list(frame["custom_id"]) == ["x", "y"] and frame["answer"].notna().all()


def test_build_runs_steps_in_rounds_as_the_cli_does(tmp_path: Path, simulator) -> None:
    from test_data_answers import SCHEMA_TEMPLATE
    from test_data_steps import IDS, STEP
    from test_data_targets import data_project, reviews

    made = data_project(tmp_path, request=SCHEMA_TEMPLATE, extra=[STEP])
    project = gptbatch.load(made.config, simulate=False)
    assert project.build().pending == 0
    assert [r["review_id"] for r in project.answers("reply")] == IDS
    billed = len(billed_ids(simulator))
    (tmp_path / "data" / "reviews.csv").write_text(reviews(edit={3: "Changed my mind: awful"}))
    summary = project.build()  # round 1: rv3; round 2: its step's row
    assert summary.pending == 0 and billed_ids(simulator)[billed:] == ["rv3", "reply:rv3"]
    assert project.build().submitted == 0 and len(billed_ids(simulator)) == billed + 2
