"""The collector's read-ahead (engine/prepared.py): result files prepared on a worker process
give the same results, outputs, retries and usage as files read in the collector."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from buildkit import billed_twice, make_project, padded_chat

from gptbatch.engine import prepared, submit
from gptbatch.simulator import Fault

MODEL = "gpt-4o-mini"
LIMIT = 2_000


def _answers(records: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """What a result says, without the ids each simulator run draws anew."""
    out = []
    for r in records:
        body = (r.get("response") or {}).get("body") or {}
        choices = body.get("choices") or [{}]
        out.append(
            (
                r["custom_id"],
                (r.get("response") or {}).get("status_code"),
                choices[0].get("message", {}).get("content"),
                json.dumps(body.get("usage"), sort_keys=True),
                json.dumps(r.get("error"), sort_keys=True),
            )
        )
    return out


def _build(tmp_path: Path, simulator_factory, capsys) -> tuple[Any, ...]:
    sim = simulator_factory(
        token_limits={MODEL: LIMIT},
        faults=(
            Fault.request_error("r1*", status=500, attempts=1),  # retried, then ok
            Fault.request_error("r2*", status=400, message="Nope."),  # failed for good
        ),
    )
    reqs = [padded_chat(f"r{i}") for i in range(60)]
    project = make_project(tmp_path, {"requests.jsonl": reqs}, limits={"enqueued_tokens": LIMIT})
    capsys.readouterr()
    code = project.build()
    summary = [line for line in capsys.readouterr().out.splitlines() if "so far:" in line]
    assert all(cid.startswith("r1") for cid in billed_twice(sim))  # only the retried
    work = project.out / ".gptbatch"
    for leftover in ("downloads", "shards"):  # removed once collected (on the download thread)
        assert not [p for p in (work / leftover).glob("*") if p.is_file()], leftover
    return code, _answers(project.output()), _answers(project.errors()), summary


_REAL_PREPARE = prepared.prepare


def _counted(path: str, zdict: bytes, prices: Any) -> list[prepared.Prepared]:
    """prepare, noting each file in a log: the worker is another process."""
    with open(os.environ["TEST_PREPARED_LOG"], "a") as f:
        f.write(path + "\n")
    return _REAL_PREPARE(path, zdict, prices)


@pytest.mark.timeout(120)
def test_read_ahead_records_what_the_collector_would(
    tmp_path: Path, simulator_factory, capsys, monkeypatch
) -> None:
    used = tmp_path / "prepared.txt"
    monkeypatch.setenv("TEST_PREPARED_LOG", str(used))
    monkeypatch.setattr(prepared, "prepare", _counted)
    monkeypatch.setattr(prepared, "PREPARE_MIN_LINES", 0)
    ahead = _build(tmp_path / "ahead", simulator_factory, capsys)
    files = used.read_text().splitlines()
    assert len(files) >= 3, files  # every batch after the first, which chose the dictionary

    monkeypatch.setenv("GPTBATCH_WORKERS", "1")  # the read-ahead off: read in the collector
    used.unlink()
    plain = _build(tmp_path / "plain", simulator_factory, capsys)
    assert not used.exists()

    assert ahead[0] == plain[0]  # the same exit (some requests failed for good)
    assert ahead[1] == plain[1]  # outputs, in input order, with what each answer said
    assert ahead[2] == plain[2]  # the errors file: the failed-for-good requests
    assert len(plain[2]) == 11 and all(e[0].startswith("r2") for e in plain[2])
    assert ahead[3] == plain[3] and ahead[3]  # usage and cost totals alike


_REAL_WRITE = submit.write_from_state


def _logged_write(state: str, shard_id: str, path: str, model: Any, endpoint: Any) -> str:
    """write_from_state, noting each shard in a log: the worker is another process."""
    with open(os.environ["TEST_PREPARED_LOG"], "a") as f:
        f.write(shard_id + "\n")
    return _REAL_WRITE(state, shard_id, path, model, endpoint)


def _uploads(sim: Any) -> tuple[int, list[bytes]]:
    """How many files went up, and every line uploaded (which shard holds a line depends on
    when batches finished, so lines are compared, not files)."""
    files = [
        sim.service.file_content(f["id"]) for f in sim.service.files() if f["purpose"] == "batch"
    ]
    for f in files:  # each file holds its shard's requests in input order, as planned
        order = [int(json.loads(line)["custom_id"][1:]) for line in f.splitlines()]
        assert order == sorted(order)
    return len(files), sorted(line for f in files for line in f.splitlines())


@pytest.mark.timeout(120)
def test_shard_files_written_ahead_are_the_files_the_submitter_writes(
    tmp_path: Path, simulator_factory, monkeypatch
) -> None:
    used = tmp_path / "written.txt"
    monkeypatch.setenv("TEST_PREPARED_LOG", str(used))
    monkeypatch.setattr(submit, "write_from_state", _logged_write)
    monkeypatch.setattr(submit, "AHEAD_MIN_REQUESTS", 0)
    reqs = [padded_chat(f"r{i}") for i in range(40)]
    uploads = []
    for name in ("ahead", "plain"):
        if name == "plain":
            monkeypatch.setenv("GPTBATCH_WORKERS", "1")
        sim = simulator_factory(token_limits={MODEL: LIMIT})
        project = make_project(
            tmp_path / name, {"requests.jsonl": reqs}, limits={"enqueued_tokens": LIMIT}
        )
        assert project.build() == 0
        assert billed_twice(sim) == []
        assert [o["custom_id"] for o in project.output()] == [r["custom_id"] for r in reqs]
        uploads.append(_uploads(sim))
        if name == "ahead":
            assert len(used.read_text().splitlines()) >= 3  # the worker wrote them
            used.unlink()
    assert not used.exists()  # none without the worker
    assert uploads[0][1] == uploads[1][1]  # each line byte for byte, each uploaded once
    assert len(uploads[0][1]) == len(reqs) and uploads[0][0] > 3


# The build as a program, with the read-ahead on for batches and shards of any size.
_EVERY_SIZE = """
import runpy, sys
from gptbatch.engine import prepared, submit
prepared.PREPARE_MIN_LINES = 0
submit.AHEAD_MIN_REQUESTS = 0
sys.argv = ["gptbatch", *sys.argv[1:]]
runpy.run_module("gptbatch", run_name="__main__", alter_sys=True)
"""


@pytest.mark.timeout(120)
def test_ctrl_c_with_the_workers_busy_is_one_message_and_the_resume_pays_once(
    tmp_path: Path, simulator_factory
) -> None:
    import signal
    import subprocess
    import sys

    from buildkit import REPO

    sim = simulator_factory(token_limits={MODEL: LIMIT})
    reqs = [padded_chat(f"r{i}") for i in range(60)]
    project = make_project(tmp_path, {"requests.jsonl": reqs}, limits={"enqueued_tokens": LIMIT})
    cmd = [sys.executable, "-c", _EVERY_SIZE, "build", str(project.config), "--json"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env
    )
    assert proc.stdout is not None
    collected = 0
    for line in proc.stdout:
        if json.loads(line)["event"] == "collected":
            collected += 1
            if collected == 2:  # a batch read ahead is recorded: the workers are up
                break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=60)
    assert again.returncode == 0, again.stderr
    assert billed_twice(sim) == []
    assert [o["custom_id"] for o in project.output()] == [r["custom_id"] for r in reqs]
