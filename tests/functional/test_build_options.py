"""build --force, --retry-failed, input targets and --max-cost."""

from __future__ import annotations

from pathlib import Path

from buildkit import billed_ids, chat, creates, make_project

from gptbatch.cli import main
from gptbatch.errors import EXIT_BAD_INPUT, EXIT_FAILED_REQUESTS, EXIT_OK, EXIT_PENDING
from gptbatch.simulator import Fault


def test_force_sends_every_request_again(tmp_path: Path, simulator) -> None:
    reqs = [chat(f"r{i}") for i in range(4)]
    project = make_project(tmp_path, {"requests.jsonl": reqs})
    assert project.build() == EXIT_OK
    assert project.build() == EXIT_OK and len(billed_ids(simulator)) == 4  # no-op
    assert project.build("--force") == EXIT_OK
    assert sorted(simulator.journal.billed_counts().values()) == [2, 2, 2, 2]
    assert [o["custom_id"] for o in project.output()] == [r["custom_id"] for r in reqs]
    assert project.build() == EXIT_OK and len(billed_ids(simulator)) == 8  # up to date again


def test_retry_failed_gives_failed_requests_another_round(tmp_path: Path, simulator) -> None:
    simulator.add_fault(Fault.request_error("bad", status=400, attempts=1))  # fails once only
    project = make_project(tmp_path, {"requests.jsonl": [chat("ok"), chat("bad")]})
    assert project.build() == EXIT_FAILED_REQUESTS
    assert [e["custom_id"] for e in project.errors()] == ["bad"]
    assert project.build() == EXIT_FAILED_REQUESTS  # failed for good: not retried by itself
    assert simulator.journal.billed_counts().get("bad", 0) == 0
    assert project.build("--retry-failed") == EXIT_OK
    assert simulator.journal.billed_counts() == {"ok": 1, "bad": 1}
    assert project.errors() == []
    assert [o["custom_id"] for o in project.output()] == ["ok", "bad"]


def test_building_only_some_inputs(tmp_path: Path, simulator, capsys) -> None:
    project = make_project(tmp_path, {"a.jsonl": [chat("a1"), chat("a2")], "b.jsonl": [chat("b1")]})
    assert project.build(str(project.input("b.jsonl"))) == EXIT_OK
    assert sorted(billed_ids(simulator)) == ["b1"]
    assert (project.out / "b.jsonl").exists() and not (project.out / "a.jsonl").exists()
    capsys.readouterr()
    assert project.build(str(tmp_path / "elsewhere.jsonl")) == EXIT_BAD_INPUT
    assert "not an input of batch.yaml" in capsys.readouterr().err
    assert project.build() == EXIT_OK
    assert sorted(billed_ids(simulator)) == ["a1", "a2", "b1"]  # b1 not billed again


def test_max_cost_on_the_command_line_stops_submission(tmp_path: Path, simulator, capsys) -> None:
    project = make_project(tmp_path, {"requests.jsonl": [chat(f"r{i}") for i in range(3)]})
    capsys.readouterr()
    assert project.build("--max-cost", "0.0000001") == EXIT_PENDING
    assert creates(simulator) == 0
    assert "spend cap reached" in capsys.readouterr().out
    assert main(["build", str(project.config), "--max-cost", "nan"]) == EXIT_BAD_INPUT
