"""Request lines in Anthropic's shape (`{"custom_id", "params": {...Messages body...}}`).

A target whose provider is anthropic reads these; each becomes the same `Request` an OpenAI
line does (method POST, url /v1/messages, body = params), so content keys, shards and the
store work unchanged. A line in the other provider's shape is a located error that says so.
"""

from __future__ import annotations

import json
from typing import Any

from gptbatch.canonical import canonical_json

MESSAGES_URL = "/v1/messages"  # the endpoint of every request of an anthropic target
SHAPE = 'each line is {"custom_id": ..., "params": {"max_tokens": ..., "messages": [...]}}'
OPENAI_KEYS = frozenset({"method", "url", "body"})


def check_line(
    reader: Any, index: int, number: int, obj: dict[str, Any]
) -> tuple[str, str, str, dict[str, Any]] | None:
    """A line read by a validator (inputs.requests._Reader) that is, or should be, in
    Anthropic's shape: its fields as (custom_id, method, url, body), or None with its
    problems recorded."""
    path = reader.names[index]
    if reader.endpoint != MESSAGES_URL:  # an Anthropic line in an OpenAI target
        reader.problem(
            path,
            number,
            "this line looks like an Anthropic request ({custom_id, params}); the target's "
            "provider is openai",
            "write it as {custom_id, method, url, body}, or set api.provider: anthropic",
        )
        return None
    before = reader.count
    if obj.keys() & OPENAI_KEYS:
        reader.problem(
            path,
            number,
            "this line looks like an OpenAI request; the target's provider is anthropic",
            f"{SHAPE}, or set api.provider to openai",
        )
        return None
    custom_id = reader.check_custom_id(index, number, obj)
    params = obj.get("params")
    if not isinstance(params, dict):
        got = "missing params" if params is None else "params must be a JSON object"
        reader.problem(path, number, got, SHAPE)
        params = None
    for extra in sorted(obj.keys() - {"custom_id", "params"}):
        reader.problem(path, number, f"unknown key {extra!r}", f"{SHAPE}; parameters go in params")
    if params is not None:
        _check_params(reader, path, number, params)
    if reader.count != before or custom_id is None or params is None:
        return None
    return custom_id, "POST", MESSAGES_URL, params


def _check_params(reader: Any, path: str, number: int, params: dict[str, Any]) -> None:
    if "model" not in params and reader.model is not None:
        params["model"] = reader.model  # ours to change: the dict was just parsed
    model = params.get("model")
    if not isinstance(model, str) or not model:
        reader.problem(
            path, number, "params.model is missing", "add a model or set model in batch.yaml"
        )
    elif reader.model is not None and model != reader.model:
        reader.problem(
            path,
            number,
            f"params.model {model!r} differs from the config's model {reader.model!r}",
            "remove the model from the request or change model in batch.yaml",
        )
    tokens = params.get("max_tokens")
    if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 1:
        reader.problem(
            path,
            number,
            "params.max_tokens must be a positive integer",
            'add e.g. "max_tokens": 1024',
        )
    messages = params.get("messages")
    if not isinstance(messages, list) or not messages:
        reader.problem(
            path,
            number,
            "params.messages must be a non-empty list",
            'e.g. "messages": [{"role": "user", "content": "Hello"}]',
        )
    elif not all(isinstance(m, dict) and m.get("role") in ("user", "assistant") for m in messages):
        reader.problem(
            path,
            number,
            "each of params.messages needs a role user or assistant",
            "fix the messages",
        )
    if params.get("stream") is True:
        reader.problem(path, number, "params.stream is true", "batches do not stream; remove it")


def upload_line(raw: bytes, model: str | None) -> bytes:
    """The canonical line of an Anthropic-shaped input line (what its content key hashes)."""
    obj = json.loads(raw.lstrip(b"\xef\xbb\xbf"))
    body = obj["params"]
    if model is not None and isinstance(body, dict) and "model" not in body:
        body["model"] = model
    return canonical_json(
        {"custom_id": obj["custom_id"], "method": "POST", "url": MESSAGES_URL, "body": body}
    )
