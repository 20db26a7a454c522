"""`gptbatch status` works like `make -q`: exit codes before a build, after an edit, when done."""

from __future__ import annotations

import json
import os
from pathlib import Path

from buildkit import chat, make_project, write_jsonl

from gptbatch.errors import EXIT_FAILED_REQUESTS, EXIT_OK, EXIT_PENDING
from gptbatch.simulator import Fault


def status_json(project, capsys) -> tuple[int, dict]:
    capsys.readouterr()
    code = project.cli("status", "--json")
    return code, json.loads(capsys.readouterr().out)


def test_status_before_the_first_build_is_pending_and_writes_nothing(tmp_path: Path, capsys):
    project = make_project(tmp_path, {"requests.jsonl": [chat(f"r{i}") for i in range(4)]})
    code, doc = status_json(project, capsys)
    assert code == EXIT_PENDING
    assert doc["counts"] == {"total": 4, "ok": 0, "failed": 0, "pending": 4, "in_shards": 0}
    assert doc["built"] is False and doc["up_to_date"] is False
    assert not project.out.exists()  # no network, no state created
    capsys.readouterr()
    assert project.cli("status", "--explain") == EXIT_PENDING
    out = capsys.readouterr().out
    assert "nothing built yet" in out and out.count("new request: never built") == 4


def test_status_follows_edits_made_since_the_last_build(tmp_path: Path, simulator, capsys):
    reqs = [chat(f"r{i}") for i in range(5)]
    project = make_project(tmp_path, {"requests.jsonl": reqs})
    assert project.build() == EXIT_OK
    code, doc = status_json(project, capsys)
    assert code == EXIT_OK and doc["counts"]["ok"] == 5 and doc["up_to_date"]

    # Touched but unchanged: the stat differs, the hash does not: still up to date.
    st = os.stat(project.input())
    os.utime(project.input(), ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    code, doc = status_json(project, capsys)
    assert code == EXIT_OK and doc["stale_inputs"] == []

    reqs[2] = chat("r2", "An edited question.")
    write_jsonl(project.input(), [*reqs, chat("r5")])
    code, doc = status_json(project, capsys)
    assert code == EXIT_PENDING
    assert doc["counts"]["total"] == 6 and doc["counts"]["ok"] == 4
    assert doc["counts"]["pending"] == 2
    assert doc["stale_inputs"][0]["reason"] == "file changed since the last build"
    capsys.readouterr()
    assert project.cli("status") == EXIT_PENDING
    assert "not up to date: 4 of 6 requests done" in capsys.readouterr().out

    assert project.build() == EXIT_OK
    code, _ = status_json(project, capsys)
    assert code == EXIT_OK


def test_status_exit_4_when_built_but_some_failed_for_good(tmp_path: Path, simulator, capsys):
    simulator.add_fault(Fault.request_error("bad", status=400))
    project = make_project(tmp_path, {"requests.jsonl": [chat("ok"), chat("bad")]})
    assert project.build() == EXIT_FAILED_REQUESTS
    code, doc = status_json(project, capsys)
    assert code == EXIT_FAILED_REQUESTS
    assert doc["counts"]["failed"] == 1 and doc["counts"]["pending"] == 0


def test_plan_says_what_build_would_send_now_beside_the_whole_workload(
    tmp_path: Path, simulator, capsys
) -> None:
    reqs = [chat(f"r{i}") for i in range(5)]
    project = make_project(tmp_path, {"requests.jsonl": reqs})
    capsys.readouterr()
    assert project.cli("plan", "--json") == EXIT_OK
    assert json.loads(capsys.readouterr().out)["totals"]["requests"] == 5  # nothing built yet
    assert project.build() == EXIT_OK
    write_jsonl(project.input(), [*reqs, chat("n1"), chat("n2")])
    capsys.readouterr()
    assert project.cli("plan", "--json") == EXIT_OK
    doc = json.loads(capsys.readouterr().out)
    assert doc["totals"]["requests"] == 2 and doc["totals"]["shards"] == 1
    assert doc["workload"]["requests"] == 7
    assert project.cli("plan") == EXIT_OK
    out = capsys.readouterr().out
    assert "what `build` would send now" in out
    assert "whole workload: 7 requests" in out and "5 of them done or in flight" in out
    assert project.cli("plan", "--all", "--json") == EXIT_OK
    assert json.loads(capsys.readouterr().out)["totals"]["requests"] == 7


def test_status_remote_asks_the_api_about_batches_in_flight(
    tmp_path: Path, simulator_factory, capsys
) -> None:
    sim = simulator_factory(time_scale=0.0)  # frozen: the batch stays in flight
    project = make_project(tmp_path, {"requests.jsonl": [chat("a"), chat("b")]})
    assert project.build("--no-wait") == EXIT_PENDING
    (batch,) = sim.service.batches()
    capsys.readouterr()
    assert project.cli("status", "--remote") == EXIT_PENDING
    assert f"batch {batch['id']} at the API: validating (" in capsys.readouterr().out
    assert project.cli("status", "--remote", "--json") == EXIT_PENDING
    doc = json.loads(capsys.readouterr().out)
    assert doc["remote"][batch["id"]]["status"] == "validating"
    # Plain status stays offline: no API call.
    calls = len(sim.journal.calls)
    assert project.cli("status") == EXIT_PENDING
    assert len(sim.journal.calls) == calls
