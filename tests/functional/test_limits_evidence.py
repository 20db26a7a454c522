"""Issue 15, items 4 and 11: learned queue limits are evidence with an age, and the spend
cap of `--max-cost` is per run, said once, naming where it was set."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from buildkit import (
    batch_members,
    billed_ids,
    billed_twice,
    chat,
    creates,
    json_events,
    make_project,
    padded_chat,
    peak_in_flight,
    submissions,
    update_config,
    write_jsonl,
)

from gptbatch.errors import EXIT_FAILED_REQUESTS, EXIT_OK, EXIT_PENDING
from gptbatch.inputs import tokens
from gptbatch.simulator import Fault

MODEL = "gpt-4o-mini"
PRICE = 1_000.0  # USD per 1M prompt tokens: ~100-token requests cost ~$0.10 each


def cost_of(reqs: list[dict]) -> float:
    """What gptbatch estimates `reqs` cost at PRICE (input only)."""
    return sum(tokens.estimate_request(r["url"], r["body"]).tokens for r in reqs) * PRICE / 1e6


# --- item 11: -B --max-cost --------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_max_cost_caps_what_this_run_commits_and_says_so_once(
    tmp_path: Path, simulator, capsys
) -> None:
    """After a full build, `-B --max-cost` for ~2.5 shards sends two shards again (not none
    because of what earlier runs spent), says so once, naming --max-cost, and exits 3."""
    reqs = [padded_chat(f"r{i}") for i in range(40)]
    project = make_project(
        tmp_path,
        {"requests.jsonl": reqs},
        limits={"max_requests_per_batch": 4},
        prices={MODEL: {"input": PRICE, "output": 0.0}},
    )
    assert project.build() == EXIT_OK
    first = creates(simulator)
    assert first == 10
    capsys.readouterr()

    cap = round(2.5 * cost_of(reqs[:4]), 6)  # two shards of 4, not three
    assert project.build("-B", "--max-cost", str(cap)) == EXIT_PENDING
    captured = capsys.readouterr()
    assert creates(simulator) - first == 2
    assert len(billed_ids(simulator)) == 40 + 8  # what -B asked for, within the cap
    said = [x for x in captured.err.splitlines() if "spend cap" in x]
    assert len(said) == 1, captured.err
    assert "--max-cost" in said[0] and "limits.max_cost" not in said[0], said[0]
    assert "this run committed" in said[0]
    stopped = [x for x in captured.out.splitlines() if x.startswith("stopped:")]
    assert len(stopped) == 1 and "--max-cost" in stopped[0], captured.out


@pytest.mark.timeout(60)
def test_config_spend_cap_is_named_with_its_file(tmp_path: Path, simulator, capsys) -> None:
    """limits.max_cost stays a cap on the project's committed spend; the message names the
    config file, and it is said once however many shards wait."""
    reqs = [padded_chat(f"r{i}") for i in range(40)]
    project = make_project(
        tmp_path,
        {"requests.jsonl": reqs},
        limits={"max_requests_per_batch": 4, "max_cost": round(1.5 * cost_of(reqs[:4]), 6)},
        prices={MODEL: {"input": PRICE, "output": 0.0}},
    )
    assert project.build() == EXIT_PENDING
    err = capsys.readouterr().err
    assert creates(simulator) == 1
    said = [x for x in err.splitlines() if "spend cap" in x]
    assert len(said) == 1, err
    assert "limits.max_cost in batch.yaml" in said[0], said[0]
    assert re.search(r"would cost \$[0-9.]+", said[0])
    assert not billed_twice(simulator)


# --- item 4: a learned limit is evidence with an age --------------------------------------------


def ids(rows: list[dict]) -> list[str]:
    return [r["custom_id"] for r in rows]


def estimated(sim) -> dict[str, float]:
    """batch id -> prompt tokens of its input file, by gptbatch's own estimator."""
    return {
        bid: float(sum(tokens.estimate_request(r["url"], r["body"]).tokens for r in rows))
        for bid, rows in batch_members(sim).items()
    }


def queue_line(text: str) -> str:
    (line,) = [x for x in text.splitlines() if "queue limit" in x and MODEL in x]
    return line


