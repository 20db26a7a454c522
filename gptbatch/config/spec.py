"""Loading batch.yaml: safe YAML, validation against the JSON Schema, defaults, inputs and .env."""

from __future__ import annotations

import copy
import difflib
import errno
import glob
import json
import math
import os
import re
import stat
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from dotenv import load_dotenv
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from gptbatch.canonical import canonical_json, content_hash
from gptbatch.errors import ConfigError, Problem, redact

DEFAULT_CONFIG = "batch.yaml"
SCHEMA_PATH = Path(__file__).parents[1] / "schema" / "batch.schema.json"
RESERVED_METADATA_PREFIX = "gptbatch_"  # gptbatch's own 2 of the API's 16 metadata pairs
SIMULATED_SUFFIX = "-simulated"  # `build --simulate` writes to <output_dir>-simulated
LEGACY_STATE_DIR = ".gpt_batch_manager"  # where gpt_batch_manager keeps its generated project
# YAML aliases may repeat at most this many values beyond those written out: enough for any
# real config, and it stops a "billion laughs" alias bomb before anything walks its values.
MAX_ALIAS_EXPANSION = 10_000

_MAGIC = re.compile(r"[*?[]")
_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_PROJECT_CHARS = re.compile(r"[^A-Za-z0-9._:-]+")
_TYPE_WORDS = {
    "integer": "an integer",
    "number": "a number",
    "string": "a string",
    "object": "a mapping",
    "array": "a list",
    "boolean": "true or false",
    "null": "empty",
}


@dataclass(frozen=True)
class Limits:
    """Caps that packing and queueing respect."""

    enqueued_tokens: int | Mapping[str, int] | None
    safety_margin: float
    max_requests_per_batch: int
    max_bytes_per_batch: int
    enqueued_requests: int | Mapping[str, int] | None
    max_cost: float | None
    pipeline: int = 4
    # Where max_cost came from: "config" (a cap on the project's committed spend) or
    # "--max-cost" (a cap on what one build commits).
    max_cost_from: str = "config"

    def models(self) -> list[str]:
        """Models named in the per-model limit maps (not "*")."""
        names: set[str] = set()
        for value in (self.enqueued_tokens, self.enqueued_requests):
            if isinstance(value, Mapping):
                names.update(k for k in value if k != "*")
        return sorted(names)

    def token_limit(self, model: str) -> int | None:
        """The enqueued-token limit for model (a map's "*" covers other models); None: none."""
        return _per_model(self.enqueued_tokens, model)

    def request_limit(self, model: str) -> int | None:
        """The enqueued-request limit for model (a map's "*" covers other models); None: none."""
        return _per_model(self.enqueued_requests, model)

    def token_budget(self, model: str) -> int | None:
        """The token limit for model less the safety margin; None when there is no limit."""
        limit = self.token_limit(model)
        return None if limit is None else int(limit * (1.0 - self.safety_margin))


@dataclass(frozen=True)
class Polling:
    """Backoff for batch status checks."""

    initial_seconds: float
    max_seconds: float
    factor: float


@dataclass(frozen=True)
class ApiSettings:
    """How to reach the API; holds the key's variable name, never the key."""

    base_url: str | None
    api_key_env: str
    organization: str | None
    project: str | None
    provider: str = "openai"


@dataclass(frozen=True)
class Provider:
    """What a Batch API provider accepts, where it differs from OpenAI."""

    max_requests_per_batch: int
    completion_windows: tuple[str, ...] | None  # None: whatever the service takes
    needs_base_url: bool
    api_key_env: str


PROVIDERS: dict[str, Provider] = {
    "openai": Provider(50_000, ("24h",), False, "OPENAI_API_KEY"),
    "azure": Provider(100_000, ("24h",), True, "AZURE_OPENAI_API_KEY"),
    "compatible": Provider(50_000, None, True, "OPENAI_API_KEY"),
}


