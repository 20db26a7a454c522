"""`plan` after `build --sample`: the rest and the whole priced from the sample's actual usage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from buildkit import billed_ids
from test_data_targets import data_project

from gptbatch.cli import main
from gptbatch.errors import EXIT_OK


def test_plan_prices_a_sampled_target_from_the_samples_usage(
    tmp_path: Path, simulator, capsys
) -> None:
    project = data_project(tmp_path)
    config = str(project.config)
    assert main(["plan", config]) == EXIT_OK
    assert "sampled rows' usage" not in capsys.readouterr().out  # nothing built: as before
    assert project.build("--sample", "2") == EXIT_OK
    sent = [i for i in billed_ids(simulator) if i.startswith("rv")]
    assert len(sent) == 2
    capsys.readouterr()
    assert main(["export", config]) == EXIT_OK
    costs = [
        r["cost"]
        for r in map(json.loads, capsys.readouterr().out.splitlines())
        if r["custom_id"] in sent
    ]
    mean = sum(costs) / 2
    assert mean > 0
    assert main(["plan", config, "--json"]) == EXIT_OK
    doc = json.loads(capsys.readouterr().out)
    [priced] = doc["sampled"]
    assert priced["target"] == "sentiment" and priced["sampled"] == 2
    assert priced["pending"] == 4 and priced["rows"] == 6
    assert priced["mean_cost"] == pytest.approx(mean)
    assert priced["pending_cost"] == pytest.approx(4 * mean)
    assert priced["whole_cost"] == pytest.approx(6 * mean)
    assert main(["plan", config]) == EXIT_OK
    out = capsys.readouterr().out
    assert "target sentiment: priced from 2 sampled rows' usage" in out, out
    assert "for the 4 rows to send" in out and "for all 6" in out, out
    # the full build: nothing left to price from a sample, the plan is as before
    assert project.build() == EXIT_OK
    assert sorted(i for i in billed_ids(simulator) if i.startswith("rv")) == [
        f"rv{i}" for i in range(6)
    ]
    capsys.readouterr()
    assert main(["plan", config, "--json"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["sampled"] == []
