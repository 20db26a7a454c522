"""Batch API prices: the dated table shipped in the package, config overrides, cost estimates."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType

# A dated snapshot of a model: gpt-4o-mini-2024-07-18, gpt-4-0613. Only these resolve to the
# base model's price: o3-mini or gpt-4-32k are other models with other prices, not o3 or gpt-4.
_SNAPSHOT = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{4})$")
TOKENS_PER_UNIT = 1_000_000  # prices are per 1M tokens


@dataclass(frozen=True)
class Price:
    """A model's Batch API price in US dollars per 1M tokens, and where it came from."""

    model: str  # the table or config entry that matched
    input: float
    output: float
    source: str  # "config" or "table"


@dataclass(frozen=True)
class PriceTable:
    """The price table shipped with gptbatch."""

    as_of: str
    source: str
    models: Mapping[str, Mapping[str, float]]


@functools.lru_cache(maxsize=1)
def price_table() -> PriceTable:
    """The packaged price table (read once; immutable)."""
    text = resources.files("gptbatch").joinpath("data/prices.json").read_text(encoding="utf-8")
    raw = json.loads(text)
    models = {
        name: MappingProxyType({k: float(v) for k, v in entry.items()})
        for name, entry in raw["models"].items()
    }
    return PriceTable(raw["as_of"], raw["source"], MappingProxyType(models))


def _match(model: str, names: Mapping[str, object]) -> str | None:
    """The entry for model: exact, or the base of a dated snapshot (longest first)."""
    if model in names:
        return model
    best: str | None = None
    for name in names:
        snapshot = model.startswith(name) and _SNAPSHOT.fullmatch(model[len(name) :])
        if snapshot and (best is None or len(name) > len(best)):
            best = name
    return best


def price_for(
    model: str | None, overrides: Mapping[str, Mapping[str, float]] | None = None
) -> Price | None:
    """The Batch API price of model: config overrides first, then the packaged table."""
    if not model:
        return None
    for source, table in (("config", overrides or {}), ("table", price_table().models)):
        name = _match(model, table)
        if name is not None:
            entry = table[name]
            return Price(name, float(entry["input"]), float(entry.get("output", 0.0)), source)
    return None


def estimate_cost(
    model: str | None,
    input_tokens: int,
    output_tokens: int = 0,
    overrides: Mapping[str, Mapping[str, float]] | None = None,
) -> float | None:
    """US dollars for these tokens at Batch API prices; None when the model has no price."""
    price = price_for(model, overrides)
    if price is None:
        return None
    return (input_tokens * price.input + output_tokens * price.output) / TOKENS_PER_UNIT


def usd(amount: float) -> str:
    """Dollars with enough digits to tell small amounts apart, never in e-notation."""
    if amount >= 100:
        return f"${amount:,.2f}"
    if amount >= 0.01 or amount == 0:
        return f"${amount:.4f}"
    return f"${amount:.8f}".rstrip("0")
