"""Drop-in commands for users of the original tool: gpt_batch_splitter and gpt_batch_manager."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from gptbatch.cli import run
from gptbatch.cli.build import execute
from gptbatch.cli.common import add_simulate_flag
from gptbatch.cli.split import add_split_arguments, summary_lines
from gptbatch.commands.legacy import manager_inputs, publish_outputs, write_manager_config
from gptbatch.commands.split import split_files
from gptbatch.config.spec import load_spec
from gptbatch.errors import EXIT_INTERRUPTED, GptbatchError
from gptbatch.report import shown


def splitter_main(argv: Sequence[str] | None = None) -> int:
    """`gpt_batch_splitter LIMIT FILE...`: write shard files into the current directory."""
    parser = argparse.ArgumentParser(
        prog="gpt_batch_splitter",
        description="Split Batch API request files into shard-000-of-NNN.jsonl files in the "
        "current directory, each with at most LIMIT estimated prompt tokens "
        "(same as `gptbatch split LIMIT FILE...`).",
    )
    add_split_arguments(parser)
    args = parser.parse_args(argv)
    try:
        result = split_files(args.files, args.limit, out_dir=".")
    except GptbatchError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    try:
        print("\n".join(summary_lines(result)), flush=True)
    except BrokenPipeError:  # `| head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def manager_main(argv: Sequence[str] | None = None) -> int:
    """`gpt_batch_manager FILE...`: build the files, write FILE.output.jsonl beside each."""
    parser = argparse.ArgumentParser(
        prog="gpt_batch_manager",
        description="Submit Batch API request files (e.g. shard-*.jsonl from "
        "gpt_batch_splitter) and write each one's results to FILE.output.jsonl. Resumable "
        "at any time; state lives in .gpt_batch_manager/ in the current directory.",
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="request files (JSONL)")
    parser.add_argument(
        "--no-wait", action="store_true", help="submit what fits, collect what finished, then exit"
    )
    add_simulate_flag(parser, "rehearse against the built-in simulator (no key, no cost)")
    args = parser.parse_args(argv)
    args.json = args.verbose = False
    # What an interrupted or pending run is continued with (execute adds --simulate).
    args.resume_command = shlex.join(["gpt_batch_manager", *args.files])

    def manage(args: argparse.Namespace) -> int:
        inputs, skipped = manager_inputs(args.files)
        for path in skipped:
            print(f"skipping {shown(path)}: it holds Batch API results, not requests")
        if not inputs:
            print("nothing to build: every file given holds results")
            return 0
        config = write_manager_config(inputs, Path.cwd())
        code, spec = execute(load_spec(config), args)
        # A rehearsal publishes too (from <output_dir>-simulated), as the original tool's
        # users expect FILE.output.jsonl either way.
        for path in publish_outputs(spec):
            print(f"wrote {shown(str(path))}")
        return code

    return run(manage, args, program=argv is None)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(splitter_main())
