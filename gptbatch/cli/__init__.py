"""The command line: parse arguments, call one operation, report, map errors to exit codes.

Each subcommand lives in its own module here and exposes `register(subparsers)`, which adds
its parser and sets `func(args) -> int` (the exit code). Only this package prints.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from gptbatch import __version__
from gptbatch.errors import EXIT_ERROR, EXIT_INTERRUPTED, GptbatchError, redact

# Subcommand modules, in the order `gptbatch --help` lists them.
COMMANDS = ("build", "status", "plan", "validate", "split", "tokens", "simulator")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with only, just that command's (start-up skips the others' imports)."""
    parser = argparse.ArgumentParser(
        prog="gptbatch",
        description="make for the OpenAI Batch API: build outputs from batch.yaml, "
        "doing only what is missing.",
    )
    parser.add_argument("--version", action="version", version=f"gptbatch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS if only is None else (only,):
        try:
            module = importlib.import_module(f"gptbatch.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"gptbatch.cli.{name}":
                raise
            continue  # a command not built yet
        module.register(sub)
    return parser


def run(func, args: argparse.Namespace) -> int:
    """Call a command function, turning gptbatch errors and Ctrl-C into exit codes.

    A local file error that no module translated still gets one line, not a traceback.
    """
    try:
        return int(func(args) or 0)
    except GptbatchError as exc:
        print(f"gptbatch: error: {redact(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        if isinstance(exc, BrokenPipeError):
            return 0
        where = f"{exc.filename}: " if exc.filename else ""
        print(
            f"gptbatch: error: {where}{exc.strerror or exc}: check free disk space, "
            "permissions and file size limits, then run again (state is saved)",
            file=sys.stderr,
        )
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("gptbatch: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(words[0] if words and words[0] in COMMANDS else None)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return run(args.func, args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
