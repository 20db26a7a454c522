"""Named OpenAI-compatible services (groq, together, perplexity), each against a simulator
serving its wire quirks, through the real openai SDK over HTTP.

Per preset: a build, an edit billing one request, a no-op billing none, a lost state with
batches ended and in flight paying nothing twice, and a status gptbatch does not know
stopping the build (naming it) without sending anything again.
"""

from __future__ import annotations

import shutil
import signal
from pathlib import Path
from typing import Any

import openai
import pytest
from buildkit import (
    PROVIDER_KILL_POINTS,
    Project,
    batch_count,
    batch_members,
    billed_ids,
    billed_twice,
    chat,
    creates,
    make_project,
    padded_chat,
    update_config,
    write_jsonl,
)
from test_build_fault_matrix import INTERRUPTED_UPLOAD, KINDS, ROUTES, route_faults

from gptbatch.config.spec import load_spec
from gptbatch.errors import (
    EXIT_BAD_INPUT,
    EXIT_ERROR,
    EXIT_FAILED_REQUESTS,
    EXIT_OK,
    EXIT_PENDING,
)
from gptbatch.simulator import Fault

PRESETS = ("groq", "together", "perplexity")
KEYS = {"groq": "GROQ_API_KEY", "together": "TOGETHER_API_KEY", "perplexity": "PERPLEXITY_API_KEY"}


def preset_project(
    tmp_path: Path, name: str, sim: Any, rows: list[dict[str, Any]], monkeypatch, **config: Any
) -> Project:
    monkeypatch.setenv(KEYS[name], f"{name}-test-key")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # the preset's own key is the one used
    return make_project(
        tmp_path,
        {"requests.jsonl": rows},
        api={"provider": name, "base_url": sim.base_url},
        **config,
    )


@pytest.mark.parametrize("name", PRESETS)
def test_build_edit_one_line_and_a_no_op(tmp_path: Path, simulator_factory, monkeypatch, name):
    sim = simulator_factory(flavour=name)
    rows = [chat(f"r{i}") for i in range(10)]
    project = preset_project(tmp_path, name, sim, rows, monkeypatch)
    assert project.build() == EXIT_OK
    assert [o["custom_id"] for o in project.output()] == [r["custom_id"] for r in rows]
    assert all(o["response"]["status_code"] == 200 for o in project.output())
    assert sorted(billed_ids(sim)) == sorted(r["custom_id"] for r in rows)
    rows[4] = chat("r4", "Something else entirely.")
    write_jsonl(project.input(), rows)
    assert project.build() == EXIT_OK
    assert len(billed_ids(sim)) == 11 and billed_ids(sim)[-1] == "r4"
    calls = len(sim.journal.calls)
    assert project.build() == EXIT_OK
    assert len(billed_ids(sim)) == 11
    assert len(sim.journal.calls) == calls  # a no-op asks the API nothing
    assert project.output()[4]["custom_id"] == "r4"


@pytest.mark.parametrize("name", PRESETS)
def test_lost_state_with_batches_ended_and_in_flight_pays_nothing_twice(
    tmp_path: Path, simulator_factory, monkeypatch, name
) -> None:
    sim = simulator_factory(flavour=name, validating_seconds=120.0)  # ~1.2 s in validating
    rows = [chat(f"r{i}") for i in range(6)]
    project = preset_project(
        tmp_path, name, sim, rows, monkeypatch, limits={"max_requests_per_batch": 3}
    )
    assert project.build() == EXIT_OK  # 2 batches, ended
    rows += [chat(f"r{i}") for i in range(6, 12)]
    write_jsonl(project.input(), rows)
    assert project.build("--no-wait") == EXIT_PENDING  # 2 more, in flight
    assert batch_count(sim) == 4
    assert any(b["status"] == "validating" for b in sim.service.batches())
    shutil.rmtree(project.out / ".gptbatch")
    (project.out / "requests.jsonl").unlink()
    assert project.build() == EXIT_OK
    assert billed_twice(sim) == []
    assert sorted(billed_ids(sim)) == sorted(r["custom_id"] for r in rows)
    assert batch_count(sim) == 4  # the in-flight ones were waited for, not sent again
    assert [o["custom_id"] for o in project.output()] == [r["custom_id"] for r in rows]


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("state", ["kept", "lost"])
def test_an_unknown_status_stops_the_build_and_sends_nothing_again(
    tmp_path: Path, simulator_factory, monkeypatch, capsys, name, state
) -> None:
    sim = simulator_factory(flavour=name, validating_seconds=60.0)
    rows = [chat(f"r{i}") for i in range(4)]
    project = preset_project(tmp_path, name, sim, rows, monkeypatch)
    assert project.build("--no-wait") == EXIT_PENDING
    (batch,) = sim.service.batches()
    sim.report_status(batch["id"], "PAUSED_FOR_REVIEW")  # a status the service grew
    if state == "lost":
        shutil.rmtree(project.out / ".gptbatch")
    made = creates(sim)
    capsys.readouterr()
    assert project.build() == EXIT_ERROR
    err = capsys.readouterr().err
    assert "'PAUSED_FOR_REVIEW'" in err and batch["id"] in err and name in err
    assert creates(sim) == made and batch_count(sim) == 1  # nothing was sent again
    sim.report_status(batch["id"], None)  # the service says something known again
    assert project.build() == EXIT_OK
    assert billed_twice(sim) == [] and batch_count(sim) == 1
    assert sorted(billed_ids(sim)) == sorted(r["custom_id"] for r in rows)


