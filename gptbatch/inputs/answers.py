"""Answers read back from result lines: the response's text and, when the request asked for a
JSON schema, the parsed value checked against it.

Checking is `jsonschema`'s (already a dependency, for batch.yaml), Draft 2020-12; the subset
structured outputs use is checked directly, faster, with jsonschema still naming what is wrong.
"""

from __future__ import annotations

import array
import base64
import binascii
import json
import sys
from collections.abc import Mapping
from typing import Any

__all__ = ["AnswerCheck", "answer_properties", "answer_schema", "answer_text"]


def answer_schema(request: Mapping[str, Any]) -> dict[str, Any] | None:
    """The JSON schema a request (url and body) asks its answer to match, if any:
    response_format.json_schema.schema for chat, text.format.schema for responses."""
    body = request.get("body")
    if not isinstance(body, Mapping):
        return None
    if str(request.get("url", "")).rstrip("/").endswith("/responses"):
        text = body.get("text")
        fmt = text.get("format") if isinstance(text, Mapping) else None
        schema = fmt.get("schema") if isinstance(fmt, Mapping) else None
    else:
        fmt = body.get("response_format")
        spec = fmt.get("json_schema") if isinstance(fmt, Mapping) else None
        schema = spec.get("schema") if isinstance(spec, Mapping) else None
    if not isinstance(fmt, Mapping) or fmt.get("type") != "json_schema":
        return None
    return dict(schema) if isinstance(schema, Mapping) else None


def answer_properties(request: Mapping[str, Any]) -> list[str]:
    """The top-level properties of the request's answer schema (a table column each)."""
    schema = answer_schema(request)
    return [str(k) for k in (schema.get("properties") or {})] if schema is not None else []


def answer_text(result: Mapping[str, Any]) -> str | None:
    """The text of a result line's answer (chat, responses, completions); None if it has
    none (an embedding, an error, a refusal)."""
    response = result.get("response")
    body = response.get("body") if isinstance(response, Mapping) else None
    if not isinstance(body, Mapping):
        return None
    if body.get("object") == "response" or isinstance(body.get("output"), list):
        parts = [
            part.get("text", "")
            for item in body.get("output") or []
            if isinstance(item, Mapping) and item.get("type") == "message"
            for part in item.get("content") or []
            if isinstance(part, Mapping) and part.get("type") == "output_text"
        ]
        return "".join(parts) if parts else None
    candidates = body.get("candidates")  # Gemini's GenerateContentResponse
    if isinstance(candidates, list) and candidates and isinstance(candidates[0], Mapping):
        parts = (candidates[0].get("content") or {}).get("parts") or []
        texts = [p.get("text") for p in parts if isinstance(p, Mapping)]
        return "".join(t for t in texts if isinstance(t, str)) if any(texts) else None
    if body.get("type") == "message" and isinstance(body.get("content"), list):  # Anthropic
        texts = [
            block.get("text", "")
            for block in body["content"]
            if isinstance(block, Mapping) and block.get("type") == "text"
        ]
        return "".join(texts) if texts else None
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
        return None
    first = choices[0]
    message = first.get("message")
    if isinstance(message, Mapping):
        content = message.get("content")
        return content if isinstance(content, str) else None
    text = first.get("text")
    return text if isinstance(text, str) else None


def embedding_of(result: Mapping[str, Any]) -> list[float] | None:
    """The vector of an embeddings result line with one input (floats, or base64 of
    little-endian float32s); None for any other result, or one of several inputs."""
    response = result.get("response")
    body = response.get("body") if isinstance(response, Mapping) else None
    data = body.get("data") if isinstance(body, Mapping) else None
    if not isinstance(data, list) or len(data) != 1 or not isinstance(data[0], Mapping):
        return None
    vector = data[0].get("embedding")
    if isinstance(vector, str):
        try:
            packed = base64.b64decode(vector, validate=True)
        except (ValueError, binascii.Error):
            return None
        if len(packed) % 4:
            return None
        return [float(x) for x in array.array("f", packed)] if sys.byteorder == "little" else None
    if isinstance(vector, list) and all(isinstance(x, (int, float)) for x in vector):
        return [float(x) for x in vector]
    return None


