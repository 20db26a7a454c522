"""Request lines in Gemini's batch shape (`{"key", "request": {...GenerateContentRequest...}}`).

A target whose provider is gemini reads these; each becomes the same `Request` an OpenAI
line does (method POST, url GENERATE_URL, body = request with its model), so content keys,
shards and the store work unchanged. The model is the config's `model`, or the line's
`request.model` (with or without `models/`); it is kept in the body, without the prefix, so
requests group by model: a Gemini batch job runs one model. A line in another provider's
shape is a located error that says so.
"""

from __future__ import annotations

import json
from typing import Any

from gptbatch.canonical import canonical_json

GENERATE_URL = "/v1beta/generateContent"  # the endpoint of every request of a gemini target
MESSAGES_URL = "/v1/messages"  # Anthropic's (see messages_lines.py)
SHAPE = (
    'each line is {"key": ..., "request": {"contents": [{"role": "user", "parts": '
    '[{"text": ...}]}]}}'
)
OPENAI_KEYS = frozenset({"method", "url", "body"})


def provider_of(endpoint: str | None) -> str:
    """The provider a target's endpoint stands for, as the config names it."""
    return {GENERATE_URL: "gemini", MESSAGES_URL: "anthropic"}.get(endpoint or "", "openai")


def check_line(
    reader: Any, index: int, number: int, obj: dict[str, Any]
) -> tuple[str, str, str, dict[str, Any]] | None:
    """A line read by a validator (inputs.requests._Reader) that is, or should be, in
    Gemini's shape: its fields as (custom_id, method, url, body), or None with its problems
    recorded."""
    path = reader.names[index]
    target = provider_of(reader.endpoint)
    if target != "gemini":  # a Gemini line in another provider's target
        reader.problem(
            path,
            number,
            f"this line looks like a Gemini request ({{key, request}}); the target's provider "
            f"is {target}",
            "write it in that provider's shape, or set api.provider: gemini",
        )
        return None
    if obj.keys() & OPENAI_KEYS:
        theirs = "an OpenAI request"
    elif "params" in obj:
        theirs = "an Anthropic request"
    else:
        theirs = None
    if theirs is not None:
        reader.problem(
            path,
            number,
            f"this line looks like {theirs}; the target's provider is gemini",
            f"{SHAPE}, or set api.provider to the request's provider",
        )
        return None
    before = reader.count
    key = obj.get("key")
    if not isinstance(key, str) or not key:
        got = "missing key" if key is None else "key must be a non-empty string"
        reader.problem(path, number, got, f"{SHAPE}; key names the request in the outputs")
        key = None
    else:
        reader.check_custom_id(index, number, {"custom_id": key})  # unique across inputs
    request = obj.get("request")
    if not isinstance(request, dict):
        got = "missing request" if request is None else "request must be a JSON object"
        reader.problem(path, number, got, SHAPE)
        request = None
    for extra in sorted(obj.keys() - {"key", "request"}):
        reader.problem(path, number, f"unknown key {extra!r}", f"{SHAPE}; parameters go in request")
    if request is not None:
        _check_request(reader, path, number, request)
    if reader.count != before or key is None or request is None:
        return None
    return key, "POST", GENERATE_URL, request


def _check_request(reader: Any, path: str, number: int, request: dict[str, Any]) -> None:
    model = request.get("model", reader.model)
    if isinstance(model, str) and model:
        model = model.removeprefix("models/")
        request["model"] = model  # ours to change: the dict was just parsed
    if not isinstance(model, str) or not model:
        reader.problem(
            path, number, "request.model is missing", "add a model or set model in batch.yaml"
        )
    elif reader.model is not None and model != reader.model.removeprefix("models/"):
        reader.problem(
            path,
            number,
            f"request.model {model!r} differs from the config's model {reader.model!r}",
            "remove the model from the request or change model in batch.yaml",
        )
    contents = request.get("contents")
    if not isinstance(contents, list) or not contents:
        reader.problem(
            path,
            number,
            "request.contents must be a non-empty list",
            'e.g. "contents": [{"role": "user", "parts": [{"text": "Hello"}]}]',
        )
    elif not all(
        isinstance(c, dict)
        and isinstance(c.get("parts"), list)
        and c.get("role", "user") in ("user", "model")
        for c in contents
    ):
        reader.problem(
            path,
            number,
            "each of request.contents needs a parts list (and a role user or model)",
            "fix the contents",
        )


def upload_line(raw: bytes, model: str | None) -> bytes:
    """The canonical line of a Gemini-shaped input line (what its content key hashes)."""
    obj = json.loads(raw.lstrip(b"\xef\xbb\xbf"))
    body = obj["request"]
    if isinstance(body, dict):
        given = body.get("model", model)
        if isinstance(given, str):
            body["model"] = given.removeprefix("models/")
    return canonical_json(
        {"custom_id": obj["key"], "method": "POST", "url": GENERATE_URL, "body": body}
    )
