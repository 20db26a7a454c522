"""Answers read back from result lines: the response's text and, when the request asked for a
JSON schema, the parsed value checked against it.

Checking uses `jsonschema` (already a dependency, for batch.yaml), Draft 2020-12.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = ["AnswerCheck", "answer_schema", "answer_text"]


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


class AnswerCheck:
    """Parses an answer and checks it against one JSON schema (Draft 2020-12)."""

    def __init__(self, schema: Mapping[str, Any]) -> None:
        from jsonschema import Draft202012Validator

        self.schema = dict(schema)
        self.properties = [str(k) for k in (self.schema.get("properties") or {})]
        self._validator = Draft202012Validator(self.schema)

    def __call__(self, text: str | None) -> tuple[Any, str | None]:
        """(the parsed answer, None), or (None, why it is not JSON matching the schema)."""
        from jsonschema.exceptions import best_match

        if text is None:
            return None, "the response has no text answer"
        try:
            value = json.loads(text)
        except ValueError as exc:
            return None, f"the answer is not JSON: {exc}"
        if self._validator.is_valid(value):  # the common case, and cheaper than the errors
            return value, None
        error = best_match(self._validator.iter_errors(value))
        if error is None:
            return value, None
        where = "/".join(str(p) for p in error.absolute_path)
        at = f" at {where}" if where else ""
        return None, f"the answer does not match the schema{at}: {error.message}"