@dataclass(frozen=True)
class Spec:
    """A loaded, validated batch.yaml with defaults applied and paths made absolute."""

    path: Path
    root: Path
    inputs: tuple[Path, ...]
    output_dir: Path
    project: str
    model: str | None
    endpoint: str | None
    limits: Limits
    completion_window: str
    metadata: Mapping[str, str]
    retries: int
    polling: Polling
    api: ApiSettings
    prices: Mapping[str, Mapping[str, float]]
    upload_expires_after: int = 2_592_000
    output_expires_after: int | None = None
    delete_uploads: bool = False


def load_schema() -> dict[str, Any]:
    """The batch.yaml JSON Schema shipped in the package."""
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def load_spec(path: str | Path | None = None) -> Spec:
    """Load and validate a config (default ./batch.yaml); raise ConfigError listing every problem.

    Also loads `.env` beside the config and in the working directory (existing variables win).
    Every message passes through redact(): a key pasted into the config is never printed back.
    """
    try:
        return _load(path)
    except ConfigError as exc:
        raise ConfigError(
            [Problem(p.path, p.line, redact(p.message), redact(p.hint)) for p in exc.problems],
            truncated=exc.truncated,
        ) from None


def _load(path: str | Path | None) -> Spec:
    config, display = _locate(path)
    text = _read_text(config, display)
    if _is_request_file(text):
        raise ConfigError(_request_file_problem(config, display))
    data, node = _parse_yaml(text, display)
    schema = load_schema()
    # jsonschema lets NaN through every bound; say "not finite" once instead of its messages.
    non_finite = [path for path in _non_finite(data, []) if path]
    errors = [
        e
        for e in Draft202012Validator(schema).iter_errors(data)
        if not any(list(e.absolute_path)[: len(p)] == p for p in non_finite)
    ]
    problems = _duplicate_keys(node, display)
    problems += [_non_finite_problem(path, node, display) for path in non_finite]
    problems += _schema_problems(errors, node, schema, display)
    if errors and not isinstance(data, dict):
        raise ConfigError(problems)
    # Check what the schema cannot wherever the keys involved are valid, to report all at once.
    invalid = {e.absolute_path[0] for e in errors if e.absolute_path}
    invalid.update(path[0] for path in non_finite)
    invalid.update(
        k
        for e in errors
        if e.validator == "required" and not e.absolute_path
        for k in e.validator_value
    )
    full = _with_defaults(data, schema)
    if "api" not in invalid:
        _apply_provider(data, full)
    root = config.parent
    output_dir = Path(os.path.abspath(root / os.path.expanduser(str(full.get("output_dir")))))
    inputs: tuple[Path, ...] = ()
    later: list[Problem] = []
    if not invalid & {"inputs", "output_dir"}:
        inputs, later = _expand_inputs(full["inputs"], root, output_dir, node, display)
    later += _semantic_problems(full, node, display, invalid)
    if not invalid & {"api", "limits", "completion_window"}:
        later += _provider_problems(full, node, display)
    problems += sorted(later, key=lambda p: p.line or 0)
    if problems:
        raise ConfigError(problems)
    _load_env(root)
    return Spec(
        path=config,
        root=root,
        inputs=inputs,
        output_dir=output_dir,
        project=full["project"] or default_project(full["output_dir"], full["inputs"]),
        model=full["model"],
        endpoint=full["endpoint"],
        limits=_limits(full["limits"]),
        completion_window=full["completion_window"],
        metadata=dict(full["metadata"]),
        retries=int(full["retries"]),
        polling=Polling(**{k: float(v) for k, v in full["polling"].items()}),
        api=ApiSettings(**full["api"]),
        prices={
            model: {k: float(v) for k, v in price.items()}
            for model, price in full["prices"].items()
        },
        upload_expires_after=int(full["upload_expires_after"]),
        output_expires_after=full["output_expires_after"],
        delete_uploads=bool(full["delete_uploads"]),
    )


