"""`gptbatch completion bash|zsh|fish`: print a shell completion script."""

from __future__ import annotations

import argparse
from typing import Any

from gptbatch.commands.completion import SHELLS, script


def register(sub: Any) -> None:
    p = sub.add_parser(
        "completion",
        epilog="example: gptbatch completion bash > ~/.bash_completion.d/gptbatch",
        help="print a shell completion script (bash, zsh, fish)",
        description="Print a completion script for gptbatch, its commands and their flags. "
        "bash: source <(gptbatch completion bash); zsh: source <(gptbatch completion zsh); "
        "fish: gptbatch completion fish | source. Add the line to your shell's startup file.",
    )
    p.add_argument("shell", choices=SHELLS, help="the shell to complete for")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gptbatch.cli import build_parser

    print(script(args.shell, build_parser()), end="")
    return 0
