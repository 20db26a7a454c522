"""`gptbatch status`: what is done, what is pending, and (with --explain) why."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from gptbatch.cli.build import simulated_output_dir
from gptbatch.errors import UsageError
from gptbatch.spec import load_spec
from gptbatch.status import pending_reasons, shard_statuses, stale_inputs
from gptbatch.store import Store, state_dir


def register(sub: Any) -> None:
    p = sub.add_parser(
        "status",
        help="show what is done and what is pending",
        description="Read the build state (no network) and report progress.",
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
        "--simulate",
        action="store_true",
        help="show the state of the last `build --simulate` rehearsal",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    spec = load_spec(args.config)
    if args.simulate:
        spec = dataclasses.replace(spec, output_dir=simulated_output_dir(spec))
    directory = state_dir(spec.output_dir)
    if not (directory / "state.db").exists():
        raise UsageError(f"no build state in {directory}: run `gptbatch build` first")
    store = Store(directory)
    try:
        counts = store.counts()
        stale = stale_inputs(spec, store)
        shards = shard_statuses(store)
        reasons = []
        if args.explain:
            for r in pending_reasons(spec, store):
                if args.limit and len(reasons) >= args.limit:
                    break
                reasons.append(r)
    finally:
        store.close()
    if args.json:
        print(
            json.dumps(
                {
                    "counts": counts,
                    "stale_inputs": [{"path": p, "reason": r} for p, r in stale],
                    "shards": [s.__dict__ for s in shards],
                    "pending": [r.__dict__ for r in reasons],
                },
                indent=2,
                sort_keys=True,
            )
        )
        return 0
    print(
        f"{counts['ok']:,} of {counts['total']:,} requests done, {counts['failed']:,} failed "
        f"for good, {counts['in_shards']:,} in shards, {counts['pending']:,} not yet packed"
    )
    for path, why in stale:
        print(f"input {path}: {why}; the next build reads it again")
    for s in shards:
        print(
            f"shard {s.id[:12]} ({s.model} {s.url}, {s.requests:,} requests, "
            f"~{s.tokens:,} tokens): {s.reason}"
        )
    if args.explain:
        for r in reasons:
            print(f"{r.path}:{r.line}: {r.custom_id}: {r.reason}")
        if args.limit and len(reasons) >= args.limit:
            print(f"(first {args.limit} shown; --limit 0 shows all)")
    return 0