def config_fingerprint(spec: Spec) -> str:
    """What of batch.yaml shapes an input's rows: defaults (in keys) and prices (in costs)."""
    return canonical_json(
        {"model": spec.model, "endpoint": spec.endpoint, "prices": content_hash(spec.prices)}
    ).decode()


def keys_config_changed(old: str, new: str) -> bool:
    """Did model or endpoint (which go into keys) change between two fingerprints?"""
    a, b = json.loads(old), json.loads(new)
    return (a.get("model"), a.get("endpoint")) != (b.get("model"), b.get("endpoint"))


def api_key(spec: Spec) -> str | None:
    """The API key from the environment variable the spec names (after loading .env)."""
    _load_env(spec.root)
    return os.environ.get(spec.api.api_key_env) or None


# --- reading the file ------------------------------------------------------------------------


def _locate(path: str | Path | None) -> tuple[Path, str]:
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


def _is_request_file(text: str) -> bool:
    """Whether text is a JSONL request file (its first line a request), not a config."""
    first = next((line for line in text.splitlines() if line.strip()), "")
    if not first.lstrip().startswith("{"):
        return False
    try:
        obj = json.loads(first)
    except ValueError:
        return False
    return isinstance(obj, dict) and ("custom_id" in obj or {"url", "body"} <= obj.keys())


def _request_file_problem(config: Path, display: str) -> Problem:
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


def _read_text(config: Path, display: str) -> str:
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


def _parse_yaml(text: str, display: str) -> tuple[Any, yaml.Node]:
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


def _non_finite(value: Any, path: list[Any]) -> Iterator[list[Any]]:
    """Key paths of every NaN or infinity in a loaded config (YAML's .nan, .inf, 1e400)."""
    if isinstance(value, float):
        if not math.isfinite(value):
            yield path
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _non_finite(item, [*path, key])
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _non_finite(item, [*path, index])


def _non_finite_problem(path: list[Any], node: yaml.Node, display: str) -> Problem:
    found = _node_at(node, path)
    text = found.value if isinstance(found, yaml.ScalarNode) else "it"
    return Problem(
        display,
        _line(node, path),
        f"{_dotted(path)}: {text} is not a finite number",
        "use a finite number",
    )


def _duplicate_keys(node: yaml.Node, display: str) -> list[Problem]:
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


def _node_at(node: yaml.Node, path: Sequence[Any], *, key: bool = False) -> yaml.Node:
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


def _line(node: yaml.Node, path: Sequence[Any], *, key: bool = False) -> int:
    return _node_at(node, path, key=key).start_mark.line + 1


# --- schema errors -----------------------------------------------------------------------------


def _dotted(path: Sequence[Any]) -> str:
    """A key path as a user writes it: limits.safety_margin, inputs[2], prices["gpt-4.1"]."""
    out = ""
    for step in path:
        if isinstance(step, int):
            out += f"[{step}]"
        elif _PLAIN_KEY.match(str(step)):
            out += f".{step}" if out else str(step)
        else:
            out += f"[{json.dumps(str(step))}]"
    return out


def _show(value: Any) -> str:
    """A value for a message: key-like text masked first, then shortened."""
    text = redact(repr(value) if isinstance(value, str) else json.dumps(value, default=str))
    return text if len(text) <= 60 else text[:57] + "..."


def _looks_like_key(value: Any) -> bool:
    return isinstance(value, str) and (value.startswith("sk-") or redact(value) != value)


def _key_in_config(node: yaml.Node, value: str, display: str) -> Problem:
    return Problem(
        display,
        _line(node, ["api", "api_key_env"]),
        f"api.api_key_env: {_show(value)} looks like an API key",
        "api_key_env names an environment variable, not the key itself: put the key in "
        "OPENAI_API_KEY or .env (and revoke it if batch.yaml was shared)",
    )


