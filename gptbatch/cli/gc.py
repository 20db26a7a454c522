"""`gptbatch gc`: drop stored results of requests no longer in any input, and shrink the state."""

from __future__ import annotations

import argparse
from typing import Any

from gptbatch.cli.common import add_simulate_flag, load_chosen_spec
from gptbatch.commands.gc import collect_garbage
from gptbatch.report import plural


def register(sub: Any) -> None:
    p = sub.add_parser(
        "gc",
        epilog="example: gptbatch gc batch.yaml",
        help="drop results of requests no longer in any input; shrink the state",
        description="Delete stored results whose request is in no input (neither at the last "
        "build nor now), with the finished shards and batches that held only those, then "
        "VACUUM the database. Undoing an old edit then costs a new request. No network; "
        "takes the build lock.",
    )
    p.add_argument("config", nargs="?", default=None, help="batch.yaml (default: ./batch.yaml)")
    add_simulate_flag(p, "collect the `build --simulate` rehearsal's state")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    spec = load_chosen_spec(args)
    s = collect_garbage(spec)
    print(
        f"dropped {plural(s.results, 'result')}, {plural(s.shards, 'shard')} "
        f"({plural(s.members, 'member')}, {plural(s.batches, 'batch')}, "
        f"{plural(s.shard_files, 'shard file')})"
    )
    print(
        f"state: {s.bytes_before:,} bytes before, {s.bytes_after:,} after "
        f"({max(0, s.bytes_before - s.bytes_after):,} freed)"
    )
    return 0
