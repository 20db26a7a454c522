"""`gptbatch build` on Gemini's batch mode, through the real google-genai SDK, against the
simulator.

Requests go out in an uploaded `{key, request}` file under their content keys (a job has a
display name, but an uploaded file cannot be read back to say what a job holds), results
come back in no fixed order: outputs are in input order under the user's keys, an edit
bills one request, a no-op none, and a lost state (or a kill at any crash point) never
pays twice.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from buildkit import PROVIDER_KILL_POINTS, REPO, Project, make_project, write_jsonl
from google import genai

from gptbatch.canonical import sha256_hex
from gptbatch.errors import EXIT_BAD_INPUT, EXIT_FAILED_REQUESTS, EXIT_OK, EXIT_PENDING
from gptbatch.inputs.gemini_lines import upload_line
from gptbatch.simulator import Fault

MODEL = "gemini-2.5-flash"


def gem(key: str, text: str | None = None) -> dict[str, Any]:
    """A Gemini batch line (the model comes from the config)."""
    parts = [{"text": text or f"Tell me about {key}."}]
    return {"key": key, "request": {"contents": [{"role": "user", "parts": parts}]}}


def key_of(row: dict[str, Any]) -> str:
    """The content key a request is sent under (its key at the API)."""
    return sha256_hex(upload_line(json.dumps(row).encode(), MODEL))


def gemini_project(tmp_path: Path, rows: list[dict[str, Any]], **config: Any) -> Project:
    return make_project(
        tmp_path, {"requests.jsonl": rows}, api={"provider": "gemini"}, model=MODEL, **config
    )


def billed(sim: Any) -> list[str]:
    return [b.custom_id for b in sim.journal.billed]


def jobs(sim: Any) -> list[str]:
    return sim.service.gemini.names()


def test_build_outputs_in_input_order_from_unordered_results(tmp_path: Path, simulator) -> None:
    rows = [gem(f"q{i}") for i in range(30)]
    project = gemini_project(tmp_path, rows)
    assert project.build() == EXIT_OK
    out = project.output()
    assert [o["custom_id"] for o in out] == [r["key"] for r in rows]
    assert all(o["response"]["status_code"] == 200 for o in out)
    assert all(o["response"]["body"]["candidates"] for o in out)
    keys = [key_of(r) for r in rows]
    assert sorted(billed(simulator)) == sorted(keys)  # each sent once, under its key
    (job,) = jobs(simulator)
    sent = simulator.service.gemini.requests_of(job)
    assert [r["key"] for r in sent] == keys
    assert all("model" not in r["request"] for r in sent)  # the job names the model
    client = genai.Client(api_key="k")
    done = client.batches.get(name=job)
    assert done.model == f"models/{MODEL}" and done.display_name.startswith("gptbatch ")
    data = client.files.download(file=done.dest.file_name)
    order = [json.loads(line)["key"] for line in data.splitlines()]
    assert order != keys and sorted(order) == sorted(keys)  # results came out of order


def test_edit_one_line_bills_one_and_a_no_op_bills_none(tmp_path: Path, simulator) -> None:
    rows = [gem(f"q{i}") for i in range(12)]
    project = gemini_project(tmp_path, rows)
    assert project.build() == EXIT_OK
    rows[5] = gem("q5", "Something else entirely.")
    write_jsonl(project.input(), rows)
    assert project.build() == EXIT_OK
    assert len(billed(simulator)) == 13 and billed(simulator)[-1] == key_of(rows[5])
    calls = len(simulator.journal.calls)
    assert project.build() == EXIT_OK
    assert len(billed(simulator)) == 13
    assert len(simulator.journal.calls) == calls  # a no-op asks the API nothing
    assert project.output()[5]["custom_id"] == "q5"


def test_lost_state_with_ended_jobs_pays_nothing_twice(tmp_path: Path, simulator) -> None:
    rows = [gem(f"q{i}") for i in range(9)]
    project = gemini_project(tmp_path, rows, limits={"max_requests_per_batch": 4})
    assert project.build() == EXIT_OK
    first = project.output()
    assert len(jobs(simulator)) == 3
    shutil.rmtree(project.out / ".gptbatch")
    (project.out / "requests.jsonl").unlink()
    assert project.build() == EXIT_OK
    assert sorted(billed(simulator)) == sorted(key_of(r) for r in rows)  # none twice
    assert len(jobs(simulator)) == 3  # nothing created again
    assert project.output() == first


def test_lost_state_with_ended_and_in_flight_jobs_waits_for_them(tmp_path: Path, simulator) -> None:
    rows = [gem(f"q{i}") for i in range(9)]
    project = gemini_project(tmp_path, rows[:3], limits={"max_requests_per_batch": 3})
    assert project.build() == EXIT_OK  # one job ended
    simulator.service.gemini.processing_seconds = 150.0  # ~1.5 s of real time
    write_jsonl(project.input(), rows)
    assert project.build("--no-wait") == EXIT_PENDING  # two more in flight
    assert len(jobs(simulator)) == 3 and len(billed(simulator)) == 3
    shutil.rmtree(project.out / ".gptbatch")
    assert project.build() == EXIT_OK
    assert sorted(billed(simulator)) == sorted(key_of(r) for r in rows)
    assert len(jobs(simulator)) == 3  # waited for, not sent again
    assert [o["custom_id"] for o in project.output()] == [r["key"] for r in rows]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("point", PROVIDER_KILL_POINTS)
def test_kill_then_rerun_pays_nothing_twice(tmp_path: Path, simulator, point: str) -> None:
    rows = [gem(f"q{i}") for i in range(6)]
    project = gemini_project(tmp_path, rows, limits={"max_requests_per_batch": 3})
    run = project.build_process(env={"GPTBATCH_CRASH_AT": f"{point}:1"}, timeout=90)
    assert run.returncode == -signal.SIGKILL, run.stderr[-2000:]
    rerun = project.build_process(timeout=90)
    assert rerun.returncode == EXIT_OK, rerun.stderr[-2000:]
    assert sorted(billed(simulator)) == sorted(key_of(r) for r in rows)  # once each
    assert len(jobs(simulator)) == 2
    assert [o["custom_id"] for o in project.output()] == [r["key"] for r in rows]


def test_error_results_are_classified(tmp_path: Path, simulator) -> None:
    rows = [gem(f"q{i}") for i in range(4)]
    project = gemini_project(tmp_path, rows)
    errored = simulator.service.gemini.errored
    errored[key_of(rows[1])] = 503  # transient: sent again
    errored[key_of(rows[2])] = 400  # permanent: failed for good
    assert project.build() == EXIT_FAILED_REQUESTS
    (error,) = project.errors()
    assert error["custom_id"] == "q2" and "400" in error["error"]
    out = {o["custom_id"]: o for o in project.output()}
    assert set(out) == {"q0", "q1", "q3"}  # q1 came back on its retry
    sent = [r["key"] for j in jobs(simulator) for r in simulator.service.gemini.requests_of(j)]
    assert sent.count(key_of(rows[1])) == 2 and sent.count(key_of(rows[2])) == 1


def test_cancel_then_build_sends_the_cancelled_requests_once(tmp_path: Path, simulator) -> None:
    from gptbatch.cli import main

    simulator.service.gemini.processing_seconds = 3600.0
    rows = [gem(f"q{i}") for i in range(4)]
    project = gemini_project(tmp_path, rows)
    assert project.build("--no-wait") == EXIT_PENDING
    assert main(["cancel", str(project.config)]) == EXIT_OK
    simulator.service.gemini.processing_seconds = 20.0
    assert project.build() == EXIT_OK
    assert sorted(billed(simulator)) == sorted(key_of(r) for r in rows)  # once each
    assert len(jobs(simulator)) == 2
    assert [o["custom_id"] for o in project.output()] == [r["key"] for r in rows]


def test_per_line_models_go_to_one_job_per_model(tmp_path: Path, simulator) -> None:
    rows = [gem("a"), gem("b"), gem("c")]
    rows[1]["request"]["model"] = "models/gemini-2.5-pro"
    rows[0]["request"]["model"] = rows[2]["request"]["model"] = MODEL
    project = make_project(tmp_path, {"requests.jsonl": rows}, api={"provider": "gemini"})
    assert project.build() == EXIT_OK
    models = {b.model for b in simulator.journal.billed}
    assert models == {MODEL, "gemini-2.5-pro"} and len(jobs(simulator)) == 2
    assert [o["custom_id"] for o in project.output()] == ["a", "b", "c"]


def test_lines_of_other_providers_are_located_errors(tmp_path: Path, simulator, capsys) -> None:
    openai_line = {
        "custom_id": "x",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
    }
    claude_line = {"custom_id": "y", "params": {"max_tokens": 5, "messages": []}}
    project = gemini_project(tmp_path, [gem("q0"), openai_line, claude_line])
    assert project.build() == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert (
        "requests.jsonl:2: this line looks like an OpenAI request; the target's provider is "
        "gemini" in err
    )
    assert "requests.jsonl:3: this line looks like an Anthropic request" in err
    assert jobs(simulator) == [] and simulator.journal.billed == []


def test_a_gemini_line_in_an_openai_target_is_a_located_error(
    tmp_path: Path, simulator, capsys
) -> None:
    project = make_project(tmp_path, {"requests.jsonl": [gem("q0")]})
    assert project.build() == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "requests.jsonl:1: this line looks like a Gemini request" in err
    assert "the target's provider is openai" in err


def test_bad_gemini_lines_are_located_by_validate(tmp_path: Path, capsys) -> None:
    from gptbatch.cli import main

    bad = [
        gem("ok"),
        {"request": gem("a")["request"]},
        {"key": "b", "request": "not an object"},
        {"key": "c", "request": {"contents": []}},
        {**gem("d"), "extra": 1},
        {"key": "e", "request": {**gem("e")["request"], "model": "gemini-other"}},
        gem("ok"),
    ]
    project = gemini_project(tmp_path, bad)
    assert main(["validate", str(project.config)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    for line, what in [
        (2, "missing key"),
        (3, "request must be a JSON object"),
        (4, "request.contents must be a non-empty list"),
        (5, "unknown key 'extra'"),
        (6, "request.model 'gemini-other' differs from the config's model"),
        (7, "duplicate custom_id"),
    ]:
        assert f"requests.jsonl:{line}: {what}" in err, (line, what, err)
    assert "6 problems found" in err  # the good first line is not one of them


def test_an_openai_endpoint_on_a_gemini_target_is_a_config_error(tmp_path: Path, capsys) -> None:
    project = gemini_project(tmp_path, [gem("q0")], endpoint="/v1/chat/completions")
    assert project.build() == EXIT_BAD_INPUT
    assert "endpoint /v1/chat/completions is an OpenAI endpoint" in capsys.readouterr().err


def _run_example(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    config = str(tmp_path / "examples/gemini.yaml")
    return subprocess.run(
        [sys.executable, "-m", "gptbatch", "build", config, "--simulate"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env=env,
    )


def test_simulate_builds_the_gemini_example(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GEMINI_", "GOOGLE_"))}
    run = _run_example(tmp_path, env)
    assert run.returncode == EXIT_OK, run.stderr[-2000:]
    out = tmp_path / "examples/out-gemini-simulated/gemini.jsonl"
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [o["custom_id"] for o in lines] == [f"fact-{i}" for i in range(1, 9)]


def test_without_the_sdk_the_error_names_the_extra(tmp_path: Path) -> None:
    shadow = tmp_path / "shadow" / "google" / "genai"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError(\"No module named 'google.genai'\")\n")
    (shadow.parent / "__init__.py").write_text("")
    path = os.pathsep.join([str(shadow.parent.parent), os.environ.get("PYTHONPATH", str(REPO))])
    run = _run_example(tmp_path, {**os.environ, "PYTHONPATH": path})
    assert run.returncode != EXIT_OK
    assert "pip install 'gptbatch[gemini]'" in run.stderr


# --- API faults on each Gemini route -----------------------------------------------------------

CREATE = ("POST", "/v1beta/models/*:batchGenerateContent")
LIST = ("GET", "/v1beta/batches")
POLL = ("GET", "/v1beta/batches*")
UPLOAD = ("POST", "/upload/v1beta/files")
DOWNLOAD = "/v1beta/files/*:download"
FAULTS = {
    # the job exists; the build cannot know it did
    "create lost reply": Fault.lost_reply(method=CREATE[0], path=CREATE[1], count=2),
    "create 500": Fault.http(500, method=CREATE[0], path=CREATE[1], count=2, retry_after=0.05),
    "create 429": Fault.http(429, method=CREATE[0], path=CREATE[1], count=3, retry_after=0.05),
    "upload 503": Fault.http(503, method=UPLOAD[0], path=UPLOAD[1], count=2, retry_after=0.05),
    "list 500": Fault.http(500, method=LIST[0], path=LIST[1], count=4, retry_after=0.05),
    # polls go by get or, with several jobs in flight, by the list
    "poll lost reply": Fault.lost_reply(method=POLL[0], path=POLL[1], count=3),
    "results dropped": Fault.drop_download(after_bytes=200, path=DOWNLOAD, count=3),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", list(FAULTS))
def test_api_faults_never_bill_twice_nor_lose_a_result(
    tmp_path: Path, simulator, case: str
) -> None:
    simulator.add_fault(FAULTS[case])
    rows = [gem(f"q{i}") for i in range(6)]
    project = gemini_project(tmp_path, rows, limits={"max_requests_per_batch": 3})
    assert project.build() == EXIT_OK
    assert sorted(billed(simulator)) == sorted(key_of(r) for r in rows)  # once each
    assert [o["custom_id"] for o in project.output()] == [r["key"] for r in rows]
    fired = [c for c in simulator.journal.calls if c.fault is not None]
    assert fired, f"the {case} fault never fired"
    if case == "create lost reply":  # both lost creates made jobs: adopted, not redone
        assert len(jobs(simulator)) == 2


def test_export_and_answers_read_gemini_replies_and_usage(tmp_path: Path, simulator) -> None:
    import gptbatch
    from gptbatch.cli import main

    rows = [gem(f"q{i}") for i in range(3)]
    project = gemini_project(tmp_path, rows, prices={MODEL: {"input": 1.0, "output": 2.0}})
    assert project.build() == EXIT_OK
    target = tmp_path / "export.jsonl"
    assert main(["export", str(project.config), "-o", str(target)]) == EXIT_OK
    exported = [json.loads(line) for line in target.read_text().splitlines()]
    assert [e["custom_id"] for e in exported] == ["q0", "q1", "q2"]
    for row in exported:
        assert row["reply"].startswith("reply ") and row["finish_reason"] == "STOP"
        assert row["input_tokens"] > 0 and row["output_tokens"] == 4 and row["cost"] > 0
    answers = list(gptbatch.load(project.config).answers("requests.jsonl"))
    assert [a["answer"][:6] for a in answers] == ["reply "] * 3


def test_plan_bounds_the_output_by_max_output_tokens(tmp_path: Path, capsys) -> None:
    from gptbatch.cli import main

    rows = [gem(f"q{i}") for i in range(4)]
    for row in rows:
        row["request"]["generationConfig"] = {"maxOutputTokens": 250_000}
    project = gemini_project(tmp_path, rows, prices={MODEL: {"input": 1.0, "output": 2.0}})
    assert main(["plan", str(project.config)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "/v1beta/generateContent" in out
    assert "$2.00" in out  # 4 requests x 250,000 output tokens at $2 per 1M


def test_the_queue_is_budgeted_by_estimated_tokens(tmp_path: Path, simulator) -> None:
    simulator.service.gemini.processing_seconds = 100.0
    rows = [gem(f"q{i}") for i in range(6)]
    limits = {"max_requests_per_batch": 2, "enqueued_tokens": 50, "safety_margin": 0}
    project = gemini_project(tmp_path, rows, limits=limits)
    assert project.build("--no-wait") == EXIT_PENDING
    queued = [r for j in jobs(simulator) for r in simulator.service.gemini.requests_of(j)]
    assert len(queued) == 4  # ~12 estimated tokens a request: four fit under 50, not six
    assert project.build() == EXIT_OK
    assert sorted(billed(simulator)) == sorted(key_of(r) for r in rows)


def test_an_unknown_model_stops_the_build_without_uploading_forever(
    tmp_path: Path, simulator
) -> None:
    simulator.service.gemini.unknown_models.add(MODEL)
    project = gemini_project(tmp_path, [gem("q0"), gem("q1")])
    assert project.build() not in (EXIT_OK, EXIT_PENDING)
    uploads = [c for c in simulator.journal.calls if c.path.startswith("/upload/")]
    assert len(uploads) == 2  # one resumable upload (start + bytes), not one per attempt
    assert jobs(simulator) == [] and simulator.journal.billed == []


def test_a_second_simulate_rehearsal_resumes_its_gemini_jobs(tmp_path: Path) -> None:
    """The rehearsal's simulator keeps Gemini uploads and jobs in its state directory: a
    second `--simulate` finds the job the first left running and sends nothing again."""
    from gptbatch.config.rehearsal import SIMULATED_SUFFIX

    rows = [gem(f"q{i}") for i in range(4)]
    project = gemini_project(tmp_path, rows)
    assert project.build("--simulate", "--no-wait") == EXIT_PENDING
    (log,) = tmp_path.glob("**/simulator/log.jsonl")

    def records(op: str) -> int:
        return sum(json.loads(line)["op"] == op for line in log.read_text().splitlines())

    assert records("gemini_job") == 1 and records("gemini_file") == 1
    assert project.build("--simulate") == EXIT_OK
    assert records("gemini_job") == 1 and records("gemini_file") == 1  # resumed, not resent
    out = project.root / f"out{SIMULATED_SUFFIX}" / "requests.jsonl"
    got = [json.loads(line)["custom_id"] for line in out.read_text().splitlines()]
    assert got == [r["key"] for r in rows]


def test_status_shows_a_running_jobs_progress_and_the_api_clock(
    tmp_path: Path, simulator, capsys
) -> None:
    """The SDK's job object drops batchStats: they are read off the reply, so progress shows
    while a job runs (not 0/0 until it ends), and the reply's Date gives the API's clock."""
    import re

    from gptbatch.api.gemini import GeminiRemote
    from gptbatch.cli import main

    sim = simulator.service.gemini
    sim.processing_seconds = 100_000.0  # minutes of real time, and inside the 48 h expiry
    project = gemini_project(tmp_path, [gem(f"q{i}") for i in range(4)])
    assert project.build("--no-wait") == EXIT_PENDING
    (job,) = jobs(simulator)
    sim.progress_now(job, 0.6)
    capsys.readouterr()
    assert main(["status", str(project.config), "--remote"]) == 3
    out = capsys.readouterr().out
    found = re.search(rf"batch {job} at the API: in_progress \((\d+)/(\d+) done", out)
    assert found is not None, out
    assert found.group(2) == "4" and 0 < int(found.group(1)) < 4
    remote = GeminiRemote(api_key="k")
    try:
        info, when = remote.retrieve_dated(job)
        assert info.total == 4 and 0 < info.completed < 4
        assert when is not None and abs(when - simulator.service.now()) < 5
        listed = next(i for i in remote.list_batches() if i.id == job)
        assert listed.total == 4  # a listing's page carries them too
    finally:
        remote.close()
        sim.finish_now(job)
