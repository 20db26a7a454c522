"""batch.yaml's inputs: globs expanded to files, never from output or state directories."""

from __future__ import annotations

import errno
import glob
import os
import re
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from gptbatch.config.rehearsal import SIMULATED_SUFFIX
from gptbatch.config.yaml_source import line_of
from gptbatch.errors import Problem

LEGACY_STATE_DIR = ".gpt_batch_manager"  # where gpt_batch_manager keeps its generated project

_MAGIC = re.compile(r"[*?[]")


def expand_inputs(
    patterns: Sequence[str | Mapping[str, Any]],
    root: Path,
    output_dir: Path,
    node: yaml.Node,
    display: str,
    rendered: Mapping[int, Path] | None = None,
) -> tuple[tuple[Path, ...], list[Problem]]:
    """Input files: globs expanded and sorted per pattern, de-duplicated, absolute.

    A pattern naming an existing file is that file, even with glob characters in its name
    (in/a[1].jsonl); files under output and state directories are results, never inputs.
    A data target (a mapping) is the file rendered for it, from rendered, in its place.
    """
    excluded = excluded_dirs(root, output_dir)
    found: dict[Path, None] = {}
    problems: list[Problem] = []
    for index, pattern in enumerate(patterns):
        if not isinstance(pattern, str):
            if rendered is not None and index in rendered:
                found.setdefault(rendered[index], None)
            continue
        expanded = os.path.expanduser(pattern)
        literal = Path(os.path.abspath(root / expanded))
        if _MAGIC.search(expanded) and not os.path.lexists(literal):
            files, wrong = _glob_inputs(index, pattern, root, excluded)
        else:
            files, wrong = [literal], _literal_problems(index, pattern, literal, root, excluded)
        line = line_of(node, ["inputs", index])
        problems += [Problem(display, line, message, hint) for message, hint in wrong]
        for file in files:
            found.setdefault(file, None)
    return tuple(found), problems


def excluded_dirs(root: Path, output_dir: Path) -> list[tuple[Path, Path, str]]:
    """(directory, its real path, how to name it) of every place results or state live."""
    simulated = output_dir.with_name(output_dir.name + SIMULATED_SUFFIX)
    dirs = [
        (output_dir, f"output_dir {_rel(output_dir, root)}/"),
        (simulated, f"{_rel(simulated, root)}/ (build --simulate's output)"),
        (root / LEGACY_STATE_DIR, f"{LEGACY_STATE_DIR}/ (gpt_batch_manager's state)"),
    ]
    state = os.environ.get("GPTBATCH_STATE_DIR")
    if state:
        path = Path(os.path.abspath(state))
        dirs.append((path, f"GPTBATCH_STATE_DIR {_rel(path, root)}/"))
    return [(d, Path(os.path.realpath(d)), label) for d, label in dirs]


def _rel(path: Path, root: Path) -> str:
    return os.path.relpath(path, root) if path.is_relative_to(root) else str(path)


def excluded_by(path: Path, excluded: list[tuple[Path, Path, str]]) -> str | None:
    """How to name the output or state directory path is under, if any (symlinks followed)."""
    real = Path(os.path.realpath(path))
    for directory, real_directory, label in excluded:
        if path.is_relative_to(directory) or real.is_relative_to(real_directory):
            return label
    return None


def _file_problem(path: Path) -> tuple[str, str] | None:
    """What keeps path from being read as an input file, and what to do; None for a file."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        if os.path.islink(path):
            return "is a symlink to a missing file", "fix or remove the symlink"
        return "does not exist", ""
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a symlink loop", "point the symlink at a real file"
        return f"cannot be read ({exc.strerror})", "check its permissions"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a directory", ""
    kind = "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
    return f"is not a regular file ({kind})", "inputs are JSONL files; write the requests to one"


def _literal_problems(
    index: int, pattern: str, path: Path, root: Path, excluded: list[tuple[Path, Path, str]]
) -> list[tuple[str, str]]:
    where = f"inputs[{index}]: {pattern!r}"
    wrong = _file_problem(path)
    if wrong is not None and wrong[0] == "does not exist":
        return [
            (
                f"inputs[{index}]: no such file {pattern!r}",
                f"paths are relative to the config's directory, {root}",
            )
        ]
    if wrong is not None and wrong[0] == "is a directory":
        return [
            (f"{where} is a directory", f"use a glob such as {os.path.join(pattern, '*.jsonl')}")
        ]
    if wrong is not None:
        return [(f"{where} {wrong[0]}", wrong[1])]
    label = excluded_by(path, excluded)
    if label is not None:
        return [
            (
                f"{where} is under {label}, which holds results and build state, not inputs",
                "move the input elsewhere, or give output_dir a directory of its own",
            )
        ]
    return []


def _glob_inputs(
    index: int, pattern: str, root: Path, excluded: list[tuple[Path, Path, str]]
) -> tuple[list[Path], list[tuple[str, str]]]:
    """The regular files a glob matches outside output and state directories, and problems."""
    where = f"inputs[{index}]: {pattern!r}"
    expanded = os.path.expanduser(pattern)
    base = "" if os.path.isabs(expanded) else glob.escape(str(root))
    files: list[Path] = []
    wrong: list[tuple[str, str]] = []
    skipped: set[str] = set()
    for match in sorted(glob.glob(os.path.join(base, expanded), recursive=True)):
        path = Path(os.path.abspath(match))
        label = excluded_by(path, excluded)
        problem = _file_problem(path) if label is None else None
        if label is not None:
            skipped.add(label)
        elif problem is None:
            files.append(path)
        elif problem[0] not in ("is a directory", "does not exist"):
            wrong.append((f"{where} matches {_rel(path, root)}, which {problem[0]}", problem[1]))
    if files or wrong:
        return files, wrong
    hint = f"globs are relative to the config's directory, {root}"
    if not skipped:
        return files, [(f"{where} matches no files", hint)]
    holds = "which hold" if len(skipped) > 1 else "which holds"
    names = " and ".join(label for _, _, label in excluded if label in skipped)
    return files, [
        (
            f"{where} matches no files outside {names}, {holds} results and "
            "build state, not inputs",
            hint,
        )
    ]
