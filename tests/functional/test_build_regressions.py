"""Regressions from the build-engine review: each test is one reviewer's repro, made strict.

Stale state, transient recovery errors, stale `submitting` shards, the spend cap counting a
shard against itself, limits learned from refusals, oversized requests, vanished files,
output-name clashes and `status --explain` under a spend cap.
"""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import pytest
from buildkit import (
    Project,
    batch_count,
    batch_members,
    billed_ids,
    billed_twice,
    chat,
    creates,
    embedding,
    make_project,
    padded_chat,
    peak_in_flight,
    update_config,
    uploads,
    wait_until,
    write_jsonl,
)

from gptbatch.engine.collect import GONE_AFTER
from gptbatch.errors import (
    EXIT_BAD_INPUT,
    EXIT_FAILED_REQUESTS,
    EXIT_OK,
    EXIT_PENDING,
)
from gptbatch.inputs import tokens
from gptbatch.simulator import Fault

MODEL = "gpt-4o-mini"
PRICE = 1_000.0  # USD per 1M prompt tokens, so small shards have costs that are easy to compare


def ids(rows: list[dict]) -> list[str]:
    return [r["custom_id"] for r in rows]


def cost_of(reqs: list[dict]) -> float:
    """What gptbatch estimates `reqs` cost at PRICE (input only)."""
    return sum(tokens.estimate_request(r["url"], r["body"]).tokens for r in reqs) * PRICE / 1e6


def priced(**limits: object) -> dict[str, object]:
    """make_project keywords: PRICE for MODEL and the given limits."""
    return {"prices": {MODEL: {"input": PRICE, "output": 0.0}}, "limits": dict(limits)}


def crash_at(project: Project, point: str) -> None:
    """Run a build that kills itself with SIGKILL at `point`."""
    crashed = project.build_process(env={"GPTBATCH_CRASH_AT": point}, timeout=30)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr


def refused(sim) -> list[dict]:
    """Batches the service failed for lack of queue room."""
    return [
        b
        for b in sim.service.batches()
        if b["status"] == "failed"
        and any(e["code"].endswith("limit_exceeded") for e in b["errors"]["data"])
    ]


def all_completed(sim) -> bool:
    return all(b["status"] == "completed" for b in sim.service.batches())


# --- r6: a stale state directory restored from an older copy ------------------------------------


@pytest.mark.timeout(60)
def test_stale_state_copy_adopts_batches_instead_of_resubmitting(
    tmp_path: Path, simulator, capsys
) -> None:
    """CI restores an old .gptbatch/: a shard it has as `ready` is already at the API."""
    reqs = [padded_chat(f"r{i}") for i in range(10)]  # ~101 tokens each: shards of 6 and 4
    project = make_project(
        tmp_path,
        {"requests.jsonl": reqs},
        limits={"enqueued_tokens": 700, "safety_margin": 0.0, "pipeline": 1},
    )
    state = project.out / ".gptbatch"
    assert project.build("--no-wait") == EXIT_PENDING
    assert creates(simulator) == 1  # the second shard waits for queue room
    shutil.copytree(state, tmp_path / "cache")  # the cache CI saves after this run

    assert wait_until(lambda: all_completed(simulator))
    assert project.build("--no-wait") == EXIT_PENDING  # collects the first, submits the second
    assert creates(simulator) == 2

    shutil.rmtree(state)
    shutil.copytree(tmp_path / "cache", state)  # the next job restores the older cache
    capsys.readouterr()
    assert project.build() == EXIT_OK
    assert "0 batches submitted, 1 adopted" in capsys.readouterr().out
    assert creates(simulator) == batch_count(simulator) == 2
    assert billed_twice(simulator) == []
    assert sorted(billed_ids(simulator)) == sorted(ids(reqs))
    assert ids(project.output()) == ids(reqs)
    assert project.errors() == []


# --- r9: transient download errors while recovering a lost state -------------------------------


