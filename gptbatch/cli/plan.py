"""`gptbatch plan [CONFIG] [--json]`: requests, tokens, shards and cost per model, offline."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

from gptbatch.cli.common import add_simulate_flag, load_chosen_spec
from gptbatch.commands.plan import GroupPlan, Plan, SampledPrice, make_plans, sample_prices
from gptbatch.engine.budget import ModelLimits, queue_limits
from gptbatch.inputs.where import filtered_out
from gptbatch.pricing import closest_known
from gptbatch.report import plural, shown
from gptbatch.state.store import Store, state_dir


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "plan",
        epilog="example: gptbatch plan batch.yaml --json",
        help="show requests, prompt tokens, shards and estimated cost per model, offline",
        description="Like `make -n`: what `build` would send now (requests with no result "
        "and not in flight, per the build state) per model and endpoint: requests, estimated "
        "prompt tokens, shards and the estimated cost at Batch API prices, beside the totals "
        "of the whole workload. Offline.",
    )
    parser.add_argument(
        "config", nargs="?", default=None, metavar="CONFIG", help="default: ./batch.yaml"
    )
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.add_argument(
        "--all",
        action="store_true",
        help="plan the whole workload, ignoring what earlier builds did",
    )
    add_simulate_flag(parser, "plan against the `build --simulate` rehearsal's state instead")
    parser.set_defaults(func=run)


def money(value: float | None) -> str:
    """Dollars, with more digits for small sums; "unknown" for None."""
    if value is None:
        return "unknown"
    if value == 0:
        return "$0"
    if value < 0.0001:
        return "<$0.0001"
    return f"${value:,.4f}" if value < 1 else f"${value:,.2f}"


def _output(group: GroupPlan) -> str:
    if group.output_cost_max is not None:
        return money(group.output_cost_max)
    if group.price is None:
        return "unknown"
    return f"unknown ({group.unbounded_requests:,} without max_tokens)"


_HEADERS = ("model", "endpoint", "requests", "prompt tokens", "shards", "input cost", "output ≤")


def _rows(plan: Plan) -> list[tuple[str, ...]]:
    rows = [
        (
            g.model or "(none)",
            g.endpoint,
            f"{g.requests:,}",
            f"~{g.tokens:,}",
            f"{g.shards:,}",
            money(g.input_cost) if g.price else "unknown (no price)",
            _output(g),
        )
        for g in plan.groups
    ]
    rows.append(
        (
            "total",
            "",
            f"{plan.requests:,}",
            f"~{plan.tokens:,}",
            f"{plan.shards:,}",
            money(plan.input_cost),
            money(plan.output_cost_max),
        )
    )
    return rows


def _queue_note(spec: Any, g: Any) -> str:
    """The queue budget a build of this group works under: tokens per shard, or for a queue
    limited by requests (Anthropic's), the requests it may hold at once."""
    if g.token_cap is not None:
        return f"~{g.token_cap:,} tokens per shard"
    requests = spec.limits.request_limit(g.model or "") if spec is not None else None
    if requests is not None:
        per_batch = spec.limits.max_requests_per_batch
        return (
            f"queue budget {plural(requests, 'request')} at once (limits.enqueued_requests), "
            f"at most {per_batch:,} per batch"
        )
    if spec is not None and spec.api.provider == "anthropic":
        return "no limit set: Anthropic limits its queue by requests (limits.enqueued_requests)"
    return "no limit"


def _notes(plan: Plan, prices: Any = None, spec: Any = None) -> list[str]:
    notes = []
    for g in plan.groups:
        name = f"{g.model or '(none)'} {g.endpoint}"
        close = closest_known(g.model, prices) if g.model and g.price is None else None
        if close is not None:  # a likely typo: the API would fail the whole batch
            notes.append(
                f"{name}: warning: unknown model '{g.model}': did you mean {close}? "
                f"(if it is real, add prices.{g.model} to the config)"
            )
        elif g.price is None:
            notes.append(f"{name}: no price known; add prices.{g.model} to the config")
        elif g.price.source == "config":
            notes.append(f"{name}: priced from the config (prices.{g.price.model})")
        notes.append(f"{name}: {_queue_note(spec, g)}")
        for caveat in g.caveats:
            notes.append(f"{name}: {caveat.count:,} × {caveat.text}")
    return notes


def _plain(plan: Plan) -> str:
    rows = [_HEADERS, *_rows(plan)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(_HEADERS))]
    lines = []
    for row in rows:
        cells = [
            cell.ljust(widths[i]) if i < 2 else cell.rjust(widths[i]) for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _print_rich(plan: Plan, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for i, header in enumerate(_HEADERS):
        table.add_column(header, justify="left" if i < 2 else "right")
    rows = _rows(plan)
    for row in rows[:-1]:
        table.add_row(*row)
    table.add_row(*rows[-1], style="bold")
    Console().print(table)


def learned_limits(spec: Any, models: list[str | None]) -> list[ModelLimits]:
    """Once a build has a state: the queue limit in force per model and where it came from
    (config, or learned from a refusal). Read even with --all: a limit a refusal stated
    applies to any plan. Without a state the notes' tokens per shard say the config's."""
    directory = state_dir(spec.output_dir)
    if not (directory / "state.db").exists():
        return []
    store = Store(directory)
    try:
        limits = queue_limits(spec, store, models)
    finally:
        store.close()
    return [
        m for m in limits if m.tokens.value is not None or m.tokens.learned or m.requests.learned
    ]


def run(args: argparse.Namespace) -> int:
    spec = load_chosen_spec(args)
    directory = state_dir(spec.output_dir)
    store = None if args.all or not (directory / "state.db").exists() else Store(directory)
    sampled: list[SampledPrice] = []
    try:
        plan, whole = make_plans(spec, store.settled_keys if store is not None else None)
        if store is not None:  # after `build --sample`: priced from those rows' actual usage
            sampled = sample_prices(spec, store, plan)
    finally:
        if store is not None:
            store.close()
    limits = learned_limits(spec, [g.model for g in plan.groups])
    if args.json:
        doc = plan.to_json()
        doc["workload"] = whole.to_json()["totals"]
        if limits:  # once a build has a state
            doc["queue_limits"] = [m.to_json() for m in limits]
        if spec.data_targets:  # how `where` and a `build --sample` bear on the plan
            doc["filtered_out"] = filtered_out(spec.targets)
            doc["sampled"] = [dataclasses.asdict(p) for p in sampled]
        print(json.dumps(doc, indent=2))
        return 0
    what = "what `build` would send now" if store is not None else "the whole workload"
    title = f"Plan for {args.config or 'batch.yaml'}: {what}"
    if args.simulate:
        title += f" (the rehearsal in {shown(str(spec.output_dir))})"
    if sys.stdout.isatty():
        _print_rich(plan, title)
    else:
        print(title)
        print(_plain(plan))
    print(f"Batch API prices as of {plan.prices_as_of} (override them under prices: in the config)")
    for note in _notes(plan, spec.prices, spec):
        print(f"  {note}")
    for m in limits:
        print(f"  queue limit {m.describe()}")
    for p in sampled:
        print(
            f"  target {p.target}: priced from {p.sampled:,} sampled rows' usage "
            f"({money(p.mean_cost)} a row): {money(p.pending_cost)} for the "
            f"{plural(p.pending, 'row')} to send, {money(p.whole_cost)} for all {p.rows:,}"
        )
    for name, count in filtered_out(spec.targets).items():
        print(f"  target {name}: {plural(count, 'row')} filtered out by where (not planned)")
    if store is not None:
        print(
            f"whole workload: {plural(whole.requests, 'request')}, "
            f"~{plural(whole.tokens, 'prompt token')}, "
            f"input cost {money(whole.input_cost)}; {whole.requests - plan.requests:,} of them "
            "done or in flight"
        )
    return 0
