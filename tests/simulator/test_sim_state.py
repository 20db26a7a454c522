"""A simulator on a state directory: restarts (clean or kill -9) continue where it stopped."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from simtools import START, chat, client, fixed_entropy, jsonl, manual_service, submit, upload

from gptbatch.cli import main
from gptbatch.simulator import BatchService, Fault, SimConfig, Simulator
from gptbatch.simulator.state import SimStateError


def snapshot(service: BatchService) -> dict[str, Any]:
    """Everything a client or a test can see: files with contents, batches, billing, events."""
    files = service.files()
    return {
        "files": files,
        "contents": {f["id"]: service.file_content(f["id"]) for f in files},
        "batches": service.batches(),
        "billed": service.journal.billed,
        "events": service.journal.events,
    }


def reopen(service: BatchService, **overrides: Any) -> BatchService:
    """Close a service and start a new one on the same state directory (and config)."""
    service.close()
    return BatchService(service.config.replace(**overrides))


def state_service(directory: Path, **overrides: Any) -> BatchService:
    return manual_service(state_dir=str(directory), **overrides)


def test_a_restart_restores_everything_and_results_stay_identical(tmp_path) -> None:
    first = state_service(tmp_path / "state", total_tokens_per_second=150.0)
    lines = [chat(f"r{i}", f"text {i} " * (4 * i + 1)) for i in range(8)]
    finished = submit(first, lines[:3])
    first.clock.advance(200)
    first.set_token_limit("gpt-4o", 5)  # changed at run time
    first.add_fault(Fault.request_error("r5", status=500))
    running = submit(first, lines, metadata={"shard": "2", "odd": "\ud800"})
    cancelled = submit(first, lines)
    expired = submit(first, lines[3:])
    spare = first.create_file("notes.txt", "user_data", b"keep me")
    first.delete_file(first.create_file("gone.jsonl", "batch", jsonl(lines))["id"])
    first.clock.advance(10.5)
    first.cancel_batch(cancelled["id"])
    first.expire_batch(expired["id"])
    over_limit = submit(first, [chat("x", model="gpt-4o")])
    for _ in range(20):  # a client polling while requests finish
        first.clock.advance(0.1187)
        first.batches()
    before = snapshot(first)
    assert first.batch(finished["id"])["status"] == "completed"
    assert first.batch(running["id"])["request_counts"]["completed"] > 0  # mid-flight
    assert first.batch(running["id"])["status"] == "in_progress"

    second = reopen(first)
    assert second.saved_time == first.now()
    assert snapshot(second) == before
    assert second.file_content(spare["id"]) == b"keep me"
    for service in (first, second):  # the original runs on in memory: the restart must match
        service.clock.advance(10_000)
    assert snapshot(second) == snapshot(first)
    assert second.batch(running["id"])["status"] == "completed"
    assert second.batch(running["id"])["error_file_id"] is not None  # r5 kept failing
    assert second.batch(over_limit["id"])["status"] == "failed"
    second.close()


def test_a_kill_leaves_every_acknowledged_state_and_the_time_clients_saw(tmp_path) -> None:
    live = state_service(tmp_path / "live")
    batch = submit(live, [chat("a"), chat("b")])
    live.clock.advance(1000)
    assert live.batch(batch["id"])["status"] == "completed"  # a client saw it completed
    live.clock.advance(5000)  # nobody looks: nothing is written
    # kill -9 now: what is on disk is what a copy taken now holds (the lock is not content)
    shutil.copytree(tmp_path / "live", tmp_path / "killed")
    restarted = BatchService(live.config.replace(state_dir=str(tmp_path / "killed")))
    assert restarted.saved_time == pytest.approx(START + 1000)
    assert restarted.batch(batch["id"]) == live.batch(batch["id"])
    assert restarted.file_content(batch["input_file_id"]) == jsonl([chat("a"), chat("b")])
    restarted.close()
    live.close()


def test_resumes_at_the_saved_simulated_time_not_the_real_time(tmp_path) -> None:
    config = SimConfig(time_scale=0.0, state_dir=str(tmp_path))  # starts at the real time
    with Simulator(config).start() as sim:
        assert sim.saved_time is None
        started = sim.clock.now()
        with client(sim) as api:
            batch = api.batches.create(
                input_file_id=upload(api, [chat("a")]).id,
                endpoint="/v1/chat/completions",
                completion_window="24h",
            )
        sim.clock.advance(2.5)
    with Simulator(config).start() as again:
        assert again.saved_time == started + 2.5
        assert again.clock.now() == started + 2.5  # not the real time of the restart
        with client(again) as api:
            assert api.batches.retrieve(batch.id).status == "validating"
            again.clock.advance(1000)
            done = api.batches.retrieve(batch.id)
            assert done.status == "completed"
            assert api.files.content(done.output_file_id).content


def test_new_ids_never_collide_with_restored_ones(tmp_path) -> None:
    first = state_service(tmp_path, entropy=fixed_entropy(1))
    old = submit(first, [chat("a")])
    first.close()
    # The same entropy again would draw the same ids: they must be skipped.
    second = BatchService(first.config, entropy=fixed_entropy(1))
    new = submit(second, [chat("a")])
    assert new["id"] != old["id"] and new["input_file_id"] != old["input_file_id"]
    assert len(second.batches()) == 2 and len(second.files()) == 2
    second.close()


def test_run_time_limits_and_fault_uses_carry_over_a_restart(tmp_path) -> None:
    first = state_service(tmp_path, faults=(Fault.http(500, path="/v1/files", count=2),))
    assert first.take_route_fault("http", "POST", "/v1/files") is not None  # one use left
    first.set_request_limit("gpt-4o-mini", 1)
    first.add_fault(Fault.batch_fail("b*"))
    second = reopen(first)
    assert second.take_route_fault("http", "POST", "/v1/files") is not None
    assert second.take_route_fault("http", "POST", "/v1/files") is None
    too_many = submit(second, [chat("a"), chat("c")])
    failing = submit(second, [chat("b")])
    second.clock.advance(1000)
    assert second.batch(too_many["id"])["errors"]["data"][0]["code"] == "request_limit_exceeded"
    assert second.batch(failing["id"])["status"] == "failed"
    # A restart whose config changes the limits applies them from then on.
    third = reopen(second, request_limits={"gpt-4o-mini": 5})
    allowed = submit(third, [chat("a"), chat("c")])
    third.clock.advance(1000)
    assert third.batch(allowed["id"])["status"] == "completed"
    third.close()


def test_reads_write_nothing_and_each_upload_is_stored_once(tmp_path) -> None:
    service = state_service(tmp_path)
    batch = submit(service, [chat("a")])
    service.clock.advance(1000)
    service.batch(batch["id"])
    log = (tmp_path / "log.jsonl").read_bytes()
    clock = (tmp_path / "clock.json").read_bytes()
    for _ in range(20):
        service.batch(batch["id"])
        service.list_files()
        service.file_content(batch["input_file_id"])
    assert (tmp_path / "log.jsonl").read_bytes() == log
    assert (tmp_path / "clock.json").read_bytes() == clock
    assert [p.name for p in (tmp_path / "files").iterdir()] == [batch["input_file_id"]]
    ops = [json.loads(line)["op"] for line in log.splitlines()]
    assert ops == ["config", "file", "batch"]
    service.close()


def test_a_torn_last_record_is_dropped_and_a_damaged_one_is_named(tmp_path) -> None:
    service = state_service(tmp_path)
    kept = service.create_file("a.jsonl", "batch", jsonl([chat("a")]))
    service.close()
    log = tmp_path / "log.jsonl"
    whole = log.read_bytes()
    log.write_bytes(whole + b'{"op":"file","at":1.0,"id":"file-torn')  # killed mid-write
    again = state_service(tmp_path)
    assert [f["id"] for f in again.files()] == [kept["id"]]
    assert log.read_bytes() == whole
    again.close()
    log.write_bytes(whole.replace(b'"op":"file"', b'"op":"fil"'))
    with pytest.raises(SimStateError, match=r"log\.jsonl:2: cannot replay"):
        state_service(tmp_path)
    log.write_bytes(b"garbage\n" + whole)
    with pytest.raises(SimStateError, match=r"log\.jsonl:1: damaged record"):
        state_service(tmp_path)


def test_a_directory_in_use_or_from_other_settings_is_refused(tmp_path) -> None:
    service = state_service(tmp_path)
    with pytest.raises(SimStateError, match="another simulator is using"):
        state_service(tmp_path)
    service.close()
    with pytest.raises(SimStateError, match=r"other settings \(seed 0 -> 3\)") as info:
        state_service(tmp_path, seed=3)
    assert str(tmp_path) in str(info.value)
    # Per-run settings may change: the speed of time, limits, faults.
    state_service(tmp_path, time_scale=7.0, token_limits={"m": 1}, faults=(Fault.slow(1),)).close()
    meta = tmp_path / "simulator.json"
    meta.write_text(meta.read_text().replace('"format":1', '"format":99'))
    with pytest.raises(SimStateError, match="state format 99"):
        state_service(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(SimStateError, match="holds no simulator state"):
        state_service(other)


def test_the_command_reports_a_bad_state_dir_in_one_line(tmp_path, capsys) -> None:
    state_service(tmp_path).close()
    assert main(["simulator", "--port", "0", "--state-dir", str(tmp_path), "--seed", "9"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"gptbatch: error: {tmp_path} holds the state of a simulator")
    assert "Traceback" not in err


def test_anthropic_batches_survive_a_restart(tmp_path) -> None:
    """Creates and cancels are saved like OpenAI's: a restarted simulator still has every
    batch, ends them at the same times and serves the same results, billed once."""

    def body(prefix: str, n: int) -> bytes:
        params = {"model": "claude-sonnet-4-5", "max_tokens": 8}
        rows = [
            {
                "custom_id": f"{prefix}{i}",
                "params": {**params, "messages": [{"role": "user", "content": f"hi {i}"}]},
            }
            for i in range(n)
        ]
        return json.dumps({"requests": rows}).encode()

    first = state_service(tmp_path / "state")
    sim = first.anthropic
    ended = sim.create(body("e", 3), "http://x")["id"]
    first.clock.advance(100)
    assert sim.retrieve(ended, "http://x")["processing_status"] == "ended"
    results = sim.results(ended)
    running = sim.create(body("r", 4), "http://x")["id"]
    cancelled = sim.create(body("c", 2), "http://x")["id"]
    first.clock.advance(5)
    sim.cancel(cancelled, "http://x")
    billed = list(first.journal.billed)
    assert len(billed) == 3
    again = reopen(first)
    try:
        sim2 = again.anthropic
        assert sim2.ids() == [ended, running, cancelled]
        assert sim2.results(ended) == results  # the same shuffled lines
        assert sim2.retrieve(running, "http://x")["processing_status"] == "in_progress"
        assert sim2.retrieve(cancelled, "http://x")["processing_status"] in ("canceling", "ended")
        again.clock.advance(100)
        assert sim2.retrieve(running, "http://x")["processing_status"] == "ended"
        done = sim2.retrieve(cancelled, "http://x")
        assert done["request_counts"]["canceled"] == 2
        # Billed once each across both runs: the replay re-bills only what it replays.
        ids = sorted(b.custom_id for b in again.journal.billed)
        assert ids == sorted([f"e{i}" for i in range(3)] + [f"r{i}" for i in range(4)])
    finally:
        again.close()


def test_gemini_files_and_jobs_survive_a_restart(tmp_path) -> None:
    """Uploads, jobs, cancels and deletes are saved: a restarted simulator still has them,
    ends the jobs at the same times and serves the same results, billed once."""

    def upload(sim: Any, keys: list[str], shown: str) -> str:
        rows = [
            {"key": k, "request": {"contents": [{"role": "user", "parts": [{"text": k}]}]}}
            for k in keys
        ]
        data = "".join(json.dumps(r) + "\n" for r in rows).encode()
        start = json.dumps({"file": {"display_name": shown}}).encode()
        url = sim.start_upload(start, {"X-Goog-Upload-Command": "start"}, "http://x")
        upload_id = url["x-goog-upload-url"].split("upload_id=")[1].split("&")[0]
        headers = {"X-Goog-Upload-Command": "upload, finalize", "X-Goog-Upload-Offset": "0"}
        made, _ = sim.continue_upload(upload_id, data, headers)
        return made["file"]["name"]

    def job(sim: Any, file_name: str) -> str:
        body = {"batch": {"displayName": "j", "inputConfig": {"fileName": file_name}}}
        return sim.create("models/gemini-2.5-flash", json.dumps(body).encode())["name"]

    first = state_service(tmp_path / "state")
    sim = first.gemini
    ended = job(sim, upload(sim, ["e0", "e1"], "a"))
    first.clock.advance(100)
    done = sim.get(ended)
    results = sim.download(done["response"]["output"]["responsesFile"])
    running = job(sim, upload(sim, ["r0", "r1", "r2"], "b"))
    cancelled = job(sim, upload(sim, ["c0"], "c"))
    gone = upload(sim, ["g0"], "d")
    sim.delete_file(gone)
    first.clock.advance(5)
    sim.cancel(cancelled)
    again = reopen(first)
    try:
        sim2 = again.gemini
        assert sim2.names() == [ended, running, cancelled]
        assert sim2.download(done["response"]["output"]["responsesFile"]) == results
        assert sim2.get(running)["metadata"]["state"] != "BATCH_STATE_SUCCEEDED"
        assert sim2.get(cancelled)["metadata"]["state"] == "BATCH_STATE_CANCELLED"
        with pytest.raises(Exception, match="not found"):
            sim2.get_file(gone)
        again.clock.advance(100)
        assert sim2.get(running)["metadata"]["state"] == "BATCH_STATE_SUCCEEDED"
        keys = sorted(b.custom_id for b in again.journal.billed)
        assert keys == ["e0", "e1", "r0", "r1", "r2"]  # once each, the cancelled job never
    finally:
        again.close()
