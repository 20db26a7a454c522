"""`gptbatch build` on Anthropic's Message Batches, through the real SDK, against the simulator.

Requests go out under their content keys (no metadata exists on a batch), results come back
in no fixed order: outputs are in input order under the user's custom_ids, an edit bills one
request, a no-op none, and a lost state (or a kill after create) never pays twice.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anthropic
import pytest
from buildkit import (
    PROVIDER_KILL_POINTS,
    REPO,
    Project,
    make_project,
    wait_until,
    write_jsonl,
)

from gptbatch.canonical import sha256_hex
from gptbatch.errors import EXIT_BAD_INPUT, EXIT_FAILED_REQUESTS, EXIT_OK, EXIT_PENDING
from gptbatch.inputs.messages_lines import upload_line
from gptbatch.simulator import Fault

MODEL = "claude-sonnet-4-5"


def claude(custom_id: str, text: str | None = None) -> dict[str, Any]:
    """An Anthropic request line (the model comes from the config)."""
    return {
        "custom_id": custom_id,
        "params": {
            "max_tokens": 64,
            "messages": [{"role": "user", "content": text or f"Tell me about {custom_id}."}],
        },
    }


def key_of(row: dict[str, Any]) -> str:
    """The content key a request is sent under (its custom_id at the API)."""
    return sha256_hex(upload_line(json.dumps(row).encode(), MODEL))


def claude_project(tmp_path: Path, rows: list[dict[str, Any]], **config: Any) -> Project:
    return make_project(
        tmp_path, {"requests.jsonl": rows}, api={"provider": "anthropic"}, model=MODEL, **config
    )


def billed(sim: Any) -> list[str]:
    return [b.custom_id for b in sim.journal.billed]


def test_build_outputs_in_input_order_from_unordered_results(tmp_path: Path, simulator) -> None:
    rows = [claude(f"q{i}") for i in range(30)]
    project = claude_project(tmp_path, rows)
    assert project.build() == EXIT_OK
    out = project.output()
    assert [o["custom_id"] for o in out] == [r["custom_id"] for r in rows]
    assert all(o["response"]["status_code"] == 200 for o in out)
    assert all(o["response"]["body"]["type"] == "message" for o in out)
    keys = [key_of(r) for r in rows]
    assert sorted(billed(simulator)) == sorted(keys)  # each sent once, under its key
    (batch_id,) = simulator.service.anthropic.ids()
    sent = [r["custom_id"] for r in simulator.service.anthropic.requests_of(batch_id)]
    assert sent == keys
    client = anthropic.Anthropic(api_key="sk-test", max_retries=0)
    order = [r.custom_id for r in client.messages.batches.results(batch_id)]
    assert order != keys and sorted(order) == sorted(keys)  # results came out of order


def test_edit_one_line_bills_one_and_a_no_op_bills_none(tmp_path: Path, simulator) -> None:
    rows = [claude(f"q{i}") for i in range(12)]
    project = claude_project(tmp_path, rows)
    assert project.build() == EXIT_OK
    rows[5] = claude("q5", "Something else entirely.")
    write_jsonl(project.input(), rows)
    assert project.build() == EXIT_OK
    assert len(billed(simulator)) == 13 and billed(simulator)[-1] == key_of(rows[5])
    calls = len(simulator.journal.calls)
    assert project.build() == EXIT_OK
    assert len(billed(simulator)) == 13
    assert len(simulator.journal.calls) == calls  # a no-op asks the API nothing
    assert project.output()[5]["custom_id"] == "q5"


def test_lost_state_with_ended_batches_pays_nothing_twice(tmp_path: Path, simulator) -> None:
    rows = [claude(f"q{i}") for i in range(9)]
    project = claude_project(tmp_path, rows, limits={"max_requests_per_batch": 4})
    assert project.build() == EXIT_OK
    first = project.output()
    assert len(simulator.service.anthropic.ids()) == 3
    shutil.rmtree(project.out / ".gptbatch")
    (project.out / "requests.jsonl").unlink()
    assert project.build() == EXIT_OK
    assert sorted(billed(simulator)) == sorted(key_of(r) for r in rows)  # none twice
    assert len(simulator.service.anthropic.ids()) == 3  # nothing created again
    assert project.output() == first


def test_lost_state_with_batches_in_flight_waits_for_them(tmp_path: Path, simulator) -> None:
    simulator.service.anthropic.processing_seconds = 150.0  # ~1.5 s of real time
    rows = [claude(f"q{i}") for i in range(6)]
    project = claude_project(tmp_path, rows, limits={"max_requests_per_batch": 3})
    assert project.build("--no-wait") == EXIT_PENDING
    assert len(simulator.service.anthropic.ids()) == 2 and billed(simulator) == []
    shutil.rmtree(project.out / ".gptbatch")
    assert project.build() == EXIT_OK
    assert sorted(billed(simulator)) == sorted(key_of(r) for r in rows)
    assert len(simulator.service.anthropic.ids()) == 2  # waited for, not sent again
    assert [o["custom_id"] for o in project.output()] == [r["custom_id"] for r in rows]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("point", PROVIDER_KILL_POINTS)
def test_kill_then_rerun_pays_nothing_twice(tmp_path: Path, simulator, point: str) -> None:
    rows = [claude(f"q{i}") for i in range(6)]
    project = claude_project(tmp_path, rows, limits={"max_requests_per_batch": 3})
    run = project.build_process(env={"GPTBATCH_CRASH_AT": f"{point}:1"}, timeout=90)
    assert run.returncode == -signal.SIGKILL, run.stderr[-2000:]
    rerun = project.build_process(timeout=90)
    assert rerun.returncode == EXIT_OK, rerun.stderr[-2000:]
    assert sorted(billed(simulator)) == sorted(key_of(r) for r in rows)  # once each
    assert len(simulator.service.anthropic.ids()) == 2
    assert [o["custom_id"] for o in project.output()] == [r["custom_id"] for r in rows]


def test_errored_results_are_classified(tmp_path: Path, simulator) -> None:
    rows = [claude(f"q{i}") for i in range(4)]
    project = claude_project(tmp_path, rows)
    errored = simulator.service.anthropic.errored
    errored[key_of(rows[1])] = "overloaded_error"  # transient: sent again
    errored[key_of(rows[2])] = "invalid_request_error"  # permanent: failed for good
    assert project.build() == EXIT_FAILED_REQUESTS
    (error,) = project.errors()
    assert error["custom_id"] == "q2" and "400" in error["error"]
    out = {o["custom_id"]: o for o in project.output()}
    assert set(out) == {"q0", "q1", "q3"}  # q1 came back on its retry
    sent = [
        r["custom_id"]
        for b in simulator.service.anthropic.ids()
        for r in simulator.service.anthropic.requests_of(b)
    ]
    assert sent.count(key_of(rows[1])) == 2 and sent.count(key_of(rows[2])) == 1


def test_an_openai_line_in_an_anthropic_target_is_a_located_error(
    tmp_path: Path, simulator, capsys
) -> None:
    openai_line = {
        "custom_id": "x",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
    }
    project = claude_project(tmp_path, [claude("q0"), openai_line])
    assert project.build() == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert (
        "requests.jsonl:2: this line looks like an OpenAI request; the target's provider is "
        "anthropic" in err
    )
    assert simulator.service.anthropic.ids() == [] and simulator.journal.billed == []


def test_an_anthropic_line_in_an_openai_target_is_a_located_error(
    tmp_path: Path, simulator, capsys
) -> None:
    project = make_project(tmp_path, {"requests.jsonl": [claude("q0")]})
    assert project.build() == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "requests.jsonl:1: this line looks like an Anthropic request" in err
    assert "the target's provider is openai" in err


def test_simulate_builds_the_claude_example(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "gptbatch",
            "build",
            str(tmp_path / "examples/claude.yaml"),
            "--simulate",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")},
    )
    assert run.returncode == EXIT_OK, run.stderr[-2000:]
    out = tmp_path / "examples/out-claude-simulated/claude.jsonl"
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [o["custom_id"] for o in lines] == [f"fact-{i}" for i in range(1, 9)]


def test_without_the_sdk_the_error_names_the_extra(tmp_path: Path) -> None:
    shadow = tmp_path / "shadow" / "anthropic"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError(\"No module named 'anthropic'\")\n")
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    path = os.pathsep.join([str(shadow.parent), os.environ.get("PYTHONPATH", str(REPO))])
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "gptbatch",
            "build",
            str(tmp_path / "examples/claude.yaml"),
            "--simulate",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": path},
    )
    assert run.returncode != EXIT_OK
    assert "pip install 'gptbatch[anthropic]'" in run.stderr


def test_cancel_then_build_sends_the_canceled_requests_once_more(tmp_path: Path, simulator) -> None:
    from gptbatch.cli import main

    simulator.service.anthropic.processing_seconds = 3600.0
    rows = [claude(f"q{i}") for i in range(4)]
    project = claude_project(tmp_path, rows)
    assert project.build("--no-wait") == EXIT_PENDING
    assert main(["cancel", str(project.config)]) == EXIT_OK
    simulator.service.anthropic.processing_seconds = 20.0
    assert project.build() == EXIT_OK
    assert sorted(billed(simulator)) == sorted(key_of(r) for r in rows)  # once each
    assert len(simulator.service.anthropic.ids()) == 2
    assert [o["custom_id"] for o in project.output()] == [r["custom_id"] for r in rows]


def test_the_queue_is_budgeted_by_requests(tmp_path: Path, simulator, capsys) -> None:
    simulator.service.anthropic.processing_seconds = 100.0
    rows = [claude(f"q{i}") for i in range(6)]
    project = claude_project(
        tmp_path,
        rows,
        limits={"max_requests_per_batch": 2, "enqueued_requests": 4, "safety_margin": 0},
    )
    assert project.build("--no-wait") == EXIT_PENDING
    assert len(simulator.service.anthropic.ids()) == 2  # 4 requests in the queue, no more
    assert project.build() == EXIT_OK
    assert sorted(billed(simulator)) == sorted(key_of(r) for r in rows)


def test_a_token_limit_on_an_anthropic_target_is_a_config_error(tmp_path: Path, capsys) -> None:
    project = claude_project(tmp_path, [claude("q0")], limits={"enqueued_tokens": 1000})
    assert project.build() == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "batch.yaml" in err and "limits.enqueued_tokens does not apply" in err


def test_lost_state_after_the_results_expired_builds_again(tmp_path: Path, simulator) -> None:
    """Results are kept 29 days: after that a lost state has nothing to recover, and the
    build sends the requests again rather than stopping on the 404."""
    rows = [claude(f"q{i}") for i in range(3)]
    project = claude_project(tmp_path, rows)
    assert project.build() == EXIT_OK
    shutil.rmtree(project.out / ".gptbatch")
    simulator.clock.advance(30 * 86400)
    assert project.build() == EXIT_OK
    assert sorted(billed(simulator)) == sorted(2 * [key_of(r) for r in rows])
    assert [o["custom_id"] for o in project.output()] == [r["custom_id"] for r in rows]


# --- API faults on each Message Batches route --------------------------------------------------

CREATE = ("POST", "/v1/messages/batches")
LIST = ("GET", "/v1/messages/batches")
RETRIEVE = ("GET", "/v1/messages/batches/*")
RESULTS = "/v1/messages/batches/*/results"


def _faults(case: str) -> tuple[Fault, ...]:
    if case == "create lost reply":  # the batch exists; the build cannot know it did
        return (Fault.lost_reply(method=CREATE[0], path=CREATE[1], count=2),)
    if case == "create 500":
        return (Fault.http(500, method=CREATE[0], path=CREATE[1], count=2, retry_after=0.05),)
    if case == "create 429":
        return (Fault.http(429, method=CREATE[0], path=CREATE[1], count=3, retry_after=0.05),)
    if case == "list 500":
        return (Fault.http(500, method=LIST[0], path=LIST[1], count=4, retry_after=0.05),)
    if case == "retrieve lost reply":
        return (Fault.lost_reply(method=RETRIEVE[0], path=RETRIEVE[1], count=3),)
    if case == "results dropped":
        return (Fault.drop_download(after_bytes=200, path=RESULTS, count=3),)
    raise AssertionError(case)


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "case",
    [
        "create lost reply",
        "create 500",
        "create 429",
        "list 500",
        "retrieve lost reply",
        "results dropped",
    ],
)
def test_api_faults_never_bill_twice_nor_lose_a_result(
    tmp_path: Path, simulator, case: str
) -> None:
    for fault in _faults(case):
        simulator.add_fault(fault)
    rows = [claude(f"q{i}") for i in range(6)]
    project = claude_project(tmp_path, rows, limits={"max_requests_per_batch": 3})
    assert project.build() == EXIT_OK
    assert sorted(billed(simulator)) == sorted(key_of(r) for r in rows)  # once each
    assert [o["custom_id"] for o in project.output()] == [r["custom_id"] for r in rows]
    fired = [c for c in simulator.journal.calls if c.fault is not None]
    assert fired, f"the {case} fault never fired"
    if case == "create lost reply":  # both lost creates made batches: adopted, not redone
        assert len(simulator.service.anthropic.ids()) == 2


def test_results_expired_before_collection_are_sent_again_not_waited_for(
    tmp_path: Path, simulator
) -> None:
    """Anthropic keeps results 29 days after a batch's creation: a build coming back later
    finds them gone by the API's clock and sends the requests again (it does not wait out
    OpenAI's 30 days from the batch's end)."""
    simulator.service.anthropic.processing_seconds = 100.0
    rows = [claude(f"q{i}") for i in range(3)]
    project = claude_project(tmp_path, rows)
    assert project.build("--no-wait") == EXIT_PENDING
    simulator.clock.advance(29 * 86400 + 3600)
    assert project.build() == EXIT_OK
    assert sorted(billed(simulator)) == sorted(2 * [key_of(r) for r in rows])
    assert [o["custom_id"] for o in project.output()] == [r["custom_id"] for r in rows]


def test_bad_anthropic_lines_are_located_by_validate(tmp_path: Path, capsys) -> None:
    from gptbatch.cli import main

    good = claude("ok")
    bad = [
        good,
        {"custom_id": "a", "params": {"messages": [{"role": "user", "content": "x"}]}},
        {"custom_id": "b", "params": "not an object"},
        {"custom_id": "c", "params": {"max_tokens": 5, "messages": []}},
        {**claude("d"), "extra": 1},
        {"custom_id": "e", "params": {**claude("e")["params"], "model": "claude-other"}},
        {"custom_id": "f", "params": {**claude("f")["params"], "stream": True}},
        claude("ok"),
    ]
    project = claude_project(tmp_path, bad)
    assert main(["validate", str(project.config)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    for line, what in [
        (2, "params.max_tokens must be a positive integer"),
        (3, "params must be a JSON object"),
        (4, "params.messages must be a non-empty list"),
        (5, "unknown key 'extra'"),
        (6, "params.model 'claude-other' differs from the config's model"),
        (7, "params.stream is true"),
        (8, "duplicate custom_id"),
    ]:
        assert f"requests.jsonl:{line}: {what}" in err, (line, what, err)
    assert "7 problems found" in err  # the good first line is not one of them


def test_an_openai_endpoint_on_an_anthropic_target_is_a_config_error(
    tmp_path: Path, capsys
) -> None:
    project = claude_project(tmp_path, [claude("q0")], endpoint="/v1/chat/completions")
    assert project.build() == EXIT_BAD_INPUT
    assert "endpoint /v1/chat/completions is an OpenAI endpoint" in capsys.readouterr().err


@pytest.mark.timeout(120)
def test_a_later_create_in_doubt_that_ends_first_is_adopted_by_its_own_shard(
    tmp_path: Path, simulator
) -> None:
    """Two creates lose their replies; the second batch ends while the first is still in
    progress. Looking for the first shard's batch, the build must give the second batch to
    the second shard, not rebuild it as a stranger's and create the second shard again."""
    import threading

    sim = simulator.service.anthropic
    sim.processing_seconds = 10_000_000.0  # nothing ends by itself while the test runs
    simulator.add_fault(Fault.lost_reply(method=CREATE[0], path=CREATE[1], count=2))
    rows = [claude(f"q{i}") for i in range(6)]
    project = claude_project(tmp_path, rows, limits={"max_requests_per_batch": 3})
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(project.build()), daemon=True)
    thread.start()
    try:
        assert wait_until(lambda: len(sim.ids()) == 2, timeout=60), "both creates never came"
        first, second = sim.ids()
        sim.finish_now(second)
        time.sleep(2)  # the build polls for the first shard's batch meanwhile (every 0.2 s)
        sim.finish_now(first)
        thread.join(timeout=90)
    finally:
        for batch in sim.ids():  # a failed assertion must not leave the build waiting
            sim.finish_now(batch)
        thread.join(timeout=90)
    assert codes == [EXIT_OK]
    assert sorted(billed(simulator)) == sorted(key_of(r) for r in rows)  # once each
    assert len(sim.ids()) == 2  # no third create
    # Each batch went to the shard that created it; none was taken for a stranger's (whose
    # rebuilt shard leaves the real one to be created again when collection comes later).
    from gptbatch.engine.batches import RECOVERED
    from gptbatch.state.store import Store, state_dir

    store = Store(state_dir(project.out))
    try:
        assert [s.note for s in store.shards() if s.note == RECOVERED] == []
        assert len({s.batch_id for s in store.shards() if s.batch_id}) == 2
    finally:
        store.close()
    assert [o["custom_id"] for o in project.output()] == [r["custom_id"] for r in rows]


