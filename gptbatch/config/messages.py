"""Schema violations and other config problems as located, readable messages."""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import yaml
from jsonschema.exceptions import ValidationError

from gptbatch.config.yaml_source import line_of, node_at
from gptbatch.errors import Problem, redact

_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_TYPE_WORDS = {
    "integer": "an integer",
    "number": "a number",
    "string": "a string",
    "object": "a mapping",
    "array": "a list",
    "boolean": "true or false",
    "null": "empty",
}


def non_finite_problem(path: list[Any], node: yaml.Node, display: str) -> Problem:
    found = node_at(node, path)
    text = found.value if isinstance(found, yaml.ScalarNode) else "it"
    return Problem(
        display,
        line_of(node, path),
        f"{_dotted(path)}: {text} is not a finite number",
        "use a finite number",
    )


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


def looks_like_key(value: Any) -> bool:
    return isinstance(value, str) and (value.startswith("sk-") or redact(value) != value)


def key_in_config(node: yaml.Node, value: str, display: str) -> Problem:
    return Problem(
        display,
        line_of(node, ["api", "api_key_env"]),
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


def schema_problems(
    errors: list[ValidationError], node: yaml.Node, schema: Mapping[str, Any], display: str
) -> list[Problem]:
    """Every schema violation, shallow ones first, each with key path, line and what is allowed."""
    errors = sorted(
        errors, key=lambda e: (len(e.absolute_path), line_of(node, list(e.absolute_path)))
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
    if path == ["api", "api_key_env"] and looks_like_key(error.instance):
        return [key_in_config(node, error.instance, display)]
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
                    line_of(node, [*path, extra], key=True),
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
                line_of(node, path),
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
                line_of(node, [*path, instance], key=True),
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
        return [Problem(display, line_of(node, path), message, hint)]
    return [Problem(display, line_of(node, path), f"{prefix}{_what(error)}", hint)]


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