def learn_300(tmp_path: Path, simulator_factory, capsys):
    """A project whose config allows 2,000 enqueued tokens; the service says 300 once."""
    sim = simulator_factory(token_limits={MODEL: 300})
    sim.add_fault(Fault.queue_full(count=1))  # a 429 at create stating 300, whatever the timing
    small = [padded_chat(f"s{i}") for i in range(6)]
    project = make_project(
        tmp_path,
        {"requests.jsonl": small},
        limits={"enqueued_tokens": 2_000, "safety_margin": 0.1},
    )
    assert project.build("--json") == EXIT_OK
    events = json_events(capsys.readouterr().out)
    assert [e for e in events if e["event"] == "budget" and e["new"] <= 270]
    return sim, project, small


@pytest.mark.timeout(90)
def test_raising_the_config_overrides_a_learned_limit(
    tmp_path: Path, simulator_factory, capsys
) -> None:
    """One refusal at Limit 300; the service and the config are raised: the budget rises and
    requests of ~490 tokens go through (they used to exit 2 "over the limit of 300")."""
    sim, project, small = learn_300(tmp_path, simulator_factory, capsys)
    assert project.cli("status") == EXIT_OK
    line = queue_line(capsys.readouterr().out)
    assert "enqueued tokens 300 (learned from a refusal at " in line, line
    assert project.cli("plan") == 0
    line = queue_line(capsys.readouterr().out)
    assert "enqueued tokens 300 (learned from a refusal at " in line, line

    sim.service.set_token_limit(MODEL, 10_000)
    big = [padded_chat(f"b{i}", 480) for i in range(4)]
    assert all(tokens.estimate_request(r["url"], r["body"]).tokens > 300 for r in big)
    write_jsonl(project.input(), small + big)
    update_config(project, limits={"enqueued_tokens": 5_000})
    before = set(estimated(sim))
    assert project.build("--json") == EXIT_OK
    events = json_events(capsys.readouterr().out)
    (start,) = [e for e in events if e["event"] == "start"]
    assert start["budgets"][MODEL] == 4_500  # the config's, not the learned 270
    assert sorted(billed_ids(sim)) == sorted(ids(small + big)) and not billed_twice(sim)
    new = [w for b, w in estimated(sim).items() if b not in before]
    assert len(new) == 4 and min(new) > 300  # each over the learned limit, none refused
    assert not [e for e in events if e["event"] == "refused"]
    assert project.cli("status") == EXIT_OK
    line = queue_line(capsys.readouterr().out)
    assert "enqueued tokens 5,000 (from limits.enqueued_tokens in the config)" in line, line


@pytest.mark.timeout(90)
def test_a_request_over_a_stale_learned_limit_is_tried_once(
    tmp_path: Path, simulator_factory, capsys
) -> None:
    """Config unchanged; the service's limit has risen since a refusal taught 300: a request
    of ~490 tokens is tried, goes through, and is billed once."""
    sim, project, small = learn_300(tmp_path, simulator_factory, capsys)
    sim.service.set_token_limit(MODEL, 2_000)
    big = padded_chat("big", 480)
    write_jsonl(project.input(), [*small, big])
    assert project.build() == EXIT_OK
    assert sorted(billed_ids(sim)) == sorted(ids([*small, big])) and not billed_twice(sim)
    assert ids(project.output()) == ids([*small, big])


@pytest.mark.timeout(90)
def test_a_request_refused_at_its_own_size_fails_for_good(
    tmp_path: Path, simulator_factory, capsys
) -> None:
    """The service still holds 300: the big request is sent once, refused at its size, and
    fails for good (file:line, what to do); the rest is built, and a rerun sends nothing."""
    sim, project, small = learn_300(tmp_path, simulator_factory, capsys)
    more = [padded_chat(f"t{i}") for i in range(2)]
    big = padded_chat("big", 480)
    write_jsonl(project.input(), [*small, big, *more])
    assert project.build() == EXIT_FAILED_REQUESTS
    captured = capsys.readouterr()
    assert submissions(sim, "big") == 1
    (error,) = project.errors()
    assert error["custom_id"] == "big"
    assert "requests.jsonl:7:" in error["error"] and "split it" in error["error"]
    assert "requests.jsonl:7:" in captured.err
    assert sorted(billed_ids(sim)) == sorted(ids(small + more)) and not billed_twice(sim)
    calls = creates(sim)
    assert project.build() == EXIT_FAILED_REQUESTS
    assert creates(sim) == calls


