"""`gptbatch tokens`: estimated prompt tokens per request, per file and in total (offline)."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from gptbatch.errors import InputError, UsageError
from gptbatch.inputs.requests import ENDPOINTS
from gptbatch.inputs.scan import Scanner, ScanOptions

MAX_CAVEATS_SHOWN = 10  # distinct caveats listed per file without --per-request
_MAX_CAVEATS_KEPT = 1000  # bounds memory when every request has its own caveat (e.g. URLs)


@dataclass
class _FileTotal:
    """Running totals of one input file (mutable, local to one command run)."""

    requests: int = 0
    tokens: int = 0
    encodings: set[str] = field(default_factory=set)
    caveats: Counter[str] = field(default_factory=Counter)
    other_caveats: int = 0

    def add(self, tokens: int, encoding: str, caveats: tuple[str, ...]) -> None:
        self.requests += 1
        self.tokens += tokens
        self.encodings.add(encoding)
        for caveat in caveats:
            if caveat in self.caveats or len(self.caveats) < _MAX_CAVEATS_KEPT:
                self.caveats[caveat] += 1
            else:
                self.other_caveats += 1


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "tokens",
        epilog="example: gptbatch tokens requests.jsonl --per-request",
        help="estimate prompt tokens of request files, offline",
        description="Estimate the prompt tokens of Batch API request files (JSONL), offline, "
        "with the model's tiktoken encoding. Prints totals per file and overall.",
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="JSONL request files")
    parser.add_argument(
        "--per-request",
        action="store_true",
        help="also print custom_id<TAB>tokens for every request, with its caveats",
    )
    parser.add_argument("--model", help="model for requests whose body names none")
    parser.add_argument("--endpoint", help="url for requests that have none")
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object: per file and in total (with --per-request, each request)",
    )
    parser.set_defaults(func=run)


def _summary(name: str, total: _FileTotal) -> str:
    encodings = ", ".join(sorted(total.encodings)) or "none"
    noun = "request" if total.requests == 1 else "requests"
    return f"{name}: {total.requests} {noun}, {total.tokens} tokens, encoding {encodings}"


def _caveat_lines(total: _FileTotal) -> list[str]:
    lines = []
    for caveat, count in total.caveats.most_common(MAX_CAVEATS_SHOWN):
        noun = "request" if count == 1 else "requests"
        lines.append(f"  caveat ({count} {noun}): {caveat}")
    hidden = len(total.caveats) - MAX_CAVEATS_SHOWN + (1 if total.other_caveats else 0)
    if hidden > 0:
        lines.append(f"  ... and more caveats ({hidden}+ distinct); see --per-request")
    return lines


def _json_total(total: _FileTotal) -> dict[str, Any]:
    return {
        "requests": total.requests,
        "tokens": total.tokens,
        "encodings": sorted(total.encodings),
        "caveats": dict(total.caveats.most_common()),
    }


def run_json(args: argparse.Namespace) -> int:
    """`tokens --json`: the same counts as one JSON document on stdout."""
    per_file = {path: _FileTotal() for path in args.files}
    requests: list[dict[str, Any]] = []
    scanner = Scanner(args.files, ScanOptions(model=args.model, endpoint=args.endpoint))
    for request in scanner.requests():  # bad input raises: an error event, exit 2
        per_file.setdefault(request.path, _FileTotal()).add(
            request.tokens, request.encoding, request.caveats
        )
        if args.per_request:
            requests.append(
                {
                    "custom_id": request.custom_id,
                    "tokens": request.tokens,
                    "encoding": request.encoding,
                    "caveats": list(request.caveats),
                }
            )
    overall = _FileTotal()
    for total in per_file.values():
        overall.requests += total.requests
        overall.tokens += total.tokens
        overall.encodings |= total.encodings
    doc: dict[str, Any] = {
        "files": {path: _json_total(total) for path, total in per_file.items()},
        "total": {k: v for k, v in _json_total(overall).items() if k != "caveats"},
    }
    if args.per_request:
        doc["requests"] = requests
    print(json.dumps(doc, indent=2, sort_keys=True))
    scanner.commit_counts()
    return 0


def run(args: argparse.Namespace) -> int:
    if args.endpoint is not None and args.endpoint not in ENDPOINTS:
        raise UsageError(f"--endpoint {args.endpoint!r} is not one of {', '.join(ENDPOINTS)}")
    if args.json:
        return run_json(args)
    per_file = {path: _FileTotal() for path in args.files}
    prefix = "# " if args.per_request else ""
    encoding: str | None = None
    error: InputError | None = None
    scanner = Scanner(args.files, ScanOptions(model=args.model, endpoint=args.endpoint))
    try:
        for request in scanner.requests():
            per_file.setdefault(request.path, _FileTotal()).add(
                request.tokens, request.encoding, request.caveats
            )
            if args.per_request:
                if request.encoding != encoding:
                    encoding = request.encoding
                    print(f"# encoding: {encoding}")
                print(f"{request.custom_id}\t{request.tokens}")
                for caveat in request.caveats:
                    print(f"# caveat: {caveat}")
    except InputError as exc:
        error = exc  # print what was valid, then report the bad lines
    overall = _FileTotal()
    for path, total in per_file.items():
        print(prefix + _summary(path, total))
        if not args.per_request:
            for line in _caveat_lines(total):
                print(line)
        overall.requests += total.requests
        overall.tokens += total.tokens
        overall.encodings |= total.encodings
    files = f"{len(per_file)} file" + ("" if len(per_file) == 1 else "s")
    print(prefix + _summary(f"total ({files})", overall))
    if error is not None:
        raise error
    scanner.commit_counts()  # only a run without bad lines is remembered
    return 0
