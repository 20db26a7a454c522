"""Every command's --help ends with an example."""

from __future__ import annotations

import pytest

from gptbatch.cli import COMMANDS, build_parser


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_help_has_an_example(name: str) -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    text = sub.choices[name].format_help()  # type: ignore[union-attr]
    assert "example" in text.lower() and f"gptbatch {name}" in text, text[-300:]
