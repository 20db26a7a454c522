"""Batch API prices: the dated table shipped in the package, config overrides, cost estimates."""

from __future__ import annotations

import difflib
import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType

# A dated snapshot of a model: gpt-4o-mini-2024-07-18, gpt-4-0613, claude-haiku-4-5-20251001
# (Claude's carry 8 digits). Only these resolve to the base model's price: o3-mini or
# gpt-4-32k are other models with other prices, not o3 or gpt-4.
_SNAPSHOT = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8}|\d{4})$")
TOKENS_PER_UNIT = 1_000_000  # prices are per 1M tokens


@dataclass(frozen=True)
class Price:
    """A model's Batch API price in US dollars per 1M tokens, and where it came from."""

    model: str  # the table or config entry that matched
    input: float
    output: float
    source: str  # "config" or "table"
    cached_input: float | None = None  # cached prompt tokens; None: at the input price


@dataclass(frozen=True)
class PriceTable:
    """The price table shipped with gptbatch."""

    as_of: str
    source: str
    models: Mapping[str, Mapping[str, float]]
    unpriced: tuple[str, ...] = ()  # real models the table has no Batch API price for


@functools.lru_cache(maxsize=1)
def price_table() -> PriceTable:
    """The packaged price table (read once; immutable)."""
    text = resources.files("gptbatch").joinpath("data/prices.json").read_text(encoding="utf-8")
    raw = json.loads(text)
    models = {  # an entry's other keys (its "source") are for people reading the file
        name: MappingProxyType(
            {k: float(v) for k, v in entry.items() if isinstance(v, int | float)}
        )
        for name, entry in raw["models"].items()
    }
    unpriced = tuple(raw.get("known_without_price", ()))
    return PriceTable(raw["as_of"], raw["source"], MappingProxyType(models), unpriced)


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
            cached = entry.get("cached_input")
            return Price(
                name,
                float(entry["input"]),
                float(entry.get("output", 0.0)),
                source,
                float(cached) if cached is not None else None,
            )
    return None


def known_model(model: str, overrides: Mapping[str, object] | None = None) -> bool:
    """Whether model is one gptbatch knows: the price table, its snapshots, the config's prices.

    A fine-tune (ft:BASE:org:name:id) is known when its base is.
    """
    table = price_table()
    names: dict[str, object] = {**dict.fromkeys(table.unpriced), **table.models}
    names.update(overrides or {})
    if model.startswith("ft:") and model.count(":") >= 2:
        model = model.split(":")[1]
    return _match(model, names) is not None


def closest_known(model: str, overrides: Mapping[str, object] | None = None) -> str | None:
    """The known model name closest to an unknown one (a likely typo), if any is close."""
    if not model or known_model(model, overrides):
        return None
    table = price_table()
    names = sorted({*table.models, *table.unpriced, *(overrides or {})})
    close = difflib.get_close_matches(model, names, n=1, cutoff=0.8)
    return close[0] if close else None


def unknown_model_hint(model: str, overrides: Mapping[str, object] | None = None) -> str | None:
    """None for a known model; else what to say: the closest known name, if one is close.

    Only a warning: a real model newer than the table must still work.
    """
    if not model or known_model(model, overrides):
        return None
    close = closest_known(model, overrides)
    if close:
        return f"unknown model '{model}': did you mean {close}?"
    table = price_table()
    return (
        f"unknown model '{model}': not in gptbatch's model list (prices as of {table.as_of}); "
        "check its spelling (a real model gptbatch does not list still works)"
    )


def estimate_cost(
    model: str | None,
    input_tokens: int,
    output_tokens: int = 0,
    overrides: Mapping[str, Mapping[str, float]] | None = None,
    cached_tokens: int = 0,
) -> float | None:
    """US dollars for these tokens at Batch API prices; None when the model has no price.

    cached_tokens (part of input_tokens) go at the cached-input price where the table or
    config gives one, else at the input price (an upper bound)."""
    price = price_for(model, overrides)
    return None if price is None else cost_at(price, input_tokens, output_tokens, cached_tokens)


def cost_at(price: Price, input_tokens: int, output_tokens: int, cached_tokens: int = 0) -> float:
    """US dollars for these tokens at this price; cached_tokens (part of input_tokens) at
    its cached-input price, else at the input price (an upper bound)."""
    cached = max(0, min(cached_tokens, input_tokens))
    rate = price.cached_input if price.cached_input is not None else price.input
    spent = (input_tokens - cached) * price.input + cached * rate + output_tokens * price.output
    return spent / TOKENS_PER_UNIT


def usd(amount: float) -> str:
    """Dollars with enough digits to tell small amounts apart, never in e-notation."""
    if amount >= 100:
        return f"${amount:,.2f}"
    if amount >= 0.01 or amount == 0:
        return f"${amount:.4f}"
    return f"${amount:.8f}".rstrip("0")