def test_claude_models_get_no_unknown_model_warning(tmp_path: Path, simulator, capsys) -> None:
    """gptbatch's model list is OpenAI's: a Claude model is not a typo of one."""
    from gptbatch.cli import main

    project = claude_project(tmp_path, [claude("q0"), claude("q1")])
    assert main(["validate", str(project.config)]) == EXIT_OK
    assert project.build() == EXIT_OK
    captured = capsys.readouterr()
    assert "unknown model" not in captured.err
    assert "cost unknown" not in captured.out and "cost $" in captured.out  # in the table
    # A Claude model the table has no price for: no warning either, and the cost says so.
    unpriced = make_project(
        tmp_path / "unpriced",
        {"requests.jsonl": [claude("q0")]},
        api={"provider": "anthropic"},
        model="claude-fable-5-1",
    )
    assert main(["validate", str(unpriced.config)]) == EXIT_OK
    assert unpriced.build() == EXIT_OK
    captured = capsys.readouterr()
    assert "unknown model" not in captured.err
    assert "cost unknown (no price for claude-fable-5-1" in captured.out


def test_plan_shows_the_request_budget_in_force(tmp_path: Path, capsys) -> None:
    """Anthropic's queue is limited by requests: plan names that budget, not "no limit"."""
    from gptbatch.cli import main

    project = claude_project(
        tmp_path,
        [claude(f"q{i}") for i in range(3)],
        limits={"enqueued_requests": 2500, "max_requests_per_batch": 1000},
    )
    assert main(["plan", str(project.config)]) == EXIT_OK
    out = capsys.readouterr().out
    assert f"{MODEL} /v1/messages: queue budget 2,500 requests at once" in out, out
    assert "at most 1,000 per batch" in out and "no limit" not in out
    bare = claude_project(tmp_path / "bare", [claude("q0")])
    assert main(["plan", str(bare.config)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "no limit set: Anthropic limits its queue by requests" in out, out


def test_a_second_simulate_rehearsal_resumes_its_anthropic_batches(tmp_path: Path) -> None:
    """The rehearsal's simulator keeps Anthropic batches in its state directory, as it does
    OpenAI's: a second `--simulate` finds the batch the first left running, sends nothing
    again, and collects it."""
    rows = [claude(f"q{i}") for i in range(4)]
    project = claude_project(tmp_path, rows)
    assert project.build("--simulate", "--no-wait") == EXIT_PENDING
    (log,) = tmp_path.glob("**/simulator/log.jsonl")

    def creates() -> list[dict[str, Any]]:
        records = [json.loads(line) for line in log.read_text().splitlines()]
        return [r for r in records if r["op"] == "anthropic_batch"]

    assert len(creates()) == 1
    assert project.build("--simulate") == EXIT_OK
    assert len(creates()) == 1  # resumed, not sent again
    from gptbatch.config.rehearsal import SIMULATED_SUFFIX

    out = project.root / f"out{SIMULATED_SUFFIX}" / "requests.jsonl"
    got = [json.loads(line)["custom_id"] for line in out.read_text().splitlines()]
    assert got == [r["custom_id"] for r in rows]