def test_together_quirks_on_the_wire(tmp_path: Path, simulator_factory, monkeypatch) -> None:
    sim = simulator_factory(flavour="together")
    rows = [chat(f"r{i}") for i in range(3)] + [chat("bad")]
    sim.add_fault(Fault.request_error("bad", status=400, message="bad request"))
    project = preset_project(tmp_path, "together", sim, rows, monkeypatch)
    assert project.build() == EXIT_FAILED_REQUESTS  # "bad" failed for good
    # The simulator refuses OpenAI's purpose, so the upload used Together's own ...
    client = openai.OpenAI(api_key="k", base_url=sim.base_url, max_retries=0)
    assert [f.purpose for f in client.files.list(purpose="batch-api")] == ["batch-api"]
    with pytest.raises(openai.BadRequestError, match="batch-api"):
        client.files.create(file=("x.jsonl", b"{}\n"), purpose="batch")
    # ... statuses came in upper case, and the failed request came from the error file.
    (batch,) = client.batches.list().data
    assert batch.status == "COMPLETED" and batch.error_file_id
    assert [o["custom_id"] for o in project.output()] == ["r0", "r1", "r2"]
    assert [e["custom_id"] for e in project.errors()] == ["bad"]
    assert "bad request" in str(project.errors()[0])


def test_perplexity_is_never_sent_the_expiries_it_rejects(
    tmp_path: Path, simulator_factory, monkeypatch, capsys
) -> None:
    sim = simulator_factory(flavour="perplexity")
    client = openai.OpenAI(api_key="k", base_url=sim.base_url, max_retries=0)
    with pytest.raises(openai.BadRequestError, match="expires_after"):
        client.files.create(
            file=("x.jsonl", b"{}\n"),
            purpose="batch",
            expires_after={"anchor": "created_at", "seconds": 7200},
        )
    project = preset_project(tmp_path, "perplexity", sim, [chat("a")], monkeypatch)
    assert project.build() == EXIT_OK  # upload_expires_after's default was not sent
    (upload,) = [f for f in sim.service.files() if f["purpose"] == "batch"]
    assert upload["expires_at"] - upload["created_at"] == 30 * 86_400  # its own rule
    update_config(project, upload_expires_after=7200)
    capsys.readouterr()
    assert project.cli("validate") == EXIT_BAD_INPUT
    assert "upload_expires_after: perplexity rejects it" in capsys.readouterr().err
    update_config(project, upload_expires_after=2_592_000)
    update_config(project, output_expires_after=86_400)
    capsys.readouterr()
    assert project.cli("validate") == EXIT_BAD_INPUT
    assert "output_expires_after: perplexity rejects it" in capsys.readouterr().err


def test_preset_defaults_caps_and_windows(tmp_path: Path, capsys) -> None:
    project = make_project(tmp_path, {"requests.jsonl": [chat("a")]}, api={"provider": "groq"})
    spec = load_spec(project.config)
    assert spec.api.base_url == "https://api.groq.com/openai/v1"
    assert spec.api.api_key_env == "GROQ_API_KEY"
    assert spec.limits.max_bytes_per_batch == 100_000_000
    update_config(project, completion_window="7d")
    assert load_spec(project.config).completion_window == "7d"  # Groq takes 24h to 7d
    update_config(project, completion_window="8d")
    capsys.readouterr()
    assert project.cli("validate") == EXIT_BAD_INPUT
    assert "completion_window '8d' is not offered by groq" in capsys.readouterr().err
    update_config(project, api={"provider": "together"}, completion_window="48h")
    assert project.cli("validate") == EXIT_BAD_INPUT
    assert "not offered by together: use 24h" in capsys.readouterr().err
    update_config(project, completion_window="24h", limits={"max_bytes_per_batch": 150_000_000})
    assert project.cli("validate") == EXIT_BAD_INPUT
    assert "over together's cap of 100,000,000 bytes" in capsys.readouterr().err


