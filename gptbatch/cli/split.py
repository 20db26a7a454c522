"""`gptbatch split LIMIT FILE...`: split request files into shard files under a token limit."""

from __future__ import annotations

import argparse
import re
from typing import Any

from gptbatch.commands.split import SplitResult, split_files
from gptbatch.shards import DEFAULT_MAX_BYTES, DEFAULT_MAX_REQUESTS

_COUNT = re.compile(r"(\d+(?:\.\d+)?)([kKmM]?)")
_MAX_NAMES_SHOWN = 10


def parse_count(text: str) -> int:
    """A positive count such as 1900000, 1_900_000, 1,900,000, 1.9M or 500k."""
    match = _COUNT.fullmatch(text.replace("_", "").replace(",", "").strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count (e.g. 1900000 or 1.9M)")
    number, suffix = match.groups()
    scale = {"": 1, "k": 1_000, "m": 1_000_000}[suffix.lower()]
    value = float(number) * scale
    if value != int(value) or value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be a whole number of 1 or more")
    return int(value)


def add_split_arguments(parser: argparse.ArgumentParser) -> None:
    """LIMIT and FILE..., shared with the legacy gpt_batch_splitter."""
    parser.add_argument(
        "limit",
        metavar="LIMIT",
        type=parse_count,
        help="most estimated prompt tokens per shard (e.g. 1900000 or 1.9M); stay a little "
        "below your batch queue limit, since estimates can be slightly low",
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="JSONL request files")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "split",
        epilog="example: gptbatch split 1900000 requests/*.jsonl --out-dir shards",
        help="split request files into shard files that fit a token limit, offline",
        description="Split Batch API request files into shard-000-of-NNN.jsonl files: every "
        "line in exactly one shard, unchanged; at most LIMIT estimated prompt tokens, one model "
        "and one endpoint per shard. Adding a request changes one or two shards, not all. "
        "Shard files of an earlier split with another count are removed.",
    )
    add_split_arguments(parser)
    parser.add_argument("--out-dir", default=".", metavar="DIR", help="default: .")
    parser.add_argument(
        "--max-requests",
        type=parse_count,
        default=DEFAULT_MAX_REQUESTS,
        metavar="N",
        help=f"most requests per shard (default {DEFAULT_MAX_REQUESTS:,}, the Batch API's cap)",
    )
    parser.add_argument(
        "--max-bytes",
        type=parse_count,
        default=DEFAULT_MAX_BYTES,
        metavar="N",
        help=f"most bytes per shard file (default {DEFAULT_MAX_BYTES:,}, the Batch API's cap)",
    )
    parser.set_defaults(func=run)


def _names(names: tuple[str, ...]) -> str:
    shown = ", ".join(names[:_MAX_NAMES_SHOWN])
    return shown + (f", ... ({len(names)} in all)" if len(names) > _MAX_NAMES_SHOWN else "")


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def summary_lines(result: SplitResult) -> list[str]:
    """The report the original splitter printed: a total, then one line per shard."""
    lines = []
    if result.skipped:
        lines.append(
            "Skipped shard files of an earlier split (its output, not requests): "
            f"{_names(result.skipped)}"
        )
    lines += [
        f"Will use {_count(len(result.shards), 'shard')} for {_count(result.requests, 'request')} "
        f"/ {result.tokens:,} tokens."
    ]
    for shard in result.shards:
        lines.append(
            f"  {shard.name}: {shard.model or '(no model)'} {shard.url} "
            f"{_count(shard.requests, 'request')}, ~{shard.tokens:,} tokens"
        )
    if result.removed:
        lines.append(f"Removed stale shard files of an earlier split: {_names(result.removed)}")
    if result.kept_inputs:
        lines.append(
            "Left older shard files in place because they were inputs: "
            f"{_names(result.kept_inputs)}"
        )
    return lines


def run(args: argparse.Namespace) -> int:
    result = split_files(
        args.files,
        args.limit,
        out_dir=args.out_dir,
        max_requests=args.max_requests,
        max_bytes=args.max_bytes,
    )
    print("\n".join(summary_lines(result)))
    # Everything is written, synced and renamed, and the token cache committed: a program
    # ends here without the interpreter's teardown (gptbatch.cli.run).
    args.exit_when_done = True
    return 0