def _kind(value: Any) -> str:
    """The JSON type word for a YAML value."""
    if value is None:
        return "empty"
    if isinstance(value, bool):
        return "true or false"
    for python_type, word in (
        (int, "an integer"),
        (float, "a number"),
        (str, "a string"),
        (dict, "a mapping"),
        (list, "a list"),
    ):
        if isinstance(value, python_type):
            return word
    return f"a {type(value).__name__}"


def _description(error: ValidationError, schema: Mapping[str, Any]) -> str:
    """What the failing key allows: the nearest description in the schema."""
    current: ValidationError | None = error
    while current is not None:
        if isinstance(current.schema, Mapping) and current.schema.get("description"):
            return str(current.schema["description"])
        current = current.parent  # type: ignore[assignment]
    found = str(schema.get("description", ""))
    node: Any = schema
    for step in error.absolute_path:
        node = node.get("properties", {}).get(step) if isinstance(node, Mapping) else None
        if not isinstance(node, Mapping):
            break
        found = str(node.get("description", found))
    return found


def _schema_problems(
    errors: list[ValidationError], node: yaml.Node, schema: Mapping[str, Any], display: str
) -> list[Problem]:
    """Every schema violation, shallow ones first, each with key path, line and what is allowed."""
    errors = sorted(
        errors, key=lambda e: (len(e.absolute_path), _line(node, list(e.absolute_path)))
    )
    problems: list[Problem] = []
    for error in errors:
        for problem in _render(error, node, schema, display):
            if problem not in problems:
                problems.append(problem)
    return problems


def _render(
    error: ValidationError, node: yaml.Node, schema: Mapping[str, Any], display: str
) -> list[Problem]:
    path = list(error.absolute_path)
    if path == ["api", "api_key_env"] and _looks_like_key(error.instance):
        return [_key_in_config(node, error.instance, display)]
    where = _dotted(path)
    prefix = f"{where}: " if where else ""
    hint = _description(error, schema)
    instance = error.instance
    if error.validator == "additionalProperties" and "properties" in error.schema:
        allowed = list(error.schema["properties"])
        out = []
        for extra in (k for k in instance if k not in allowed):
            close = difflib.get_close_matches(str(extra), allowed, n=1)
            guess = f" (did you mean {close[0]!r}?)" if close else ""
            scope = f"under {where}" if where else "at the top level"
            out.append(
                Problem(
                    display,
                    _line(node, [*path, extra], key=True),
                    f"{prefix}unknown key {_show(extra)}{guess}",
                    f"allowed keys {scope}: {', '.join(allowed)}",
                )
            )
        return out
    if error.validator == "required":
        properties = error.schema.get("properties", {})
        return [
            Problem(
                display,
                _line(node, path),
                f"{prefix}missing required key {name!r}",
                str(properties.get(name, {}).get("description", "")),
            )
            for name in error.validator_value
            if name not in instance
        ]
    if "propertyNames" in error.relative_schema_path:
        return [
            Problem(
                display,
                _line(node, [*path, instance], key=True),
                f"{prefix}key {_what(error)}",
                hint,
            )
        ]
    if error.validator == "type":
        wanted = error.validator_value
        wanted = [wanted] if isinstance(wanted, str) else [t for t in wanted if t != "null"]
        expected = " or ".join(_TYPE_WORDS.get(t, t) for t in wanted)
        if not path:
            message = f"the config must be a mapping of keys to values, not {_kind(instance)}"
        else:
            message = f"{where}: {_show(instance)} is {_kind(instance)}, expected {expected}"
        return [Problem(display, _line(node, path), message, hint)]
    return [Problem(display, _line(node, path), f"{prefix}{_what(error)}", hint)]