@pytest.mark.timeout(120)
def test_a_learned_limit_decays_instead_of_shrinking_the_budget_for_good(
    tmp_path: Path, simulator_factory, capsys
) -> None:
    """The issue's "budget 1,800 -> 270 through 40 later batches": one 429 says Limit 300
    though the service holds 2,000. After later batches complete, the learned limit is
    re-probed one batch at a time, and the budget climbs back without a flood of refusals."""
    sim = simulator_factory(token_limits={MODEL: 2_000})
    sim.add_fault(Fault.queue_full(300, count=1))
    reqs = [padded_chat(f"r{i}") for i in range(70)]
    project = make_project(
        tmp_path,
        {"requests.jsonl": reqs},
        limits={"enqueued_tokens": 2_000, "safety_margin": 0.1},
    )
    assert project.build("--json") == EXIT_OK
    events = json_events(capsys.readouterr().out)
    budgets = [e["new"] for e in events if e["event"] == "budget"]
    low = budgets.index(min(budgets))
    assert min(budgets) <= 270
    after = budgets[low:]
    assert after == sorted(after) and max(after) > 300, budgets  # rises past the stated 300
    assert [e for e in events if e["event"] == "summary"][-1]["refusals"] == 1
    assert sorted(billed_ids(sim)) == sorted(ids(reqs)) and not billed_twice(sim)


@pytest.mark.timeout(90)
def test_raising_the_config_overrides_a_learned_request_limit(
    tmp_path: Path, simulator_factory, capsys
) -> None:
    """A refusal stated a request limit of 3; service and config raised to 50: batches of
    more than 3 requests go again."""
    sim = simulator_factory(request_limits={MODEL: 3})
    first = [chat(f"a{i}") for i in range(8)]
    project = make_project(
        tmp_path,
        {"requests.jsonl": first},
        limits={"enqueued_requests": {MODEL: 10}, "max_requests_per_batch": 5},
    )
    assert project.build() == EXIT_OK
    before = set(batch_members(sim))
    assert project.cli("status") == EXIT_OK
    line = queue_line(capsys.readouterr().out)
    assert "enqueued requests 3 (learned from a refusal at " in line, line

    sim.service.set_request_limit(MODEL, 50)
    second = [chat(f"b{i}") for i in range(20)]
    write_jsonl(project.input(), first + second)
    update_config(project, limits={"enqueued_requests": {MODEL: 50}})
    assert project.build() == EXIT_OK
    new = [len(rows) for b, rows in batch_members(sim).items() if b not in before]
    assert max(new) == 5, new
    assert sorted(billed_ids(sim)) == sorted(ids(first + second)) and not billed_twice(sim)


@pytest.mark.timeout(150)
def test_re_probing_a_true_limit_costs_one_refusal_per_probe_not_a_flood(
    tmp_path: Path, simulator_factory, capsys
) -> None:
    """The service really holds 300. After a first run taught it and ran long enough for it
    to decay, the next run re-probes it one batch at a time: a refused probe teaches 300
    again, so refusals stay few (not one per pipelined shard) and nothing is lost."""
    sim = simulator_factory(token_limits={MODEL: 300})
    first = [padded_chat(f"a{i}") for i in range(50)]
    project = make_project(
        tmp_path,
        {"requests.jsonl": first},
        limits={"enqueued_tokens": 2_000, "safety_margin": 0.1},
    )
    assert project.build() == EXIT_OK
    assert len(sim.service.batches()) >= 40  # enough completions for the limit to decay
    capsys.readouterr()
    assert project.cli("status") == EXIT_OK
    assert "decaying" in queue_line(capsys.readouterr().out)

    second = [padded_chat(f"b{i}") for i in range(50)]
    write_jsonl(project.input(), first + second)
    before = set(estimated(sim))
    assert project.build("--json") == EXIT_OK
    events = json_events(capsys.readouterr().out)
    summary = [e for e in events if e["event"] == "summary"][-1]
    assert summary["refusals"] <= 2, summary  # no flood: at most a refused probe or two
    # Probed: more than the learned budget (270) was in flight at once, by our estimate.
    later = {b: w for b, w in estimated(sim).items() if b not in before}
    assert peak_in_flight(sim, later)[0] > 270
    assert sorted(billed_ids(sim)) == sorted(ids(first + second)) and not billed_twice(sim)
    assert ids(project.output()) == ids(first + second)
