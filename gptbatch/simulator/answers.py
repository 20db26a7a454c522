"""What the simulator answers a request that asks for JSON: a value matching its JSON schema.

The value is derived from the request's digest, so the same request gets the same answer in
every batch. Only the common subset of JSON Schema is understood (type, properties, items,
enum, const, anyOf/oneOf); anything else gets a string.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = ["INVALID_JSON", "json_schema", "reply_json"]

# What an answer that is not JSON looks like (a reply cut off mid-object).
INVALID_JSON = '{"simulated": true, "cut off'


def json_schema(body: dict[str, Any], endpoint: str) -> dict[str, Any] | None:
    """The JSON schema a request asks its answer to match, if any."""
    if endpoint == "/v1/responses":
        text = body.get("text")
        fmt = text.get("format") if isinstance(text, dict) else None
        schema = fmt.get("schema") if isinstance(fmt, dict) else None
    else:
        fmt = body.get("response_format")
        spec = fmt.get("json_schema") if isinstance(fmt, dict) else None
        schema = spec.get("schema") if isinstance(spec, dict) else None
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        return None
    return schema if isinstance(schema, dict) else None


def reply_json(schema: dict[str, Any], digest: str, index: int) -> str:
    """A JSON text matching schema, the same for the same (digest, index)."""
    return json.dumps(_value(schema, f"{digest}:{index}", 0), ensure_ascii=False)


def _number(seed: str) -> int:
    return int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "big")


def _value(schema: Any, seed: str, depth: int) -> Any:
    if not isinstance(schema, dict):
        return None
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][_number(seed) % len(schema["enum"])]
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return _value(schema[key][0], seed, depth)
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):  # e.g. ["string", "null"]: the first that is not null
        kind = next((k for k in kind if k != "null"), "null")
    n = _number(seed)
    if kind == "object":
        properties = schema.get("properties")
        if not isinstance(properties, dict) or depth > 8:
            return {}
        return {k: _value(v, f"{seed}/{k}", depth + 1) for k, v in properties.items()}
    if kind == "array":
        count = max(int(schema.get("minItems", 1) or 0), 1 + n % 2)
        return [_value(schema.get("items"), f"{seed}[{i}]", depth + 1) for i in range(count)]
    if kind == "integer":
        low = int(schema.get("minimum", 0))
        high = int(schema.get("maximum", low + 99))
        return low + n % (high - low + 1) if high >= low else low
    if kind == "number":
        low = float(schema.get("minimum", 0))
        high = float(schema.get("maximum", low + 100))
        return round(low + (n % 1000) / 1000 * (high - low), 3)
    if kind == "boolean":
        return n % 2 == 0
    if kind == "null":
        return None
    return f"simulated {n:x}"
