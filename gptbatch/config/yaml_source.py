"""Reading batch.yaml: locating it, the safe YAML loader, alias bombs, duplicate keys, lines."""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from gptbatch.errors import ConfigError, Problem

DEFAULT_CONFIG = "batch.yaml"
# YAML aliases may repeat at most this many values beyond those written out: enough for any
# real config, and it stops a "billion laughs" alias bomb before anything walks its values.
MAX_ALIAS_EXPANSION = 10_000


def locate(path: str | Path | None) -> tuple[Path, str]:
    """The config's absolute path and its name for messages; ConfigError if it is missing."""
    display = str(path) if path is not None else DEFAULT_CONFIG
    config = Path(os.path.abspath(os.path.expanduser(display)))
    if config.is_dir() and (config / DEFAULT_CONFIG).is_file():
        config, display = config / DEFAULT_CONFIG, os.path.join(display, DEFAULT_CONFIG)
    if config.is_file():
        return config, display
    if path is None:
        raise ConfigError(
            Problem(
                display,
                None,
                f"no {DEFAULT_CONFIG} in {config.parent}",
                f"run where {DEFAULT_CONFIG} is, or pass its path "
                f"(e.g. gptbatch validate path/to/{DEFAULT_CONFIG}); "
                f"to start a project here, `gptbatch init` writes a commented {DEFAULT_CONFIG}",
            )
        )
    if config.is_dir():
        raise ConfigError(
            Problem(
                display,
                None,
                f"is a directory with no {DEFAULT_CONFIG}",
                f"pass the config file's path, or create one: `gptbatch init {display}` writes a "
                f"commented {DEFAULT_CONFIG} there",
            )
        )
    raise ConfigError(
        Problem(
            display,
            None,
            "config file not found",
            "check the path; run `gptbatch validate` in the directory that holds "
            f"{DEFAULT_CONFIG} to use it by default",
        )
    )


def is_request_file(text: str) -> bool:
    """Whether text is a JSONL request file (its first line a request), not a config."""
    first = next((line for line in text.splitlines() if line.strip()), "")
    if not first.lstrip().startswith("{"):
        return False
    try:
        obj = json.loads(first)
    except ValueError:
        return False
    return isinstance(obj, dict) and ("custom_id" in obj or {"url", "body"} <= obj.keys())


def request_file_problem(config: Path, display: str) -> Problem:
    """Someone passed an input where the config goes: name the config that may list it."""
    near = next(
        (d / DEFAULT_CONFIG for d in (config.parent, *config.parent.parents[:2])
         if (d / DEFAULT_CONFIG).is_file()),
        None,
    )  # fmt: skip
    shown = os.path.relpath(near) if near is not None else DEFAULT_CONFIG
    return Problem(
        display,
        None,
        "this is a request file, not a config",
        f"pass the {DEFAULT_CONFIG} (gptbatch validate {shown}); it checks every request "
        "file listed under its inputs:",
    )


def read_text(config: Path, display: str) -> str:
    try:
        return config.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            Problem(display, None, f"not UTF-8 (byte {exc.start + 1})", "save it as UTF-8")
        ) from None
    except OSError as exc:
        raise ConfigError(Problem(display, None, f"cannot read: {exc.strerror}", "")) from None


