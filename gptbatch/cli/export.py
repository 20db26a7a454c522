"""`gptbatch export`: one row per request with its reply, usage, cost and status (no network)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from gptbatch.canonical import atomic_writer
from gptbatch.cli.common import add_simulate_flag
from gptbatch.commands.export import FORMATS, check_export_target, export_rows, write_rows
from gptbatch.commands.status import stale_inputs
from gptbatch.config.rehearsal import rehearsal
from gptbatch.config.spec import load_spec
from gptbatch.errors import UsageError
from gptbatch.state.store import Store, state_dir


def register(sub: Any) -> None:
    p = sub.add_parser(
        "export",
        epilog="example: gptbatch export batch.yaml --format csv -o results.csv",
        help="one row per request: reply, usage, cost, status (JSON lines or CSV)",
        description="Join every request (all inputs, in order) with its result: custom_id, "
        "input file and line, model, reply text, finish reason, token usage, cost at Batch "
        "API prices (empty when the price is unknown), status (ok, failed, pending) and "
        "error. Reads the build state only; no network, no lock.",
    )
    p.add_argument("config", nargs="?", default=None, help="batch.yaml (default: ./batch.yaml)")
    p.add_argument("--format", choices=FORMATS, default="jsonl", help="default: jsonl")
    p.add_argument(
        "-o", "--output", metavar="FILE", help="write to FILE atomically (default: stdout)"
    )
    add_simulate_flag(p, "export the last `build --simulate` rehearsal")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    spec = load_spec(args.config, simulate=args.simulate)
    real, practice = spec, rehearsal(spec)
    if args.output:  # before anything is read or written
        check_export_target(args.output, (real, practice))
    if args.simulate:
        spec = practice
    directory = state_dir(spec.output_dir)
    if not (directory / "state.db").exists():
        if args.simulate:
            raise UsageError(
                f"no rehearsal state in {directory}: run `gptbatch build --simulate` first"
            )
        hint = "run `gptbatch build` first"
        if (state_dir(practice.output_dir) / "state.db").exists():
            hint += ", or pass --simulate to export the rehearsal"
        raise UsageError(f"no build state in {directory}: {hint}")
    store = Store(directory)
    try:
        for path, why in stale_inputs(spec, store):
            print(
                f"gptbatch: note: input {path}: {why}; rows show the last build "
                "(run `gptbatch build` to bring them up to date)",
                file=sys.stderr,
            )
        rows = export_rows(spec, store)
        if args.output:
            with atomic_writer(args.output, "w") as out:
                count = write_rows(rows, out, args.format)
            print(f"wrote {count:,} rows to {args.output}", file=sys.stderr)
        else:
            write_rows(rows, sys.stdout, args.format)
    finally:
        store.close()
    return 0
