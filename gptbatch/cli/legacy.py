"""Drop-in commands for users of the original tool: gpt_batch_splitter and gpt_batch_manager."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from gptbatch.cli.split import add_split_arguments, summary_lines
from gptbatch.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, GptbatchError
from gptbatch.split import split_files


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
    print("\n".join(summary_lines(result)))
    return 0


def manager_main(argv: Sequence[str] | None = None) -> int:
    """`gpt_batch_manager FILE...`: not wired to the build engine yet."""
    print(
        "gpt_batch_manager: the build engine is not available yet; use `gptbatch build`",
        file=sys.stderr,
    )
    return EXIT_BAD_INPUT


if __name__ == "__main__":  # pragma: no cover
    sys.exit(splitter_main())