@pytest.mark.timeout(60)
def test_recovery_with_a_failing_download_retries_instead_of_resubmitting(
    tmp_path: Path, simulator_factory, capsys
) -> None:
    """The input file of an in-flight batch cannot be read: wait and retry, never resubmit."""
    sim = simulator_factory(time_scale=0.0)  # frozen: the batch stays in flight
    reqs = [chat(f"r{i}") for i in range(5)]
    project = make_project(tmp_path, {"requests.jsonl": reqs})
    assert project.build("--no-wait") == EXIT_PENDING
    assert batch_count(sim) == 1
    shutil.rmtree(project.out / ".gptbatch")

    sim.add_fault(Fault.drop_download(after_bytes=10, count=0))  # every download, for now
    capsys.readouterr()
    assert project.build("--no-wait") != EXIT_OK
    captured = capsys.readouterr()
    assert "will retry" in captured.err
    assert "0 batches submitted" in captured.out
    assert creates(sim) == batch_count(sim) == 1, "resubmitted work already at the API"
    assert sim.journal.count("GET", "/v1/files/") >= 1  # it did try to recover

    sim.clear_faults()
    sim.clock.time_scale = 10_000.0
    assert project.build() == EXIT_OK
    assert creates(sim) == batch_count(sim) == 1
    assert sorted(billed_ids(sim)) == sorted(ids(reqs))
    assert ids(project.output()) == ids(reqs)


@pytest.mark.timeout(60)
def test_recovery_survives_a_few_dropped_downloads(tmp_path: Path, simulator_factory) -> None:
    """The reviewer's repro: four dropped downloads during recovery, then a waiting build."""
    sim = simulator_factory(time_scale=0.0)
    reqs = [chat(f"r{i}") for i in range(5)]
    project = make_project(tmp_path, {"requests.jsonl": reqs})
    assert project.build("--no-wait") == EXIT_PENDING
    shutil.rmtree(project.out / ".gptbatch")
    sim.add_fault(Fault.drop_download(after_bytes=10, count=4))
    sim.clock.time_scale = 100.0
    first = project.build()
    if first != EXIT_OK:  # allowed to give up on this run, as long as the next one finishes
        assert project.build() == EXIT_OK
    assert creates(sim) == batch_count(sim) == 1
    assert billed_twice(sim) == []
    assert sorted(billed_ids(sim)) == sorted(ids(reqs))
    assert ids(project.output()) == ids(reqs)


# --- r13: an input edited after a kill at before_create ----------------------------------------


@pytest.mark.timeout(60)
def test_edit_after_kill_before_create_drops_the_stale_shard(tmp_path: Path, simulator) -> None:
    reqs = [chat(f"r{i}") for i in range(4)]
    old_r0 = reqs[0]
    project = make_project(tmp_path, {"requests.jsonl": reqs})
    crash_at(project, "before_create")
    assert batch_count(simulator) == 0 and uploads(simulator) == 1

    reqs[0] = chat("r0", "An edited question.")
    write_jsonl(project.input(), reqs)
    assert project.build() == EXIT_OK

    # The stale shard is released before planning, so the edited r0 joins the rest.
    assert creates(simulator) == batch_count(simulator) == 1
    sent = [r for rows in batch_members(simulator).values() for r in rows]
    assert old_r0 not in sent
    assert sorted(sent, key=lambda r: r["custom_id"]) == reqs  # the edited r0, once
    assert sorted(billed_ids(simulator)) == sorted(ids(reqs))
    assert ids(project.output()) == ids(reqs)


# --- r1, r1b: a spend cap between C and 2C and a shard left `submitting` -----------------------