def _what(error: ValidationError) -> str:
    """What is wrong with the value, shortened: jsonschema's own messages repeat whole values."""
    instance, limit = error.instance, error.validator_value
    if error.validator in ("enum", "const"):
        return f"{_show(instance)} is not allowed"
    if error.validator == "pattern":
        return f"{_show(instance)} does not have the allowed form"
    if error.validator in ("maxLength", "minLength"):
        size = "long" if error.validator == "maxLength" else "short"
        bound = "at most" if error.validator == "maxLength" else "at least"
        return f"{_show(instance)} is too {size} ({len(instance)} characters, {bound} {limit})"
    if error.validator in ("maxProperties", "minProperties", "maxItems", "minItems"):
        unit = "entries" if error.validator.endswith("Properties") else "items"
        if error.validator.startswith("max"):
            return f"has {len(instance)} {unit}; at most {limit} allowed"
        return f"has {len(instance)} {unit}; at least {limit} needed"
    return str(error.message)


# --- defaults, inputs, cross-field checks ------------------------------------------------------


def _with_defaults(value: Any, schema: Mapping[str, Any]) -> Any:
    """value with the schema's documented defaults filled in for missing keys, recursively."""
    if not isinstance(value, dict) or "properties" not in schema:
        return value
    out = dict(value)
    for key, sub in schema["properties"].items():
        if key not in out and "default" in sub:
            out[key] = copy.deepcopy(sub["default"])
        if key in out:
            out[key] = _with_defaults(out[key], sub)
    return out


def _expand_inputs(
    patterns: Sequence[str], root: Path, output_dir: Path, node: yaml.Node, display: str
) -> tuple[tuple[Path, ...], list[Problem]]:
    """Input files: globs expanded and sorted per pattern, de-duplicated, absolute.

    A pattern naming an existing file is that file, even with glob characters in its name
    (in/a[1].jsonl); files under output and state directories are results, never inputs.
    """
    excluded = _excluded_dirs(root, output_dir)
    found: dict[Path, None] = {}
    problems: list[Problem] = []
    for index, pattern in enumerate(patterns):
        expanded = os.path.expanduser(pattern)
        literal = Path(os.path.abspath(root / expanded))
        if _MAGIC.search(expanded) and not os.path.lexists(literal):
            files, wrong = _glob_inputs(index, pattern, root, excluded)
        else:
            files, wrong = [literal], _literal_problems(index, pattern, literal, root, excluded)
        line = _line(node, ["inputs", index])
        problems += [Problem(display, line, message, hint) for message, hint in wrong]
        for file in files:
            found.setdefault(file, None)
    return tuple(found), problems


def _excluded_dirs(root: Path, output_dir: Path) -> list[tuple[Path, Path, str]]:
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


def _excluded_by(path: Path, excluded: list[tuple[Path, Path, str]]) -> str | None:
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
    label = _excluded_by(path, excluded)
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
        label = _excluded_by(path, excluded)
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


def _apply_provider(data: Mapping[str, Any], full: dict[str, Any]) -> None:
    """Defaults that depend on api.provider, where the config leaves them out."""
    provider = PROVIDERS[full["api"]["provider"]]
    given_limits = data.get("limits") if isinstance(data.get("limits"), dict) else {}
    given_api = data.get("api") if isinstance(data.get("api"), dict) else {}
    if isinstance(full.get("limits"), dict) and "max_requests_per_batch" not in given_limits:
        full["limits"]["max_requests_per_batch"] = provider.max_requests_per_batch
    if "api_key_env" not in given_api:
        full["api"]["api_key_env"] = provider.api_key_env


