"""`gptbatch status --explain`: every pending request named, with why it is pending."""

from __future__ import annotations

from pathlib import Path

import pytest
from buildkit import Project, batch_members, chat, make_project, padded_chat, write_jsonl

from gptbatch.errors import EXIT_OK, EXIT_PENDING

VALIDATING = 10.0  # SimConfig.fast()'s validating_seconds


def explain(project: Project, capsys) -> dict[str, str]:
    """custom_id -> the line `status --explain --limit 0` prints for it."""
    capsys.readouterr()
    assert project.cli("status", "--explain", "--limit", "0") == EXIT_PENDING
    out = capsys.readouterr().out
    lines: dict[str, str] = {}
    for line in out.splitlines():
        for part in line.split(": ")[1:2]:
            lines.setdefault(part, line)
    return lines


def reason_of(lines: dict[str, str], project: Project, custom_id: str) -> str:
    assert custom_id in lines, f"{custom_id} is not named in:\n" + "\n".join(lines.values())
    line = lines[custom_id]
    assert line.startswith(str(project.input()) + ":"), line  # located in its input file
    return line


@pytest.mark.timeout(30)
def test_explain_in_flight_and_queued_shards(tmp_path: Path, simulator_factory, capsys) -> None:
    sim = simulator_factory(time_scale=0.0)  # frozen: only the test moves the clock
    reqs = [padded_chat(f"r{i}") for i in range(8)]
    # ~400-token shards of 4 requests; the budget (500 * 0.9) holds one at a time.
    project = make_project(
        tmp_path,
        {"requests.jsonl": reqs},
        limits={"enqueued_tokens": 500, "max_requests_per_batch": 4, "pipeline": 1},
    )
    assert project.build("--no-wait") == EXIT_PENDING
    sim.clock.advance(VALIDATING + 0.01)  # in_progress, barely started
    assert project.build("--no-wait") == EXIT_PENDING  # sees the batch in_progress

    (batch,) = sim.service.batches()
    assert batch["status"] == "in_progress"
    shard = batch["metadata"]["gptbatch_shard"]
    sent = {r["custom_id"] for r in batch_members(sim)[batch["id"]]}
    lines = explain(project, capsys)
    for r in reqs:
        line = reason_of(lines, project, r["custom_id"])
        if r["custom_id"] in sent:
            assert f"in shard {shard[:12]}" in line
            assert batch["id"] in line and "in_progress" in line
        else:
            assert "in shard" in line and "queue room" in line


@pytest.mark.timeout(30)
def test_explain_new_and_changed_requests_after_an_edit(tmp_path: Path, simulator, capsys) -> None:
    reqs = [chat(f"r{i}") for i in range(5)]
    project = make_project(tmp_path, {"requests.jsonl": reqs})
    assert project.build() == EXIT_OK
    reqs[3] = chat("r3", "Another question.")
    write_jsonl(project.input(), [*reqs, chat("n0")])

    lines = explain(project, capsys)
    assert "new request" in reason_of(lines, project, "n0")
    assert "changed" in reason_of(lines, project, "r3")
    for cid in ("r0", "r1", "r2", "r4"):
        assert cid not in lines  # up to date: not pending


@pytest.mark.timeout(30)
def test_explain_config_model_change(tmp_path: Path, simulator, capsys) -> None:
    reqs = [chat(f"r{i}") for i in range(4)]
    for r in reqs:
        del r["body"]["model"]  # filled from batch.yaml
    project = make_project(tmp_path, {"requests.jsonl": reqs}, model="gpt-4o-mini")
    assert project.build() == EXIT_OK
    text = project.config.read_text()
    project.config.write_text(text.replace("model: gpt-4o-mini", "model: gpt-4.1-mini"))

    lines = explain(project, capsys)
    for cid in ("r0", "r1", "r2", "r3"):
        assert "model or endpoint in batch.yaml changed" in reason_of(lines, project, cid)


@pytest.mark.timeout(30)
def test_explain_retried_requests(tmp_path: Path, simulator_factory, capsys) -> None:
    sim = simulator_factory(time_scale=0.0)
    reqs = [chat(f"r{i}") for i in range(3)]
    project = make_project(tmp_path, {"requests.jsonl": reqs})
    assert project.build("--no-wait") == EXIT_PENDING
    (first,) = sim.service.batches()
    sim.fail_batch(first["id"], "server_error")
    assert project.build("--no-wait") == EXIT_PENDING  # collects the failure, resubmits

    lines = explain(project, capsys)
    for r in reqs:
        line = reason_of(lines, project, r["custom_id"])
        assert "attempt 1" in line and "retried" in line, line


@pytest.mark.timeout(30)
def test_explain_names_inputs_relative_to_the_working_directory(
    tmp_path: Path, simulator, capsys, monkeypatch
) -> None:
    project = make_project(tmp_path, {"requests.jsonl": [chat("r0")]})
    assert project.build() == EXIT_OK
    write_jsonl(project.input(), [chat("r0"), chat("n0")])
    monkeypatch.chdir(tmp_path)
    lines = explain(project, capsys)
    assert lines["n0"].startswith("inputs/requests.jsonl:2: n0: "), lines["n0"]
