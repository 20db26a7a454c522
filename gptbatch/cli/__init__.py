"""The command line: parse arguments, call one operation, report, map errors to exit codes.

Each subcommand lives in its own module here and exposes `register(subparsers)`, which adds
its parser and sets `func(args) -> int` (the exit code). Only this package prints.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys
import threading
from collections.abc import Sequence

from gptbatch import __version__
from gptbatch.errors import EXIT_ERROR, EXIT_INTERRUPTED, GptbatchError, redact

# Subcommand modules, in the order `gptbatch --help` lists them.
COMMANDS = (
    "build",
    "status",
    "plan",
    "validate",
    "split",
    "tokens",
    "simulator",
    "cancel",
    "export",
    "clean",
    "gc",
    "init",
    "completion",
)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with only, just that command's (start-up skips the others' imports)."""
    parser = argparse.ArgumentParser(
        prog="gptbatch",
        description="make for the OpenAI Batch API: build outputs from batch.yaml, "
        "doing only what is missing.",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"gptbatch {__version__}",
        help="show the version and exit (with -v, also which token counter runs and why)",
    )
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


# What Ctrl-C means, per command: a command that needs its own sets `interrupted` in its
# parser's defaults (see cancel); build's is the default, as most commands leave state behind
# that the next build continues from.
INTERRUPTED = (
    "interrupted: state is saved and batches already submitted keep running at the API; "
    "`gptbatch build` picks up where this stopped (`gptbatch cancel` stops them)"
)
INTERRUPTED_EARLY = "interrupted before anything was done"


def run(func, args: argparse.Namespace, *, program: bool = False) -> int:
    """Call a command function, turning gptbatch errors and Ctrl-C into exit codes.

    A local file error that no module translated still gets one line, not a traceback.
    program: this process ends with the command; Ctrl-C is set aside once it returns (a
    Ctrl-C before that, even after it returned, is still this handler's).
    """
    try:
        code = int(func(args) or 0)
        if program:
            _ignore_late_interrupts()
            if getattr(args, "exit_when_done", False):
                _exit_now(code)
        return code
    except GptbatchError as exc:
        return _fail(args, redact(str(exc)), exc.exit_code)
    except OSError as exc:
        if isinstance(exc, BrokenPipeError):
            return 0
        where = f"{exc.filename}: " if exc.filename else ""
        return _fail(
            args,
            f"{where}{exc.strerror or exc}: check free disk space, permissions and file size "
            "limits, then run again (state is saved)",
            EXIT_ERROR,
        )
    except KeyboardInterrupt:
        return _fail(args, getattr(args, "interrupted", INTERRUPTED), EXIT_INTERRUPTED)


def _fail(args: argparse.Namespace, message: str, code: int) -> int:
    """Report an error on stderr, and as a JSON event on stdout under --json."""
    print(f"gptbatch: {'error: ' if code != EXIT_INTERRUPTED else ''}{message}", file=sys.stderr)
    if getattr(args, "json", False):
        event = {"event": "error", "message": message, "exit_code": code}
        print(json.dumps(event, sort_keys=True), flush=True)
    return code


def _print_version_verbose() -> int:
    """`gptbatch --version -v`: the version, then which token counter runs and why."""
    from gptbatch.inputs.fast_counter import describe

    print(f"gptbatch {__version__}")
    print(describe())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    if "--version" in words and len(words) > 1 and set(words) <= {"--version", "-v", "--verbose"}:
        return _print_version_verbose()
    try:  # importing a command's modules takes a while: Ctrl-C then is no traceback either
        parser = build_parser(words[0] if words and words[0] in COMMANDS else None)
        args, extra = parser.parse_known_args(argv)
        # `build batch.yaml -B step`: argparse gives out its positionals before an option,
        # so targets after one come back unparsed; they are targets all the same.
        if (
            extra
            and getattr(args, "command", None) == "build"
            and not any(e.startswith("-") for e in extra)
        ):
            args.targets = [*args.targets, *extra]
        elif extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except KeyboardInterrupt:
        print(f"gptbatch: {INTERRUPTED_EARLY}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return run(args.func, args, program=argv is None)


def _exit_now(code: int) -> None:
    """End the process here, its output flushed: a command that has written, synced and
    closed all it wrote (split) spares the interpreter's teardown, ~40 ms of freeing what
    the exit frees anyway (its idle worker processes end on their own)."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:  # a closed pipe: the usual exit reports (or ignores) it, as before
        return
    os._exit(code)


def _ignore_late_interrupts() -> None:
    """The command is over and its state saved: a Ctrl-C while the interpreter shuts down
    (joining threads, atexit) would end the process by the signal, with no message and an
    exit code that says it was killed, after its summary said `done`."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
