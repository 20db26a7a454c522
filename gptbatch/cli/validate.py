"""`gptbatch validate [CONFIG]`: check the config and every input line, offline; write nothing."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from gptbatch.commands.validate import validate
from gptbatch.config.spec import load_spec
from gptbatch.config.yaml_source import DEFAULT_CONFIG
from gptbatch.errors import EXIT_BAD_INPUT, EXIT_OK, InputError
from gptbatch.inputs.requests import DEFAULT_MAX_PROBLEMS
from gptbatch.report import plural


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "validate",
        epilog="example: gptbatch validate batch.yaml && gptbatch build batch.yaml",
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
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the result as one JSON object (ok, counts, problems) on stdout",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    warnings: list[str] = []
    try:
        spec = load_spec(args.config)
        counts = validate(spec, max(1, args.max_problems), warnings)
    except InputError as exc:
        if getattr(args, "json", False):
            doc = {
                "ok": False,
                "problems": [
                    {"path": p.path, "line": p.line, "message": p.message, "hint": p.hint}
                    for p in exc.problems
                ],
                "more_problems": exc.truncated,
            }
            print(json.dumps(doc, indent=2, sort_keys=True))
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr)
        for problem in exc.problems:
            print(problem if problem.path else problem.message, file=sys.stderr)
        shown = len(exc.problems)
        if exc.truncated:
            print(f"... and {plural(exc.truncated, 'more problem')} not shown", file=sys.stderr)
        total = shown + exc.truncated
        print(f"gptbatch: {plural(total, 'problem')} found; nothing was written", file=sys.stderr)
        return EXIT_BAD_INPUT
    total = sum(counts.values())
    files = len(spec.inputs)
    if getattr(args, "json", False):
        groups = [
            {"model": model, "endpoint": url, "requests": n}
            for (model, url), n in sorted(counts.items(), key=lambda kv: kv[0])
        ]
        doc = {
            "ok": True,
            "requests": total,
            "files": files,
            "groups": groups,
            "problems": [],
            "warnings": warnings,
        }
        print(json.dumps(doc, indent=2, sort_keys=True))
        return EXIT_OK
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    breakdown = ", ".join(
        f"{model} {url}: {n:,}" for (model, url), n in sorted(counts.items(), key=lambda kv: kv[0])
    )
    print(
        f"ok: {plural(total, 'request')} in {plural(files, 'file')} ({breakdown or 'no requests'})"
    )
    return EXIT_OK
