"""What a build would do, offline: requests, tokens, shards and cost per model and endpoint."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptbatch.config.spec import Spec
from gptbatch.errors import InputError, ItemTooLarge, Problem
from gptbatch.inputs.requests import Request
from gptbatch.inputs.scan import ScannedRequest, Scanner, ScanOptions
from gptbatch.pricing import Price, estimate_cost, price_for, price_table
from gptbatch.shards import Caps, Item, Packer, batch_caps
from gptbatch.state.store import Store

# Endpoints whose responses are not billed as generated tokens.
NO_OUTPUT_ENDPOINTS = frozenset({"/v1/embeddings", "/v1/moderations"})
_OUTPUT_LIMITS = ("max_completion_tokens", "max_output_tokens", "max_tokens")
_UNKNOWN_IMAGE = re.compile(r"image of unknown size at .+?: counted as (.+)")


@dataclass(frozen=True)
class Caveat:
    """A doubt about the token estimate, and how many times it applied."""

    text: str
    count: int


@dataclass(frozen=True)
class GroupPlan:
    """One (model, endpoint) batch group: what it holds and what it would cost."""

    model: str | None
    endpoint: str
    requests: int
    tokens: int  # estimated prompt tokens
    shards: int
    token_cap: int | None  # estimated tokens per shard; None: no enqueued-token limit
    price: Price | None
    input_cost: float | None  # None: no price known for the model
    output_tokens_max: int | None  # None: some request sets no output limit
    output_cost_max: float | None  # None: unknown (no price, or no output limit)
    unbounded_requests: int  # requests without max_tokens / max_completion_tokens / ...
    caveats: tuple[Caveat, ...]


@dataclass(frozen=True)
class Plan:
    """The plan for a whole config, with totals."""

    config: str
    groups: tuple[GroupPlan, ...]
    prices_as_of: str
    prices_source: str
    # requests planned per input path (a data target's: how many of its rows it would send)
    per_input: Mapping[str, int] = field(default_factory=dict)

    @property
    def requests(self) -> int:
        return sum(g.requests for g in self.groups)

    @property
    def tokens(self) -> int:
        return sum(g.tokens for g in self.groups)

    @property
    def shards(self) -> int:
        return sum(g.shards for g in self.groups)

    @property
    def input_cost(self) -> float | None:
        """Total input cost, or None if any group has no price."""
        costs = [g.input_cost for g in self.groups]
        return None if any(c is None for c in costs) else sum(c for c in costs if c is not None)

    @property
    def output_cost_max(self) -> float | None:
        """Upper bound of the total output cost, or None if any group's is unknown."""
        costs = [g.output_cost_max for g in self.groups]
        return None if any(c is None for c in costs) else sum(c for c in costs if c is not None)

    def to_json(self) -> dict[str, Any]:
        """The plan as JSON-ready data (what `gptbatch plan --json` prints)."""
        return {
            "config": self.config,
            "prices": {"as_of": self.prices_as_of, "source": self.prices_source},
            "groups": [
                {
                    "model": g.model,
                    "endpoint": g.endpoint,
                    "requests": g.requests,
                    "tokens": g.tokens,
                    "shards": g.shards,
                    "token_cap": g.token_cap,
                    "price": None
                    if g.price is None
                    else {
                        "model": g.price.model,
                        "input": g.price.input,
                        "output": g.price.output,
                        "source": g.price.source,
                    },
                    "input_cost": g.input_cost,
                    "output_tokens_max": g.output_tokens_max,
                    "output_cost_max": g.output_cost_max,
                    "unbounded_requests": g.unbounded_requests,
                    "caveats": [{"text": c.text, "count": c.count} for c in g.caveats],
                }
                for g in self.groups
            ],
            "totals": {
                "requests": self.requests,
                "tokens": self.tokens,
                "shards": self.shards,
                "input_cost": self.input_cost,
                "output_cost_max": self.output_cost_max,
            },
        }


def output_limit(url: str, body: Mapping[str, Any]) -> int | None:
    """Most completion tokens a request can be billed for; None when it sets no limit."""
    if url in NO_OUTPUT_ENDPOINTS:
        return 0
    limit = next(
        (
            body[name]
            for name in _OUTPUT_LIMITS
            if isinstance(body.get(name), int) and not isinstance(body.get(name), bool)
        ),
        None,
    )
    config = body.get("generationConfig")  # Gemini's GenerateContentRequest
    if limit is None and isinstance(config, dict):
        given = config.get("maxOutputTokens")
        limit = given if isinstance(given, int) and not isinstance(given, bool) else None
    if limit is None:
        return None
    # n choices (and best_of candidates on /v1/completions) are each billed.
    copies = [body.get("n"), body.get("best_of") if url == "/v1/completions" else None]
    factor = max([c for c in copies if isinstance(c, int) and c > 0] or [1])
    return limit * factor