class _Loader(yaml.SafeLoader):
    """The safe loader, noting where each alias is used so an alias bomb can be located."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.aliases: list[tuple[yaml.Node, int, str]] = []  # (node, line, anchor name)

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            node = super().compose_node(parent, index)
            self.aliases.append((node, event.start_mark.line + 1, event.anchor))
            return node
        return super().compose_node(parent, index)


def parse_yaml(text: str, display: str) -> tuple[Any, yaml.Node]:
    """The document and its node tree (for line numbers), from one safe parse."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is not None and loader.aliases:
            _check_aliases(node, loader.aliases, display)
        data = loader.construct_document(node) if node is not None else None
    except yaml.constructor.ConstructorError as exc:
        raise ConfigError(_constructor_problem(exc, display)) from None
    except RecursionError:
        raise ConfigError(
            Problem(display, None, "nested too deeply", "flatten the lists and mappings")
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = mark.line + 1 if mark is not None else None
        what = getattr(exc, "problem", None) or str(exc)
        if mark is not None:
            what = f"{what} (column {mark.column + 1})"
        raise ConfigError(
            Problem(display, line, f"YAML syntax error: {what}", "check indentation and quoting")
        ) from None
    finally:
        loader.dispose()
    if node is None:
        raise ConfigError(
            Problem(
                display, 1, "the config is empty", "it needs at least `inputs:` (a list of files)"
            )
        )
    return data, node


def _constructor_problem(exc: yaml.constructor.ConstructorError, display: str) -> Problem:
    """A tag the safe loader refuses (e.g. !!python/object/apply): it is never run."""
    mark = exc.problem_mark
    line = mark.line + 1 if mark is not None else None
    tag = re.search(r"tag '([^']*)'", exc.problem or "")
    if tag is None:
        return Problem(display, line, f"YAML error: {exc.problem}", "use plain YAML values")
    name = tag.group(1).replace("tag:yaml.org,2002:", "!!")
    return Problem(
        display,
        line,
        f"YAML tag {name!r} is not allowed",
        "batch.yaml holds plain values (text, numbers, lists, mappings); remove the tag",
    )


def _check_aliases(
    root: yaml.Node, aliases: list[tuple[yaml.Node, int, str]], display: str
) -> None:
    """Refuse a node graph whose aliases repeat too much (an alias bomb) or refer to themselves.

    Composing shares each aliased node, so the graph is small; its expansion, the number of
    values a walk would visit, is counted once per node (memoised), never by walking it.
    """
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def expanded(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise _Recursive(node)
        active.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(expanded(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(expanded(k) + expanded(v) for k, v in node.value)
        active.discard(key)
        sizes[key] = total
        return total

    try:
        total = expanded(root)
    except _Recursive as exc:
        node, line, anchor = next(a for a in aliases if a[0] is exc.node)
        raise ConfigError(
            Problem(
                display,
                line,
                f"YAML alias *{anchor} refers to a value that contains it "
                f"(anchor &{anchor} at line {node.start_mark.line + 1})",
                "a config cannot be recursive; write the value out instead",
            )
        ) from None
    if total - len(sizes) <= MAX_ALIAS_EXPANSION:
        return
    node, line, anchor = max(aliases, key=lambda a: (sizes[id(a[0])], -a[1]))
    raise ConfigError(
        Problem(
            display,
            line,
            f"YAML aliases expand the config to {total:,} values (*{anchor} alone to "
            f"{sizes[id(node)]:,}; anchor &{anchor} at line {node.start_mark.line + 1})",
            f"aliases may repeat at most {MAX_ALIAS_EXPANSION:,} values; write the values out "
            "instead of nesting aliases",
        )
    )


class _Recursive(Exception):
    """A YAML alias inside the value it names."""

    def __init__(self, node: yaml.Node) -> None:
        super().__init__()
        self.node = node


def non_finite_paths(value: Any, path: list[Any]) -> Iterator[list[Any]]:
    """Key paths of every NaN or infinity in a loaded config (YAML's .nan, .inf, 1e400)."""
    if isinstance(value, float):
        if not math.isfinite(value):
            yield path
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from non_finite_paths(item, [*path, key])
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from non_finite_paths(item, [*path, index])


def duplicate_keys(node: yaml.Node, display: str) -> list[Problem]:
    """Keys given twice in one mapping: YAML keeps the last silently, which hides mistakes."""
    problems: list[Problem] = []
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, yaml.MappingNode):
            first: dict[str, int] = {}
            for key, value in current.value:
                if isinstance(key, yaml.ScalarNode) and _written_in(key, current):
                    line = key.start_mark.line + 1
                    if key.value in first:
                        problems.append(
                            Problem(
                                display,
                                line,
                                f"duplicate key {key.value!r} (first at line {first[key.value]})",
                                "YAML keeps only the last one; remove the other",
                            )
                        )
                    first.setdefault(key.value, line)
                stack.append(value)
        elif isinstance(current, yaml.SequenceNode):
            stack.extend(current.value)
    return sorted(problems, key=lambda p: p.line or 0)


def _written_in(key: yaml.Node, mapping: yaml.Node) -> bool:
    """Was key written in mapping, not merged into it by `<<: *anchor` (which may override)?"""
    return mapping.start_mark.index <= key.start_mark.index <= mapping.end_mark.index


def node_at(node: yaml.Node, path: Sequence[Any], *, key: bool = False) -> yaml.Node:
    """The node at path (its key node if key), or the deepest ancestor found."""
    for depth, step in enumerate(path):
        child = None
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.value == str(step):
                    child = k if key and depth == len(path) - 1 else v
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(step, int) and step >= 0:
            child = node.value[step] if step < len(node.value) else None
        if child is None:
            return node
        node = child
    return node


def line_of(node: yaml.Node, path: Sequence[Any], *, key: bool = False) -> int:
    return node_at(node, path, key=key).start_mark.line + 1
