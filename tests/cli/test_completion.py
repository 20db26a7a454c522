"""`gptbatch completion`: scripts that name every command and flag, and that the shells parse."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from gptbatch.cli import COMMANDS, build_parser, main
from gptbatch.commands.completion import SHELLS, commands_of


def _script(shell: str, capsys) -> str:
    capsys.readouterr()
    assert main(["completion", shell]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("shell", SHELLS)
def test_script_names_every_command_and_flag(shell: str, capsys) -> None:
    text = _script(shell, capsys)
    commands = commands_of(build_parser())
    assert [c.name for c in commands] == list(COMMANDS)
    for command in commands:
        assert command.name in text
        for option in command.options:
            for flag in option.flags:
                # fish names flags without their dashes (-l no-wait, -s o)
                name = flag.lstrip("-") if shell == "fish" else flag
                assert name in text, f"{shell}: {command.name} {flag}"
    assert "jsonl csv" in text  # export --format's choices


def test_bash_script_parses_and_completes(tmp_path: Path, capsys) -> None:
    path = tmp_path / "gptbatch.bash"
    path.write_text(_script("bash", capsys))
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0

    def complete(*words: str) -> list[str]:
        quoted = " ".join(f"'{w}'" for w in words)
        probe = (
            f"source {path}; COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; "
            'gptbatch() { :; }; _gptbatch; printf "%s\\n" "${COMPREPLY[@]}"'
        )
        run = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True)
        return run.stdout.split()

    assert complete("gptbatch", "ex") == ["export"]
    assert complete("gptbatch", "c") == ["cancel", "clean", "completion"]
    assert "--format" in complete("gptbatch", "export", "--f")
    assert complete("gptbatch", "export", "--format", "") == ["jsonl", "csv"]
    assert complete("gptbatch", "completion", "") == ["bash", "zsh", "fish"]
    assert complete("gptbatch", "build", "--no-wait", "--si") == ["--simulate"]


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_zsh_script_parses(tmp_path: Path, capsys) -> None:
    path = tmp_path / "_gptbatch"
    path.write_text(_script("zsh", capsys))
    assert subprocess.run(["zsh", "-n", str(path)], capture_output=True).returncode == 0
    probe = f"autoload -U compinit && compinit -u -d {tmp_path}/zcomp; source {path}; "
    probe += "print -r -- ${_comps[gptbatch]}"
    run = subprocess.run(["zsh", "-f", "-c", probe], capture_output=True, text=True)
    assert run.stdout.strip() == "_gptbatch"  # sourcing registered the completion function


@pytest.mark.skipif(shutil.which("fish") is None, reason="fish is not installed")
def test_fish_script_parses(tmp_path: Path, capsys) -> None:
    path = tmp_path / "gptbatch.fish"
    path.write_text(_script("fish", capsys))
    assert subprocess.run(["fish", "--no-execute", str(path)], capture_output=True).returncode == 0
    probe = f"source {path}; complete -C 'gptbatch ex'; complete -C 'gptbatch export --format '"
    run = subprocess.run(["fish", "-c", probe], capture_output=True, text=True, check=True)
    words = [line.split("\t")[0] for line in run.stdout.splitlines()]
    assert words == ["export", "csv", "jsonl"]
