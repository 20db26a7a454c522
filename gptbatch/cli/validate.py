"""`gptbatch validate [CONFIG]`: check the config and every input line, offline; write nothing."""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from gptbatch.errors import EXIT_BAD_INPUT, EXIT_OK, InputError
from gptbatch.requests import DEFAULT_MAX_PROBLEMS, read_requests
from gptbatch.spec import DEFAULT_CONFIG, load_spec


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "validate",
        help="check batch.yaml and every request line (offline, writes nothing)",
        description="Check the config against its schema and every input line against the "
        "Batch API's rules, without network access. Exit 0 if all is well, 2 if not.",
    )
    parser.add_argument(
        "config", nargs="?", default=None, help=f"the config file (default: ./{DEFAULT_CONFIG})"
    )
    parser.add_argument(
        "--max-problems",
        type=int,
        default=DEFAULT_MAX_PROBLEMS,
        metavar="N",
        help=f"show at most N problems (default {DEFAULT_MAX_PROBLEMS}); the rest are counted",
    )
    parser.set_defaults(func=run)


def _shown(path: Path) -> str:
    """path relative to the working directory when it is inside it, for shorter messages."""
    try:
        return os.path.relpath(path) if path.is_relative_to(Path.cwd()) else str(path)
    except ValueError:  # another drive on Windows
        return str(path)


def run(args: argparse.Namespace) -> int:
    try:
        spec = load_spec(args.config)
        counts: Counter[tuple[str, str]] = Counter()
        requests = read_requests(
            [_shown(p) for p in spec.inputs],
            model=spec.model,
            endpoint=spec.endpoint,
            max_problems=max(1, args.max_problems),
            max_line_bytes=spec.limits.max_bytes_per_batch,
        )
        for request in requests:
            counts[(request.model or "(no model)", request.url)] += 1
    except InputError as exc:
        for problem in exc.problems:
            print(problem if problem.path else problem.message, file=sys.stderr)
        shown = len(exc.problems)
        if exc.truncated:
            print(f"... and {exc.truncated} more problems not shown", file=sys.stderr)
        total = shown + exc.truncated
        print(
            f"gptbatch: {total} problem{'s' if total != 1 else ''} found; nothing was written",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    total = sum(counts.values())
    files = len(spec.inputs)
    breakdown = ", ".join(
        f"{model} {url}: {n}" for (model, url), n in sorted(counts.items(), key=lambda kv: kv[0])
    )
    print(
        f"ok: {total} request{'s' if total != 1 else ''} in {files} file"
        f"{'s' if files != 1 else ''} ({breakdown or 'no requests'})"
    )
    return EXIT_OK
