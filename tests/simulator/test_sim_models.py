"""The simulator's own model catalogue: what the simulated API serves, apart from the client."""

from __future__ import annotations

import pytest

from gptbatch.pricing import known_model, price_table
from gptbatch.simulator.models import catalogue, served


@pytest.mark.parametrize(
    "model",
    ["gpt-4o-mini", "gpt-4o-mini-2024-07-18", "gpt-4-0613", "ft:gpt-4o-mini:org::abc", "o3-mini"],
)
def test_served_models(model: str) -> None:
    assert served(model)


@pytest.mark.parametrize("model", ["gpt-4o-mnii", "gpt-4o-mini-latest-ish", "ft:", "", "claude-3"])
def test_made_up_models_are_not_served(model: str) -> None:
    assert not served(model)


def test_the_simulator_serves_what_the_client_calls_known() -> None:
    """Two implementations, one data file: they must agree, or validate and the rehearsal
    would disagree about a model."""
    table = price_table()
    names = sorted({*table.models, *table.unpriced})
    assert set(names) == set(catalogue()) and len(names) > 20
    probes = names + [f"{n}-2025-01-31" for n in names] + [f"{n}x" for n in names]
    assert [served(m) for m in probes] == [known_model(m) for m in probes]
