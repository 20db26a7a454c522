"""A no-op build does not trust the output files: one edited, truncated or deleted since the
last build wrote it is written again (and status says it is not up to date)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from buildkit import chat, creates, make_project

from gptbatch.cli import main
from gptbatch.errors import EXIT_FAILED_REQUESTS, EXIT_OK, EXIT_PENDING
from gptbatch.simulator import Fault


def test_a_truncated_output_is_written_again(tmp_path: Path, simulator, capsys) -> None:
    reqs = [chat(f"r{i}") for i in range(20)]
    project = make_project(tmp_path, {"requests.jsonl": reqs})
    assert project.build() == EXIT_OK
    out = project.out / "requests.jsonl"
    written = out.read_bytes()
    sent = creates(simulator)

    out.write_bytes(b"")  # truncated
    capsys.readouterr()
    assert project.cli("status", "--explain") == EXIT_PENDING  # was "up to date", exit 0
    text = capsys.readouterr().out
    assert "not up to date" in text and "requests.jsonl" in text and "truncated" in text
    assert project.cli("status", "--json") == EXIT_PENDING
    doc = json.loads(capsys.readouterr().out)
    assert [o["path"] for o in doc["stale_outputs"]] == [str(out)]

    assert project.build() == EXIT_OK
    assert out.read_bytes() == written  # was left empty while "20 results" was reported
    assert creates(simulator) == sent  # from the store: nothing asked of the API
    assert project.cli("status") == EXIT_OK

    out.write_bytes(written[: len(written) // 2])  # half of it, then a deletion
    assert project.build() == EXIT_OK and out.read_bytes() == written
    out.unlink()
    assert project.build() == EXIT_OK and out.read_bytes() == written


def test_an_output_touched_but_unchanged_is_left_alone(tmp_path: Path, simulator) -> None:
    project = make_project(tmp_path, {"requests.jsonl": [chat("a"), chat("b")]})
    assert project.build() == EXIT_OK
    out = project.out / "requests.jsonl"
    st = out.stat()
    os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert project.cli("status") == EXIT_OK  # same content: up to date
    assert project.build() == EXIT_OK
    assert out.stat().st_ino == st.st_ino  # not rewritten


def test_an_edited_errors_file_is_written_again(tmp_path: Path, simulator, capsys) -> None:
    simulator.add_fault(Fault.request_error("bad", status=400))
    project = make_project(tmp_path, {"requests.jsonl": [chat("ok"), chat("bad")]})
    assert project.build() == EXIT_FAILED_REQUESTS
    errors = project.out / "requests.errors.jsonl"
    written = errors.read_bytes()

    errors.unlink()
    capsys.readouterr()
    assert project.cli("status") == EXIT_PENDING
    assert "requests.errors.jsonl" in capsys.readouterr().out
    assert project.build() == EXIT_FAILED_REQUESTS
    assert errors.read_bytes() == written

    errors.write_bytes(b'{"custom_id": "someone else"}\n')
    assert project.build() == EXIT_FAILED_REQUESTS
    assert errors.read_bytes() == written
    assert main(["status", str(project.config)]) == EXIT_FAILED_REQUESTS
