"""Issue 15, items 4 and 11: learned queue limits are evidence with an age, and the spend
cap of `--max-cost` is per run, said once, naming where it was set."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from buildkit import (
    billed_ids,
    billed_twice,
    creates,
    json_events,
    make_project,
    padded_chat,
    update_config,
)

from gptbatch import tokens
from gptbatch.errors import EXIT_OK, EXIT_PENDING

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