def _provider_problems(full: Mapping[str, Any], node: yaml.Node, display: str) -> list[Problem]:
    """A config that its provider would refuse: caps, completion windows, a missing base_url."""
    name = full["api"]["provider"]
    provider = PROVIDERS[name]
    problems = []
    if provider.needs_base_url and not full["api"]["base_url"]:
        example = (
            "https://YOUR-RESOURCE.openai.azure.com/openai/v1/"
            if name == "azure"
            else "the service's URL ending in /v1"
        )
        problems.append(
            Problem(
                display,
                _line(node, ["api", "provider"]),
                f"api.provider {name} needs api.base_url",
                f"set api.base_url, e.g. {example}",
            )
        )
    limits = full.get("limits")
    cap = provider.max_requests_per_batch
    if isinstance(limits, dict) and int(limits.get("max_requests_per_batch", 0)) > cap:
        problems.append(
            Problem(
                display,
                _line(node, ["limits", "max_requests_per_batch"]),
                f"limits.max_requests_per_batch {limits['max_requests_per_batch']} is over "
                f"{name}'s cap of {cap:,} requests per batch",
                f"use at most {cap}",
            )
        )
    windows = provider.completion_windows
    if windows is not None and full["completion_window"] not in windows:
        problems.append(
            Problem(
                display,
                _line(node, ["completion_window"]),
                f"completion_window {full['completion_window']!r} is not offered by {name}",
                f"use {' or '.join(windows)} (other windows need api.provider: compatible)",
            )
        )
    return problems


def _semantic_problems(
    full: Mapping[str, Any], node: yaml.Node, display: str, invalid: set[Any]
) -> list[Problem]:
    """Rules the schema cannot say, for keys that passed it: polling order, reserved metadata."""
    problems = []
    polling = full["polling"]
    if "polling" not in invalid and polling["initial_seconds"] > polling["max_seconds"]:
        problems.append(
            Problem(
                display,
                _line(node, ["polling", "initial_seconds"]),
                f"polling.initial_seconds ({polling['initial_seconds']}) is greater than "
                f"polling.max_seconds ({polling['max_seconds']})",
                "the first wait cannot be longer than the longest wait; lower it or raise "
                "max_seconds",
            )
        )
    key_env = full["api"].get("api_key_env") if "api" not in invalid else None
    if _looks_like_key(key_env):  # a key that happens to fit the variable-name pattern
        problems.append(_key_in_config(node, key_env, display))
    for key in full["metadata"] if "metadata" not in invalid else ():
        if str(key).startswith(RESERVED_METADATA_PREFIX):
            problems.append(
                Problem(
                    display,
                    _line(node, ["metadata", key], key=True),
                    f"metadata: key {key!r} is reserved",
                    f"keys starting with {RESERVED_METADATA_PREFIX} are gptbatch's own; rename it",
                )
            )
    return problems


def _limits(raw: Mapping[str, Any]) -> Limits:
    def count(value: Any) -> int | dict[str, int] | None:
        if isinstance(value, dict):
            return {str(k): int(v) for k, v in value.items()}
        return None if value is None else int(value)

    return Limits(
        enqueued_tokens=count(raw["enqueued_tokens"]),
        safety_margin=float(raw["safety_margin"]),
        max_requests_per_batch=int(raw["max_requests_per_batch"]),
        max_bytes_per_batch=int(raw["max_bytes_per_batch"]),
        enqueued_requests=count(raw["enqueued_requests"]),
        max_cost=None if raw["max_cost"] is None else float(raw["max_cost"]),
        pipeline=int(raw.get("pipeline", 4)),
    )


def _per_model(value: int | Mapping[str, int] | None, model: str) -> int | None:
    if value is None or isinstance(value, int):
        return value
    return value.get(model, value.get("*"))


def default_project(output_dir: str, inputs: Sequence[str]) -> str:
    """The project id when batch.yaml sets none: from output_dir and inputs as written.

    Not from the config's file name or where the checkout lives: a renamed config, a moved
    checkout or another CI runner must find the batches an earlier run left at the API.
    """
    stem = _PROJECT_CHARS.sub("-", Path(output_dir).name).strip(".-_:")[:40] or "gptbatch"
    digest = content_hash({"output_dir": output_dir, "inputs": list(inputs)})[:8]
    return f"{stem}-{digest}"


def _load_env(root: Path) -> None:
    """Load .env beside the config, then in the working directory; existing variables win."""
    for directory in (root, Path.cwd()):
        env = directory / ".env"
        if env.is_file():
            load_dotenv(env, override=False)
