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
