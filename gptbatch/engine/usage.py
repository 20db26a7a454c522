"""Tokens used and money spent, read from the results' `usage`, priced at Batch API rates.

Results are accounted once each, in the order the store recorded them (a rowid watermark),
and the project's running totals move in the same transaction, so a kill never counts a
result twice or loses one; a no-op build reads nothing. The collector accounts the lines it
writes as it writes them (`add_written`); `account` catches up with any other.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from gptbatch.pricing import TOKENS_PER_UNIT, Price, cost_at, price_for
from gptbatch.state.store import Store

_META_TOTAL = "usage_total"
_META_THROUGH = "usage_through"


@dataclass(frozen=True)
class Usage:
    """Token counts of some results and what they cost (None: a model has no known price)."""

    requests: int = 0
    input: int = 0
    cached: int = 0
    output: int = 0
    reasoning: int = 0
    cost: float | None = 0.0
    unpriced: tuple[str, ...] = field(default_factory=tuple)

    def fields(self) -> tuple[Any, ...]:
        """The fields in order: Usage(*u.fields()) == u (dataclasses.astuple took 9 us, a
        deep copy, for each result line a worker prepared)."""
        return (
            self.requests,
            self.input,
            self.cached,
            self.output,
            self.reasoning,
            self.cost,
            self.unpriced,
        )

    def __add__(self, other: Usage) -> Usage:
        cost = None if self.cost is None or other.cost is None else self.cost + other.cost
        return Usage(
            self.requests + other.requests,
            self.input + other.input,
            self.cached + other.cached,
            self.output + other.output,
            self.reasoning + other.reasoning,
            cost,
            tuple(sorted(set(self.unpriced) | set(other.unpriced))),
        )

    def __sub__(self, other: Usage) -> Usage:
        cost = None if self.cost is None or other.cost is None else self.cost - other.cost
        return Usage(
            self.requests - other.requests,
            self.input - other.input,
            self.cached - other.cached,
            self.output - other.output,
            self.reasoning - other.reasoning,
            cost,
            tuple(u for u in self.unpriced if u not in other.unpriced),
        )


def _int(value: Any) -> int:
    return value if isinstance(value, int) else 0


def gemini_usage(meta: Any) -> dict[str, Any] | None:
    """Gemini's usageMetadata in OpenAI's terms: thinking tokens are billed as output."""
    if not isinstance(meta, dict):
        return None
    thoughts = _int(meta.get("thoughtsTokenCount"))
    return {
        "input_tokens": _int(meta.get("promptTokenCount")),
        "output_tokens": _int(meta.get("candidatesTokenCount")) + thoughts,
        "input_tokens_details": {"cached_tokens": _int(meta.get("cachedContentTokenCount"))},
        "output_tokens_details": {"reasoning_tokens": thoughts},
    }


# What Claude's prompt-cache writes cost beyond the input price, per token written: a
# 5-minute cache write is 1.25x the input price, an hour's 2x (Anthropic's pricing page,
# prompt caching; the batch discount applies to both, as to the input price it multiplies).
_WRITE_PREMIUM = {"ephemeral_5m_input_tokens": 0.25, "ephemeral_1h_input_tokens": 1.0}


def cache_write_premium(usage: Any) -> float:
    """Input-token equivalents a Claude usage's cache writes cost beyond the input price
    (0 for any other usage). Without the per-TTL breakdown, writes are the default 5-minute
    kind."""
    if not isinstance(usage, dict):
        return 0.0
    written = _int(usage.get("cache_creation_input_tokens"))
    if not written:
        return 0.0
    detail = usage.get("cache_creation")
    if isinstance(detail, dict) and any(k in detail for k in _WRITE_PREMIUM):
        return sum(_int(detail.get(k)) * extra for k, extra in _WRITE_PREMIUM.items())
    return written * _WRITE_PREMIUM["ephemeral_5m_input_tokens"]


def usage_cost(price: Price, inputs: int, output: int, cached: int, raw: Any = None) -> float:
    """US dollars for a result's tokens at this price, Claude's cache writes (in raw, its
    usage as the API gave it) at their own rates."""
    return cost_at(price, inputs, output, cached) + (
        cache_write_premium(raw) * price.input / TOKENS_PER_UNIT
    )


def anthropic_usage(usage: dict[str, Any]) -> dict[str, Any]:
    """A Claude usage in OpenAI's terms: its input_tokens leave out the prompt-cache reads
    and writes, which count as input here (reads as cached; writes as input, their premium
    added by usage_cost)."""
    read = _int(usage.get("cache_read_input_tokens"))
    written = _int(usage.get("cache_creation_input_tokens"))
    if not read and not written:
        return usage
    return {
        **usage,
        "input_tokens": _int(usage.get("input_tokens")) + read + written,
        "input_tokens_details": {"cached_tokens": read},
    }


def line_usage(line: str, prices: Mapping[str, Mapping[str, float]] | None = None) -> Usage:
    """The usage and cost of one Batch API result line (chat, responses, embeddings, ...)."""
    try:
        obj = json.loads(line)
    except ValueError:
        return Usage(requests=1)
    return result_usage(obj, prices)


def price_lookup(
    prices: Mapping[str, Mapping[str, float]] | None = None,
) -> Callable[[str | None], Price | None]:
    """price_for under these prices, each model's answer kept: a collector prices every
    result line, and a batch's lines name one model or a few."""
    known: dict[str | None, Price | None] = {}

    def lookup(model: str | None) -> Price | None:
        try:
            return known[model]
        except KeyError:
            price = known[model] = price_for(model, prices)
            return price

    return lookup