@pytest.mark.timeout(60)
def test_spend_cap_after_kill_before_create_submits_the_shard(
    tmp_path: Path, simulator, capsys
) -> None:
    """The shard in `submitting` is not counted against itself; the cap still holds the next."""
    reqs = [chat(f"r{i}") for i in range(8)]
    project = make_project(tmp_path, {"requests.jsonl": reqs}, **priced(max_requests_per_batch=4))
    crash_at(project, "before_create")
    assert batch_count(simulator) == 0
    first, second = cost_of(reqs[:4]), cost_of(reqs[4:])
    cap = 1.5 * max(first, second)
    assert first + second > cap
    update_config(project, limits={"max_cost": cap})

    capsys.readouterr()
    assert project.build() == EXIT_PENDING  # one shard fits the cap, two do not
    out = capsys.readouterr().out
    assert "spend cap" in out
    assert creates(simulator) == batch_count(simulator) == 1
    billed = billed_ids(simulator)
    assert len(billed) == len(set(billed)) == 4
    assert sorted(ids(project.output())) == sorted(billed)

    update_config(project, limits={"max_cost": 3 * cap})
    assert project.build() == EXIT_OK
    assert creates(simulator) == batch_count(simulator) == 2
    assert sorted(billed_ids(simulator)) == sorted(ids(reqs))
    assert ids(project.output()) == ids(reqs)


@pytest.mark.timeout(60)
def test_spend_cap_after_a_failed_create_submits_the_shard(tmp_path: Path, simulator) -> None:
    """A 500 on batches.create leaves the shard `submitting`; the build still finishes."""
    simulator.add_fault(Fault.http(500, method="POST", path="/v1/batches", count=1))
    reqs = [chat(f"r{i}") for i in range(8)]
    project = make_project(
        tmp_path, {"requests.jsonl": reqs}, **priced(max_cost=1.5 * cost_of(reqs))
    )
    assert project.build() == EXIT_OK
    assert batch_count(simulator) == 1
    assert creates(simulator) == 2  # the refused call and one that worked
    assert uploads(simulator) == 1
    assert sorted(billed_ids(simulator)) == sorted(ids(reqs))
    assert ids(project.output()) == ids(reqs)


# --- r12, r11: queue limits the config does not state ------------------------------------------


@pytest.mark.timeout(60)
def test_token_limit_learned_from_refusal_when_none_is_configured(
    tmp_path: Path, simulator_factory
) -> None:
    sim = simulator_factory(token_limits={MODEL: 600})
    reqs = [padded_chat(f"r{i}") for i in range(10)]  # ~1,000 tokens in all
    project = make_project(tmp_path, {"requests.jsonl": reqs}, limits={"pipeline": 1})
    assert project.build() == EXIT_OK

    # One refusal teaches the limit (600, so 540 usable): the rest is repacked to fit it.
    assert len(refused(sim)) == 1
    assert creates(sim) == batch_count(sim) == 3
    members = batch_members(sim)
    weights = {
        b["id"]: float(
            sum(sim.service.prompt_tokens(r["url"], r["body"]) for r in members[b["id"]])
        )
        for b in sim.service.batches()
        if b["status"] == "completed"
    }
    assert peak_in_flight(sim, weights)[0] <= 600
    assert sorted(billed_ids(sim)) == sorted(ids(reqs))
    assert ids(project.output()) == ids(reqs)


@pytest.mark.timeout(60)
def test_request_limit_learned_from_refusal(tmp_path: Path, simulator_factory) -> None:
    sim = simulator_factory(request_limits={"text-embedding-3-small": 3})
    reqs = [embedding(f"e{i}") for i in range(5)]
    project = make_project(tmp_path, {"requests.jsonl": reqs})
    assert project.build() == EXIT_OK

    # One refusal states the limit (3 requests): 5 requests go as 3 + 2, one at a time.
    assert len(refused(sim)) == 1
    assert creates(sim) == batch_count(sim) == 3
    members = batch_members(sim)
    weights = {
        b["id"]: float(len(members[b["id"]]))
        for b in sim.service.batches()
        if b["status"] == "completed"
    }
    assert sorted(weights.values()) == [2.0, 3.0]
    assert peak_in_flight(sim, weights)[0] <= 3
    assert sorted(billed_ids(sim)) == sorted(ids(reqs))
    assert ids(project.output()) == ids(reqs)


# --- r2: a request larger than the enqueued-token limit ---------------------------------------