class AnswerCheck:
    """Parses an answer and checks it against one JSON schema (Draft 2020-12)."""

    def __init__(self, schema: Mapping[str, Any]) -> None:
        from jsonschema import Draft202012Validator

        self.schema = dict(schema)
        self.properties = [str(k) for k in (self.schema.get("properties") or {})]
        self._validator = Draft202012Validator(self.schema)
        # The common subset checked directly (jsonschema takes ~40 us an answer); a schema
        # using anything else is checked by jsonschema alone.
        self._fast = _fast_check(self.schema)

    def __call__(self, text: str | None) -> tuple[Any, str | None]:
        """(the parsed answer, None), or (None, why it is not JSON matching the schema)."""
        from jsonschema.exceptions import best_match

        if text is None:
            return None, "the response has no text answer"
        try:
            value = json.loads(text)
        except ValueError as exc:
            return None, f"the answer is not JSON: {exc}"
        valid = self._fast(value) if self._fast is not None else self._validator.is_valid(value)
        if valid:
            return value, None
        error = best_match(self._validator.iter_errors(value))
        if error is None:
            return value, None
        where = "/".join(str(p) for p in error.absolute_path)
        at = f" at {where}" if where else ""
        return None, f"the answer does not match the schema{at}: {error.message}"


# Keywords that say nothing about validity (annotations), and those _fast_check checks.
_ANNOTATIONS = frozenset({"title", "description", "default", "examples", "$comment", "format"})
_CHECKED = frozenset(
    {"type", "properties", "required", "additionalProperties", "items", "enum", "const"}
)
_TYPES: dict[str, Any] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "integer": lambda v: (
        (isinstance(v, int) and not isinstance(v, bool))
        or (isinstance(v, float) and v.is_integer())
    ),
}


def _fast_check(schema: Any) -> Any:
    """A function telling whether a value matches schema, for the subset of JSON Schema
    structured outputs use (type, properties, required, additionalProperties, items, enum,
    const); None if schema uses anything else."""
    if schema is True:
        return lambda v: True
    if not isinstance(schema, dict) or set(schema) - _ANNOTATIONS - _CHECKED:
        return None
    checks: list[Any] = []
    kind = schema.get("type")
    if kind is not None:
        kinds = kind if isinstance(kind, list) else [kind]
        if not all(isinstance(k, str) and k in _TYPES for k in kinds):
            return None
        tests = [_TYPES[k] for k in kinds]
        checks.append(lambda v: any(t(v) for t in tests))
    if "enum" in schema or "const" in schema:
        return (
            None if not isinstance(schema.get("enum", []), list) else _with_values(schema, checks)
        )
    properties = schema.get("properties", {})
    required = schema.get("required", [])
    extra = schema.get("additionalProperties", True)
    if (
        not isinstance(properties, dict)
        or not isinstance(required, list)
        or extra not in (True, False)
    ):
        return None
    subs = {k: _fast_check(v) for k, v in properties.items()}
    if any(f is None for f in subs.values()):
        return None
    if properties or required or extra is False:

        def check_object(v: Any) -> bool:
            if not isinstance(v, dict):
                return True  # not an object: only `type` says anything about it
            if any(k not in v for k in required):
                return False
            if extra is False and any(k not in subs for k in v):
                return False
            return all(f(v[k]) for k, f in subs.items() if k in v)

        checks.append(check_object)
    if "items" in schema:
        item = _fast_check(schema["items"])
        if item is None:
            return None
        checks.append(lambda v: not isinstance(v, list) or all(item(x) for x in v))
    return lambda v: all(c(v) for c in checks)


def _with_values(schema: dict[str, Any], checks: list[Any]) -> Any:
    """A check for a schema with enum or const (and maybe type): nothing else may be there."""
    if set(schema) - _ANNOTATIONS - {"type", "enum", "const"}:
        return None
    allowed = list(schema.get("enum", []))
    if "const" in schema:
        const = schema["const"]
        checks.append(lambda v: _same(v, const))
    if "enum" in schema:
        checks.append(lambda v: any(_same(v, a) for a in allowed))
    return lambda v: all(c(v) for c in checks)


def _same(a: Any, b: Any) -> bool:
    """JSON equality: 1 == 1.0, but True is not 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b