def caveat_key(caveat: str) -> str:
    """A caveat without the request-specific part, so equal doubts are counted together."""
    match = _UNKNOWN_IMAGE.fullmatch(caveat)
    if match:
        return f"image of unknown size counted as {match.group(1)}"
    return caveat


@dataclass
class _Tally:
    model: str | None
    endpoint: str
    packer: Packer
    token_cap: int | None
    requests: int = 0
    tokens: int = 0
    shards: int = 0
    output_max: int = 0
    unbounded: int = 0
    caveats: Counter[str] = field(default_factory=Counter)


def _caps(spec: Spec, model: str | None, url: str) -> Caps:
    """The per-shard caps a build would use (mirrors the build engine's steady state: a
    k-th of the working budget, k = limits.pipeline; a build's last shards are smaller)."""
    limits = spec.limits
    budget = limits.token_budget(model or "")
    return batch_caps(
        url,
        None if budget is None else max(1, budget // max(1, limits.pipeline)),
        max_requests=limits.max_requests_per_batch,
        max_bytes=limits.max_bytes_per_batch,
        enqueued_requests=limits.request_limit(model or ""),
    )


def _fits_alone(spec: Spec, req: ScannedRequest, nbytes: int) -> bool:
    """Does a request fit a batch of its own (every cap but the pipelined token share)?"""
    caps = _caps(spec, req.model, req.url)
    return nbytes <= caps.max_bytes and (caps.max_inputs is None or req.inputs <= caps.max_inputs)


def _too_large(spec: Spec, req: ScannedRequest, exc: ItemTooLarge) -> Problem:
    if exc.dimension == "tokens":
        # The whole working budget, not a pipelined shard's share of it: a build sends a
        # request over the share alone, so only one over the budget can never be sent.
        model = req.model or ""
        limit = spec.limits.token_limit(model)
        budget = spec.limits.token_budget(model)
        margin = f"{spec.limits.safety_margin:.0%}"
        return Problem(
            req.path,
            req.line,
            f"request {req.custom_id!r} needs ~{exc.value:,} prompt tokens, more than the "
            f"~{budget if budget is not None else exc.cap:,} the batch queue may hold at once "
            f"for {req.model or 'its model'} (limits.enqueued_tokens {limit or 0:,} less the "
            f"{margin} safety margin)",
            "shorten the request, or raise limits.enqueued_tokens if your tier allows more",
        )
    return Problem(
        req.path,
        req.line,
        f"request {req.custom_id!r} has {exc.value:,} {exc.dimension}, more than the "
        f"{exc.cap:,} one batch may hold",
        "shrink the request, or raise the matching limit in batch.yaml",
    )


def upload_facts(req: Request, line: bytes | None = None) -> tuple[int, int | None]:
    """(bytes of the line a build uploads, with its newline; output_limit): per request.

    A scanner's extra hook, which also passes the raw line (not needed here).
    """
    return len(req.canonical_line()) + 1, output_limit(req.url, req.body)


def make_plan(spec: Spec, skip: Callable[[str], bool] | None = None) -> Plan:
    """Stream every request of spec and plan its shards and cost; raise InputError on bad input.

    skip(key) leaves out requests a build would not send (done, or in flight): `make -n`.
    """
    settled = None if skip is None else (lambda keys: {k for k in keys if skip(k)})
    return make_plans(spec, settled)[0]


def make_plans(
    spec: Spec, settled: Callable[[list[str]], Collection[str]] | None = None
) -> tuple[Plan, Plan]:
    """What a build would send now and the whole workload, from one read of the inputs.

    settled(keys): those of keys a build would leave alone (done, or in flight), asked a
    few hundred at a time; None: no state, both plans are the whole workload. Raises
    InputError on bad input: the problems of what would be sent first, then any other.
    """
    now, whole = _Plan(spec), _Plan(spec) if settled is not None else None
    options = ScanOptions(model=spec.model, endpoint=spec.endpoint, extra=upload_facts)
    scanner = Scanner(spec.inputs, options)
    pending: list[ScannedRequest] = []

    def flush() -> None:
        done = settled([r.key for r in pending]) if settled is not None else ()
        for req in pending:
            if req.key not in done:
                now.add(req)
            if whole is not None:
                whole.add(req)
        pending.clear()

    try:
        for req in scanner.requests():
            pending.append(req)
            if len(pending) >= _ASK_AT_ONCE:
                flush()
        flush()
    except InputError as exc:  # bad lines: report them with any oversized requests
        raise InputError(exc.problems + now.problems, truncated=exc.truncated) from None
    for tally in (now, whole or now):
        if tally.problems:
            raise InputError(tally.problems[:50], truncated=max(0, len(tally.problems) - 50))
    scanner.commit_counts()
    planned = now.plan()
    return planned, whole.plan() if whole is not None else planned


_ASK_AT_ONCE = 500  # keys per settled() question


class _Plan:
    """The tallies of one plan, a request at a time."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.tallies: dict[tuple[str | None, str], _Tally] = {}
        self.per_input: Counter[str] = Counter()
        self.problems: list[Problem] = []

    def add(self, req: ScannedRequest) -> None:
        spec = self.spec
        key = (req.model, req.url)
        tally = self.tallies.get(key)
        if tally is None:
            caps = _caps(spec, req.model, req.url)
            tally = _Tally(req.model, req.url, Packer(caps), caps.max_tokens)
            self.tallies[key] = tally
        nbytes, bound = req.extra
        try:
            tally.shards += len(tally.packer.add(Item(req.key, req.tokens, nbytes, req.inputs)))
        except ItemTooLarge as exc:  # report every one, then fail
            budget = spec.limits.token_budget(req.model or "")
            alone = budget is not None and exc.dimension == "tokens" and req.tokens <= budget
            if not alone or not _fits_alone(spec, req, nbytes):
                self.problems.append(_too_large(spec, req, exc))
                return
            tally.shards += 1  # over a pipelined shard's share: a build sends it alone
        tally.requests += 1
        self.per_input[req.path] += 1
        tally.tokens += req.tokens
        if bound is None:
            tally.unbounded += 1
        else:
            tally.output_max += bound
        tally.caveats.update(caveat_key(c) for c in req.caveats)

    def plan(self) -> Plan:
        spec = self.spec
        table = price_table()
        groups = []
        for tally in self.tallies.values():
            tally.shards += len(tally.packer.finish())
            price = price_for(tally.model, spec.prices)
            output_known = tally.unbounded == 0
            groups.append(
                GroupPlan(
                    model=tally.model,
                    endpoint=tally.endpoint,
                    requests=tally.requests,
                    tokens=tally.tokens,
                    shards=tally.shards,
                    token_cap=tally.token_cap,
                    price=price,
                    input_cost=estimate_cost(tally.model, tally.tokens, 0, spec.prices),
                    output_tokens_max=tally.output_max if output_known else None,
                    output_cost_max=None
                    if price is None or not output_known
                    else tally.output_max * price.output / 1_000_000,
                    unbounded_requests=tally.unbounded,
                    caveats=tuple(Caveat(t, n) for t, n in sorted(tally.caveats.items())),
                )
            )
        return Plan(str(spec.path), tuple(groups), table.as_of, table.source, dict(self.per_input))


@dataclass(frozen=True)
class SampledPrice:
    """A data target priced from the actual usage of its rows built by `build --sample`."""

    target: str
    sampled: int  # rows with a result whose cost is known
    mean_cost: float  # US dollars a row, at Batch API prices
    pending: int  # its rows a build would send now
    pending_cost: float
    rows: int  # all its rows
    whole_cost: float


def sample_prices(spec: Spec, store: Store, plan: Plan) -> list[SampledPrice]:
    """Each data target a `build --sample` built part of (the state holds fewer of its rows
    than it has, some with results, and some rows are still to send), priced from the mean
    actual cost of the rows built: the rest and the whole at that cost a row."""
    from gptbatch.commands.export import export_row

    out = []
    for target in spec.data_targets:
        path = spec.targets[target.name]
        pending = plan.per_input.get(str(path), 0)
        synced = priced = 0
        total = 0.0
        for request, result in store.request_results(str(path)):
            synced += 1
            cost = export_row(request, result, "", spec.prices).cost
            if cost is not None:
                priced, total = priced + 1, total + cost
        rows = _line_count(path)
        if not priced or not pending or synced >= rows:
            continue
        mean = total / priced
        out.append(
            SampledPrice(target.name, priced, mean, pending, mean * pending, rows, mean * rows)
        )
    return out


def _line_count(path: Path) -> int:
    """How many lines a rendered file has (0 if it cannot be read)."""
    try:
        with open(path, "rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    except OSError:
        return 0