def assert_failed_for_good(project: Project, custom_id: str, line: int, printed: str) -> None:
    """The errors file names the request with file:line, and the build said so."""
    (error,) = project.errors()
    assert error["custom_id"] == custom_id
    assert f"requests.jsonl:{line}:" in error["error"]
    assert "split it" in error["error"]
    assert f"requests.jsonl:{line}:" in printed


@pytest.mark.timeout(60)
def test_request_over_the_configured_token_limit_stops_before_anything_is_billed(
    tmp_path: Path, simulator, capsys
) -> None:
    reqs = [padded_chat("small", 50), padded_chat("big", 900)]  # ~60 and ~910 tokens
    project = make_project(tmp_path, {"requests.jsonl": reqs}, limits={"enqueued_tokens": 500})
    capsys.readouterr()
    assert project.build() == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "requests.jsonl:2: request 'big': ~" in err
    assert "over the enqueued-token limit of 500 for gpt-4o-mini" in err
    assert "--keep-going" in err
    assert simulator.journal.calls == []  # knowable offline: the API was never called
    assert not project.out.exists()  # and nothing was written


@pytest.mark.timeout(60)
def test_request_over_the_configured_token_limit_fails_for_good_with_keep_going(
    tmp_path: Path, simulator, capsys
) -> None:
    reqs = [padded_chat("small", 50), padded_chat("big", 900)]  # ~60 and ~910 tokens
    project = make_project(tmp_path, {"requests.jsonl": reqs}, limits={"enqueued_tokens": 500})
    capsys.readouterr()
    assert project.build("--keep-going") == EXIT_FAILED_REQUESTS
    captured = capsys.readouterr()
    assert_failed_for_good(project, "big", 2, captured.out + captured.err)
    assert ids(project.output()) == ["small"]
    assert billed_ids(simulator) == ["small"]
    assert creates(simulator) == 1

    # Final: a rebuild (even without -k) sends nothing and says the same.
    assert project.build() == EXIT_FAILED_REQUESTS
    assert creates(simulator) == 1
    assert ids(project.errors()) == ["big"]


@pytest.mark.timeout(60)
def test_request_over_the_service_limit_fails_for_good_after_a_refusal(
    tmp_path: Path, simulator_factory, capsys
) -> None:
    """batch.yaml allows 100,000 tokens; the service holds 800 and says so when it refuses."""
    sim = simulator_factory(token_limits={MODEL: 800})
    reqs = [padded_chat("big", 900)] + [padded_chat(f"s{i}", 50) for i in range(3)]
    project = make_project(
        tmp_path, {"requests.jsonl": reqs}, limits={"enqueued_tokens": 100_000, "pipeline": 1}
    )
    capsys.readouterr()
    assert project.build() == EXIT_FAILED_REQUESTS
    captured = capsys.readouterr()
    assert_failed_for_good(project, "big", 1, captured.out + captured.err)
    assert ids(project.output()) == ["s0", "s1", "s2"]
    assert sorted(billed_ids(sim)) == ["s0", "s1", "s2"]
    assert len(refused(sim)) == 1
    assert creates(sim) == batch_count(sim) == 2

    assert project.build() == EXIT_FAILED_REQUESTS  # no rerun dies or resubmits
    assert creates(sim) == 2
    assert ids(project.output()) == ["s0", "s1", "s2"]


@pytest.mark.timeout(60)
def test_request_only_over_the_lowered_budget_is_sent_alone(
    tmp_path: Path, simulator_factory
) -> None:
    """Over the working budget (limit - 10%) but under the service's limit: a shard of one."""
    sim = simulator_factory(token_limits={MODEL: 800})
    big = padded_chat("big", 740)
    assert 720 < tokens.estimate_request(big["url"], big["body"]).tokens < 800
    assert sim.service.prompt_tokens(big["url"], big["body"]) < 800
    reqs = [big] + [padded_chat(f"s{i}", 50) for i in range(3)]
    project = make_project(
        tmp_path, {"requests.jsonl": reqs}, limits={"enqueued_tokens": 100_000, "pipeline": 1}
    )
    assert project.build() == EXIT_OK

    members = batch_members(sim)
    done = [members[b["id"]] for b in sim.service.batches() if b["status"] == "completed"]
    assert [ids(rows) for rows in done if "big" in ids(rows)] == [["big"]]
    assert len(refused(sim)) == 1
    assert creates(sim) == batch_count(sim) == 3
    assert sorted(billed_ids(sim)) == sorted(ids(reqs))
    assert ids(project.output()) == ids(reqs)
    assert project.errors() == []


