"""`gptbatch build` end to end against the simulator: outputs, no-op rebuilds, edits."""

from __future__ import annotations

import json
import os
from pathlib import Path

from buildkit import batch_count, billed_ids, chat, creates, make_project, write_jsonl

from gptbatch.errors import EXIT_OK
from gptbatch.simulator import request_digest


def test_build_writes_results_in_input_order(tmp_path: Path, simulator) -> None:
    reqs = [chat(f"r{i}") for i in range(30)]
    project = make_project(tmp_path, {"requests.jsonl": reqs})
    assert project.build() == EXIT_OK
    out = project.output()
    assert [o["custom_id"] for o in out] == [r["custom_id"] for r in reqs]
    for o, r in zip(out, reqs, strict=True):
        assert o["response"]["status_code"] == 200
        # each result belongs to its request: the simulator echoes a digest of the body
        assert request_digest(r["body"]) in json.dumps(o["response"]["body"])
    assert sorted(billed_ids(simulator)) == sorted(r["custom_id"] for r in reqs)
    assert project.errors() == []


def test_second_build_submits_nothing(tmp_path: Path, simulator) -> None:
    project = make_project(tmp_path, {"requests.jsonl": [chat(f"r{i}") for i in range(10)]})
    assert project.build() == EXIT_OK
    calls_before = len(simulator.journal.calls)
    before = project.output()
    assert project.build() == EXIT_OK
    assert creates(simulator) == 1
    # A no-op build makes no API call at all: nothing in flight, nothing pending.
    assert len(simulator.journal.calls) == calls_before
    assert project.output() == before


def test_one_line_edit_rebuilds_exactly_that_request(tmp_path: Path, simulator) -> None:
    reqs = [chat(f"r{i}") for i in range(20)]
    project = make_project(tmp_path, {"requests.jsonl": reqs})
    assert project.build() == EXIT_OK
    reqs[7] = chat("r7", "A different question entirely.")
    write_jsonl(project.input(), reqs)
    assert project.build() == EXIT_OK
    counts = simulator.journal.billed_counts()
    assert counts["r7"] == 2
    assert all(n == 1 for cid, n in counts.items() if cid != "r7")
    out = project.output()
    assert request_digest(reqs[7]["body"]) in json.dumps(out[7]["response"]["body"])


def test_reorder_rebuilds_nothing_and_delete_drops_result(tmp_path: Path, simulator) -> None:
    reqs = [chat(f"r{i}") for i in range(12)]
    project = make_project(tmp_path, {"requests.jsonl": reqs})
    assert project.build() == EXIT_OK
    reordered = list(reversed(reqs))
    # key order and whitespace inside a line do not matter either
    write_jsonl(project.input(), [json.loads(json.dumps(r, sort_keys=True)) for r in reordered])
    assert project.build() == EXIT_OK
    assert batch_count(simulator) == 1
    assert [o["custom_id"] for o in project.output()] == [r["custom_id"] for r in reordered]
    write_jsonl(project.input(), reordered[1:])
    assert project.build() == EXIT_OK
    assert batch_count(simulator) == 1
    assert [o["custom_id"] for o in project.output()] == [r["custom_id"] for r in reordered[1:]]


def test_append_builds_only_new_requests(tmp_path: Path, simulator) -> None:
    reqs = [chat(f"r{i}") for i in range(10)]
    project = make_project(tmp_path, {"requests.jsonl": reqs})
    assert project.build() == EXIT_OK
    reqs += [chat(f"n{i}") for i in range(5)]
    write_jsonl(project.input(), reqs)
    assert project.build() == EXIT_OK
    assert batch_count(simulator) == 2
    assert max(simulator.journal.billed_counts().values()) == 1
    assert len(project.output()) == 15


def test_config_model_change_rebuilds_the_requests_it_fills(tmp_path: Path, simulator) -> None:
    reqs = [chat(f"r{i}") for i in range(5)]
    for r in reqs[:3]:
        del r["body"]["model"]  # filled from batch.yaml
    project = make_project(tmp_path, {"requests.jsonl": reqs}, model="gpt-4o-mini")
    assert project.build() == EXIT_OK
    text = project.config.read_text().replace("model: gpt-4o-mini", "model: gpt-4.1-mini")
    for r in reqs[3:]:
        r["body"]["model"] = "gpt-4.1-mini"  # the same model as the config, so no conflict
    write_jsonl(project.input(), reqs)
    project.config.write_text(text)
    assert project.build() == EXIT_OK
    counts = simulator.journal.billed_counts()
    assert all(counts[f"r{i}"] == 2 for i in range(5))
    assert {o["response"]["body"]["model"] for o in project.output()} == {"gpt-4.1-mini"}


def test_unchanged_inputs_are_not_read_again(tmp_path: Path, simulator, capsys) -> None:
    project = make_project(tmp_path, {"requests.jsonl": [chat(f"r{i}") for i in range(4)]})
    assert project.build("--json") == EXIT_OK
    capsys.readouterr()

    def input_states() -> list[str]:
        events = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
        return [e["state"] for e in events if e["event"] == "input"]

    assert project.build("--json") == EXIT_OK
    assert input_states() == ["unchanged (size and mtime)"]
    os.utime(project.input(), None)  # same bytes, new mtime: hashed, not parsed
    assert project.build("--json") == EXIT_OK
    assert input_states() == ["unchanged (content hash)"]
    assert project.build("--json") == EXIT_OK
    assert input_states() == ["unchanged (size and mtime)"]


def test_batch_cancelled_from_outside_keeps_results_and_rebuilds_the_rest(
    tmp_path: Path, simulator_factory
) -> None:
    from gptbatch.simulator import Fault

    sim = simulator_factory()
    sim.add_fault(Fault.batch_cancel(after_requests=3))
    reqs = [chat(f"r{i}") for i in range(10)]
    project = make_project(tmp_path, {"requests.jsonl": reqs})
    assert project.build() == EXIT_OK
    statuses = [b["status"] for b in sim.service.batches()]
    assert "cancelled" in statuses and batch_count(sim) == 2
    assert max(sim.journal.billed_counts().values()) == 1
    assert [o["custom_id"] for o in project.output()] == [r["custom_id"] for r in reqs]
