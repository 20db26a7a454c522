"""`gptbatch status`: what is done, what is pending, and (with --explain) why."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import Any

from gptbatch.cli.common import add_simulate_flag, load_chosen_spec
from gptbatch.commands.status import (
    over_limit_anywhere,
    pending_reasons,
    project_status,
    shard_statuses,
    unbuilt_reasons,
)
from gptbatch.commands.validate import check_inputs
from gptbatch.engine.budget import queue_limits
from gptbatch.engine.usage import project_usage
from gptbatch.errors import InputError
from gptbatch.inputs.where import filtered_out
from gptbatch.pricing import usd
from gptbatch.report import plural, shown
from gptbatch.state.store import Store, state_dir


def register(sub: Any) -> None:
    p = sub.add_parser(
        "status",
        help="show what is done and what is pending",
        description="Read the build state and the inputs (no network) and report what is "
        "done and what is pending, like `make -q`: exit 0 when everything is up to date, 3 "
        "when work is pending (also before the first build, or after an edit), 4 when "
        "everything is built but some requests failed for good.",
        epilog="example: gptbatch status batch.yaml --explain || gptbatch build batch.yaml",
    )
    p.add_argument("config", nargs="?", default=None, help="batch.yaml (default: ./batch.yaml)")
    p.add_argument(
        "--explain", action="store_true", help="say why each pending request and shard is pending"
    )
    p.add_argument(
        "--limit",
        type=int,
        default=50,
        help="with --explain, show at most this many requests (0: all)",
    )
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.add_argument(
        "--remote",
        action="store_true",
        help="also ask the API how the batches in flight are doing (needs the key; writes nothing)",
    )
    add_simulate_flag(p, "show the state of the last `build --simulate` rehearsal")
    p.set_defaults(func=run)


def remote_statuses(spec: Any, batch_ids: list[str]) -> dict[str, dict[str, Any]]:
    """What the API says now of each batch in flight (status and counts); reads only."""
    from gptbatch.api.connect import connect

    if not batch_ids:
        return {}
    remote = connect(spec, "status --remote")
    try:
        out = {}
        for batch_id in batch_ids:
            info = remote.retrieve(batch_id)
            out[batch_id] = {
                "status": info.status,
                "total": info.total,
                "completed": info.completed,
                "failed": info.failed,
            }
        return out
    finally:
        remote.close()


def run(args: argparse.Namespace) -> int:
    spec = load_chosen_spec(args)
    directory = state_dir(spec.output_dir)
    store = Store(directory) if (directory / "state.db").exists() else None
    live: dict[str, dict[str, Any]] = {}
    try:
        # Status reads only the files changed since the last build; once anything is wrong
        # there (or a lowered limit makes built requests too big), it reports what validate
        # would, unchanged files included.
        try:
            status = project_status(spec, store)
        except InputError:
            check_inputs(spec)
            raise
        if store is not None and over_limit_anywhere(spec, store):
            check_inputs(spec)
        limits = [
            m
            for m in queue_limits(spec, store)
            if m.tokens.value is not None or m.tokens.learned or m.requests.learned
        ]
        shards = shard_statuses(store) if store is not None else []
        spent = project_usage(store) if store is not None else None  # as the last build counted
        if args.remote and store is not None:
            live = remote_statuses(spec, [b.id for b in store.batches() if not b.collected])
        reasons = []
        if args.explain:
            found = pending_reasons(spec, store) if store is not None else unbuilt_reasons(spec)
            for r in found:
                if args.limit and len(reasons) >= args.limit:
                    break
                reasons.append(r)
    finally:
        if store is not None:
            store.close()
    if args.json:
        print(
            json.dumps(
                {
                    "counts": {
                        "total": status.total,
                        "ok": status.ok,
                        "failed": status.failed,
                        "pending": status.pending,
                        "in_shards": status.in_shards,
                    },
                    "up_to_date": status.exit_code != 3,
                    "exit_code": status.exit_code,
                    "built": status.built,
                    "stale_inputs": [{"path": p, "reason": r} for p, r in status.stale],
                    "stale_outputs": [{"path": p, "reason": r} for p, r in status.outputs],
                    "shards": [s.__dict__ for s in shards],
                    "pending": [r.__dict__ for r in reasons],
                    "remote": live,
                    "queue_limits": [m.to_json() for m in limits],
                    **({"filtered_out": filtered_out(spec.targets)} if spec.data_targets else {}),
                    "usage": asdict(spent) if spent is not None else None,
                },
                indent=2,
                sort_keys=True,
            )
        )
        return status.exit_code
    state = "up to date" if status.exit_code != 3 else "not up to date"
    print(
        f"{state}: {status.ok:,} of {plural(status.total, 'request')} done, "
        f"{status.failed:,} failed for good, {status.pending:,} pending "
        f"({status.in_shards:,} of them in shards)"
    )
    if not status.built:
        print("nothing built yet: `gptbatch build` builds it")
    if spent is not None and spent.requests:
        cost = (
            usd(spent.cost)
            if spent.cost is not None
            else f"unknown (no price for {', '.join(spent.unpriced)}: add it under prices:)"
        )
        print(
            f"results so far: {plural(spent.requests, 'result')}, {spent.input:,} input tokens "
            f"({spent.cached:,} cached), {spent.output:,} output; cost {cost}"
        )
    for path, why in status.stale:
        if status.built:
            print(f"input {shown(path)}: {why}; the next build reads it again")
    for path, why in status.outputs:
        print(f"output {shown(path)}: {why}; the next build writes it again")
    for m in limits:  # the limit in force per model, and where it came from
        print(f"queue limit {m.describe()}")
    for s in shards:
        print(
            f"shard {s.id[:12]} ({s.model} {s.url}, {plural(s.requests, 'request')}, "
            f"~{plural(s.tokens, 'token')}): {s.reason}"
        )
    for batch_id, info in live.items():
        print(
            f"batch {batch_id} at the API: {info['status']} ({info['completed']:,}/"
            f"{info['total']:,} done, {info['failed']:,} failed)"
        )
    if args.explain:
        for name, count in filtered_out(spec.targets).items():
            print(f"target {name}: {plural(count, 'row')} filtered out by where")
        for r in reasons:
            print(f"{shown(r.path)}:{r.line}: {r.custom_id}: {r.reason}")
        if args.limit and len(reasons) >= args.limit:
            print(f"(first {args.limit} shown; --limit 0 shows all)")
    return status.exit_code