# --- r3: an output file that is gone ------------------------------------------------------------


@pytest.mark.timeout(60)
def test_one_404_on_an_output_file_is_asked_again_not_paid_again(tmp_path: Path, simulator) -> None:
    reqs = [chat(f"r{i}") for i in range(4)]
    project = make_project(tmp_path, {"requests.jsonl": reqs})
    assert project.build("--no-wait") == EXIT_PENDING
    assert wait_until(lambda: all_completed(simulator))
    simulator.add_fault(Fault.http(404, method="GET", path="/v1/files/*/content", count=1))

    assert project.build() == EXIT_OK
    # One 404 is a blip until it repeats: the file is fetched again, nothing is rebilled.
    assert creates(simulator) == batch_count(simulator) == 1
    assert all(n == 1 for n in simulator.journal.billed_counts().values())
    assert sorted(simulator.journal.billed_counts()) == sorted(ids(reqs))
    assert ids(project.output()) == ids(reqs)
    assert project.errors() == []


@pytest.mark.timeout(60)
def test_output_files_always_404_are_waited_for_not_paid_again(tmp_path: Path, simulator) -> None:
    """Every output file 404s while the API still lists it: the build neither crashes nor
    pays again (issue 15, item 5: it used to re-buy after 3 404s and give up); each pass
    ends pending, and the results are collected once the file is served."""
    simulator.add_fault(Fault.http(404, method="GET", path="/v1/files/*/content", count=0))
    reqs = [chat(f"r{i}") for i in range(3)]
    project = make_project(tmp_path, {"requests.jsonl": reqs}, retries=1)
    assert project.build("--no-wait") == EXIT_PENDING
    assert wait_until(lambda: all_completed(simulator))
    for _ in range(GONE_AFTER + 1):
        assert project.build("--no-wait") == EXIT_PENDING
    assert creates(simulator) == batch_count(simulator) == 1
    assert all(n == 1 for n in simulator.journal.billed_counts().values())
    assert project.errors() == []
    simulator.clear_faults()
    assert project.build() == EXIT_OK
    assert creates(simulator) == 1
    assert ids(project.output()) == ids(reqs)


# --- r7: two inputs that would write one output -----------------------------------------------


@pytest.mark.timeout(60)
def test_output_name_clash_refused_before_submitting(tmp_path: Path, simulator, capsys) -> None:
    project = make_project(tmp_path, {"a/x.jsonl": [chat("a1")], "b/x.jsonl": [chat("b1")]})
    capsys.readouterr()
    assert project.build() == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "x.jsonl" in err and "rename" in err
    assert creates(simulator) == uploads(simulator) == 0
    assert billed_ids(simulator) == []
    assert not (project.out / "x.jsonl").exists()


# --- r5: status --explain under a spend cap ----------------------------------------------------


@pytest.mark.timeout(60)
def test_explain_names_the_spend_cap(tmp_path: Path, simulator, capsys) -> None:
    reqs = [chat(f"r{i}") for i in range(3)]
    project = make_project(
        tmp_path, {"requests.jsonl": reqs}, **priced(max_cost=cost_of(reqs[:1]) / 2)
    )
    assert project.build() == EXIT_PENDING
    assert creates(simulator) == 0
    capsys.readouterr()
    assert project.cli("status", "--explain", "--limit", "0") == EXIT_PENDING
    out = capsys.readouterr().out
    for cid in ids(reqs):
        (line,) = [x for x in out.splitlines() if f": {cid}: " in x]
        assert "spend cap" in line and "max_cost" in line, line