def test_mistral_is_a_config_error_that_says_why(tmp_path: Path, capsys) -> None:
    project = make_project(tmp_path, {"requests.jsonl": [chat("a")]}, api={"provider": "mistral"})
    assert project.cli("validate") == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "api.provider mistral is not supported" in err and "/v1/batch/jobs" in err


def test_groq_rehearses_a_longer_window_with_simulate(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("GROQ_API_KEY", raising=False)
    project = make_project(
        tmp_path,
        {"requests.jsonl": [chat(f"r{i}") for i in range(3)]},
        api={"provider": "groq"},
        completion_window="48h",
    )
    assert project.build("--simulate") == EXIT_OK
    out = tmp_path / "out-simulated" / "requests.jsonl"
    assert out.exists()


@pytest.mark.parametrize("name", ["together", "perplexity"])
def test_simulate_serves_the_presets_quirks(tmp_path: Path, monkeypatch, name) -> None:
    monkeypatch.delenv(KEYS[name], raising=False)
    project = make_project(
        tmp_path, {"requests.jsonl": [chat(f"r{i}") for i in range(3)]}, api={"provider": name}
    )
    assert project.build("--simulate") == EXIT_OK


def rotating(cells: list[Any]) -> list[Any]:
    """Every (preset, cell) pair; the default suite runs each cell with one preset, turn
    about, and `-m slow` runs them all (the suite must stay under 10 minutes on 2 cores)."""
    return [
        pytest.param(
            name,
            *(cell if isinstance(cell, tuple) else (cell,)),
            marks=() if PRESETS[i % len(PRESETS)] == name else pytest.mark.slow,
            id=f"{name}-{'-'.join(cell) if isinstance(cell, tuple) else cell}",
        )
        for i, cell in enumerate(cells)
        for name in PRESETS
    ]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("name", "point"), rotating(list(PROVIDER_KILL_POINTS)))
def test_kill_then_rerun_pays_nothing_twice(
    tmp_path: Path, simulator_factory, monkeypatch, name: str, point: str
) -> None:
    sim = simulator_factory(flavour=name)
    rows = [chat(f"r{i}") for i in range(6)]
    project = preset_project(
        tmp_path, name, sim, rows, monkeypatch, limits={"max_requests_per_batch": 3}
    )
    run = project.build_process(env={"GPTBATCH_CRASH_AT": f"{point}:1"}, timeout=90)
    assert run.returncode == -signal.SIGKILL, run.stderr[-2000:]
    rerun = project.build_process(timeout=90)
    assert rerun.returncode == EXIT_OK, rerun.stderr[-2000:]
    assert billed_twice(sim) == []
    assert sorted(billed_ids(sim)) == sorted(r["custom_id"] for r in rows)  # none lost
    assert [o["custom_id"] for o in project.output()] == [r["custom_id"] for r in rows]


FAULT_CELLS = [(route, kind) for route in ROUTES for kind in KINDS]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("name", "route", "kind"), rotating(FAULT_CELLS))
def test_route_fault_matrix(
    tmp_path: Path, simulator_factory, monkeypatch, name: str, route: str, kind: str
) -> None:
    """The fault matrix of test_build_fault_matrix.py, against each preset's flavour."""
    sim = simulator_factory(flavour=name)
    faults = route_faults(route, kind)
    for fault in (INTERRUPTED_UPLOAD if route == "find_upload" else ()) + faults:
        sim.add_fault(fault)
    reqs = [padded_chat(f"r{i}", 90) for i in range(4)]
    project = preset_project(
        tmp_path,
        name,
        sim,
        reqs,
        monkeypatch,
        limits={"enqueued_tokens": 260, "safety_margin": 0, "pipeline": 1},
    )
    assert project.build() == EXIT_OK
    assert sim.service.faults() == [], "the fault did not fire in full"
    assert billed_twice(sim) == []
    assert sorted(billed_ids(sim)) == sorted(r["custom_id"] for r in reqs)
    statuses = {b["id"]: b["status"] for b in sim.service.batches()}
    live = {k: v for k, v in batch_members(sim).items() if statuses[k] != "failed"}
    assert len(live) == 2, "a shard went to the API twice"
    assert [o["custom_id"] for o in project.output()] == [r["custom_id"] for r in reqs]
    before = creates(sim)
    assert project.build() == EXIT_OK
    assert creates(sim) == before
