"""Tests for gptbatch.pricing: the dated Batch API price table, snapshot names, overrides."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest

import gptbatch
from gptbatch.pricing import estimate_cost, price_for, price_table

TABLE = Path(gptbatch.__file__).parent / "data" / "prices.json"

# Published standard prices (US dollars per 1M tokens: input, output); the Batch API is half.
STANDARD = {
    "gpt-5": (1.25, 10.00),
    "gpt-5-mini": (0.25, 2.00),
    "gpt-5-nano": (0.05, 0.40),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "o3": (2.00, 8.00),
    "o4-mini": (1.10, 4.40),
    "o1": (15.00, 60.00),
    "gpt-4-turbo": (10.00, 30.00),
    "gpt-4": (30.00, 60.00),
    "gpt-3.5-turbo": (0.50, 1.50),
    "text-embedding-3-small": (0.02, 0.0),
    "text-embedding-3-large": (0.13, 0.0),
    "text-embedding-ada-002": (0.10, 0.0),
    "omni-moderation-latest": (0.0, 0.0),
}


def test_table_is_dated_and_sourced() -> None:
    raw = json.loads(TABLE.read_text())
    assert datetime.date.fromisoformat(raw["as_of"]) <= datetime.date.today()
    assert raw["source"]
    assert price_table().as_of == raw["as_of"]


@pytest.mark.parametrize("model", sorted(STANDARD))
def test_batch_price_is_half_the_standard_price(model: str) -> None:
    price = price_for(model)
    assert price is not None and price.source == "table"
    standard_in, standard_out = STANDARD[model]
    assert price.input == pytest.approx(standard_in / 2)
    assert price.output == pytest.approx(standard_out / 2)


@pytest.mark.parametrize(
    ("snapshot", "base"),
    [
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4-0613", "gpt-4"),
        ("gpt-3.5-turbo-0125", "gpt-3.5-turbo"),
        ("gpt-4-turbo-2024-04-09", "gpt-4-turbo"),
        ("omni-moderation-2024-09-26", "omni-moderation"),
    ],
)
def test_dated_snapshots_resolve_to_their_model(snapshot: str, base: str) -> None:
    price = price_for(snapshot)
    assert price is not None
    assert price.model == base


@pytest.mark.parametrize("model", ["o3-mini", "gpt-4-32k", "gpt-5-pro", "gpt-4.5-preview", "x"])
def test_other_models_sharing_a_prefix_are_not_guessed(model: str) -> None:
    assert price_for(model) is None
    assert estimate_cost(model, 1000) is None


def test_a_longer_name_is_never_priced_as_a_shorter_one() -> None:
    mini, full = price_for("gpt-4o-mini"), price_for("gpt-4o")
    assert mini is not None and full is not None
    assert mini.input < full.input


def test_overrides_win_and_cover_snapshots() -> None:
    overrides = {"gpt-4o-mini": {"input": 1.0, "output": 2.0}, "my-model": {"input": 3.0}}
    price = price_for("gpt-4o-mini-2024-07-18", overrides)
    assert price is not None
    assert (price.input, price.output, price.source) == (1.0, 2.0, "config")
    custom = price_for("my-model", overrides)
    assert custom is not None and (custom.input, custom.output) == (3.0, 0.0)
    # Models without an override still come from the table.
    table = price_for("gpt-4o", overrides)
    assert table is not None and table.source == "table"


def test_estimate_cost_is_tokens_times_price_per_million() -> None:
    price = price_for("gpt-4.1")
    assert price is not None
    cost = estimate_cost("gpt-4.1", 3_000_000, 500_000)
    assert cost == pytest.approx(3 * price.input + 0.5 * price.output)
    assert estimate_cost("gpt-4.1", 0) == 0.0
    assert estimate_cost("omni-moderation-latest", 10_000_000) == 0.0
    assert estimate_cost(None, 10) is None


# Claude and Gemini: standard prices as published (input, output); the batch price is half.
OTHER_STANDARD = {
    "claude-sonnet-4-5": (3.0, 15.0),
    "claude-haiku-4-5": (1.0, 5.0),
    "claude-opus-4-5": (5.0, 25.0),
    "claude-sonnet-4": (3.0, 15.0),
    "claude-3-5-haiku": (0.8, 4.0),
    "gemini-2.5-flash": (0.30, 2.50),
}


@pytest.mark.parametrize("model", sorted(OTHER_STANDARD))
def test_claude_and_gemini_batch_prices_are_half_the_standard(model: str) -> None:
    price = price_for(model)
    assert price is not None and price.source == "table"
    assert (price.input, price.output) == pytest.approx(tuple(p / 2 for p in OTHER_STANDARD[model]))


def test_every_claude_and_gemini_entry_names_its_source() -> None:
    raw = json.loads(TABLE.read_text())
    others = {n: e for n, e in raw["models"].items() if n.startswith(("claude-", "gemini-"))}
    assert len(others) >= 10
    assert all(e["source"] in raw["sources"] for e in others.values())


def test_claude_snapshots_resolve_and_cached_input_is_priced() -> None:
    price = price_for("claude-3-5-haiku-20241022")
    assert price is not None and price.model == "claude-3-5-haiku"
    assert price_for("claude-opus-4-1-20250805").model == "claude-opus-4-1"  # type: ignore[union-attr]
    # 1M prompt tokens of which 400k cached, 0 output: 600k at 0.40 + 400k at 0.08.
    assert estimate_cost("claude-3-5-haiku", 1_000_000, 0, cached_tokens=400_000) == pytest.approx(
        0.6 * 0.4 + 0.4 * 0.08
    )
    # Without a cached-input price, cached tokens go at the input price (an upper bound).
    assert estimate_cost("gpt-4o", 1000, 0, cached_tokens=500) == estimate_cost("gpt-4o", 1000)
    over = {"m": {"input": 1.0, "output": 2.0, "cached_input": 0.5}}
    assert estimate_cost("m", 1_000_000, 0, over, cached_tokens=1_000_000) == pytest.approx(0.5)


def test_claude_cache_reads_and_writes_count_as_input() -> None:
    from gptbatch.engine.usage import result_usage

    usage = {
        "input_tokens": 100,
        "cache_read_input_tokens": 1000,
        "cache_creation_input_tokens": 50,
        "output_tokens": 10,
    }
    body = {"model": "claude-3-5-haiku-20241022", "usage": usage}
    u = result_usage({"response": {"status_code": 200, "body": body}})
    assert (u.input, u.cached, u.output) == (1150, 1000, 10)
    # a cache write costs 1.25x the input price (the 5-minute cache, with no breakdown)
    assert u.cost == pytest.approx((150 * 0.4 + 1000 * 0.08 + 10 * 2.0 + 50 * 0.25 * 0.4) / 1e6)
    # by TTL: the hour's cache writes cost 2x the input price
    usage["cache_creation"] = {"ephemeral_5m_input_tokens": 20, "ephemeral_1h_input_tokens": 30}
    u = result_usage({"response": {"status_code": 200, "body": body}})
    extra = (20 * 0.25 + 30 * 1.0) * 0.4
    assert u.cost == pytest.approx((150 * 0.4 + 1000 * 0.08 + 10 * 2.0 + extra) / 1e6)
    # export prices the row the same way
    from gptbatch.commands.export import export_row
    from gptbatch.state.rows import RequestRow, ResultRow

    line = json.dumps({"custom_id": "c", "response": {"status_code": 200, "body": body}})
    request = RequestRow("in.jsonl", 0, 1, 0, 1, "k", "c", "claude-3-5-haiku-20241022",
                         "/v1/messages", 1, 1, 1, None, None)  # fmt: skip
    row = export_row(request, ResultRow("k", "ok", 1, line, None, "b"), "in.jsonl")
    assert row.cost == pytest.approx(u.cost)