def result_usage(
    obj: Any,
    prices: Mapping[str, Mapping[str, float]] | None = None,
    *,
    lookup: Callable[[str | None], Price | None] | None = None,
) -> Usage:
    """The usage and cost of one result line, parsed (lookup: price_lookup(prices))."""
    try:
        body = (obj.get("response") or {}).get("body") or {}
    except AttributeError:
        return Usage(requests=1)
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict) and isinstance(body, dict):
        usage = gemini_usage(body.get("usageMetadata"))
    if not isinstance(usage, dict):
        return Usage(requests=1)
    raw, usage = usage, anthropic_usage(usage)
    inputs = _int(usage.get("prompt_tokens", usage.get("input_tokens")))
    output = _int(usage.get("completion_tokens", usage.get("output_tokens")))
    in_details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
    out_details = usage.get("completion_tokens_details") or usage.get("output_tokens_details") or {}
    cached = _int(in_details.get("cached_tokens")) if isinstance(in_details, dict) else 0
    reasoning = _int(out_details.get("reasoning_tokens")) if isinstance(out_details, dict) else 0
    model = body.get("model", body.get("modelVersion"))  # modelVersion: Gemini's
    model = model if isinstance(model, str) else None
    price = lookup(model) if lookup is not None else price_for(model, prices)
    if price is None:
        return Usage(1, inputs, cached, output, reasoning, None, (model or "(no model)",))
    cost = usage_cost(price, inputs, output, cached, raw)
    return Usage(1, inputs, cached, output, reasoning, cost)


def project_usage(store: Store) -> Usage:
    """The running totals of every result accounted so far."""
    raw = store.get_meta(_META_TOTAL)
    if not raw:
        return Usage()
    data = json.loads(raw)
    data["unpriced"] = tuple(data.get("unpriced", ()))
    return Usage(**data)


def account(store: Store, prices: Mapping[str, Mapping[str, float]] | None = None) -> Usage:
    """Add results recorded since the last call to the project's totals; return the totals."""
    through = int(store.get_meta(_META_THROUGH) or 0)
    total = project_usage(store)
    with store.transaction():
        last = through
        for rowid, line in store.ok_lines_after(through):
            total = total + line_usage(line, prices)
            last = rowid
        if last != through:
            store.set_meta(_META_THROUGH, str(last))
            store.set_meta(_META_TOTAL, json.dumps(asdict(total), sort_keys=True))
    return total


def add_written(store: Store, spent: Usage) -> None:
    """Add the usage of results this transaction wrote, and account every result row so far.

    The collector calls `account` first in the same transaction, so every row before its
    own writes is accounted already; it passes the usage of the ok lines it wrote (parsed
    once, while classifying them), and no line is read back.
    """
    assert store.db.in_transaction
    store.set_meta(_META_THROUGH, str(store.last_result_rowid()))
    if spent.requests:
        total = project_usage(store) + spent
        store.set_meta(_META_TOTAL, json.dumps(asdict(total), sort_keys=True))
