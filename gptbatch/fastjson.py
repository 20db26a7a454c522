"""JSON through orjson wherever the bytes equal the json module's; the json module elsewhere.

orjson parses and serialises an order of magnitude faster, but differs from the json module
in a few places that content keys must never see:

- parsing: integers beyond 64 bits become floats (json keeps them exact), so a value holding
  a whole float of 2**63 or more is parsed again by json;
- serialising: floats such as 1e-05 are written "0.00001" (json: float repr), NaN as null,
  and integers beyond 64 bits, lone surrogates, other types and deep nesting raise; so every
  float is checked against its repr, only plain dict/list/str/int/float/bool/None trees are
  given to orjson, and any orjson error falls back to json (which raises its own errors).

tests/test_fastjson.py proves equality on generated documents with hypothesis.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

try:
    import orjson
except ImportError:  # pragma: no cover - orjson is a dependency; json alone stays correct
    orjson = None  # type: ignore[assignment]

_JSON_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)
_BIG = float(2**63)
_MAX_DEPTH = 200  # deeper trees go to json, which raises RecursionError where it always did
_LEAVES = frozenset({str, int, bool, type(None)})  # written alike by both


def _orjson_safe(value: Any, depth: int = 0) -> bool:
    """Would orjson write value exactly as the json module does (sorted keys, no spaces)?"""
    kind = type(value)
    if kind is dict:
        if depth > _MAX_DEPTH:
            return False
        for key, item in value.items():
            if type(key) is not str:
                return False
            if type(item) not in _LEAVES and not _orjson_safe(item, depth + 1):
                return False
        return True
    if kind is list:
        if depth > _MAX_DEPTH:
            return False
        for item in value:
            if type(item) not in _LEAVES and not _orjson_safe(item, depth + 1):
                return False
        return True
    if kind is float:
        return orjson.dumps(value) == float.__repr__(value).encode()
    return kind in _LEAVES  # int range, surrogates: orjson raises and json takes over


def _maybe_big_int(value: Any, depth: int = 0) -> bool:
    """Could orjson have turned an integer literal beyond 64 bits into this float?"""
    kind = type(value)
    if kind is dict or kind is list:
        if depth > _MAX_DEPTH:
            return True
        for item in value.values() if kind is dict else value:
            if type(item) not in _LEAVES and _maybe_big_int(item, depth + 1):
                return True
        return False
    return kind is float and abs(value) >= _BIG and value.is_integer()


def canonical_dumps(obj: Any) -> bytes:
    """Sorted keys, separators (",", ":"), UTF-8 (ensure_ascii=False), no NaN: as json does."""
    if orjson is not None and _orjson_safe(obj):
        try:
            return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
        except orjson.JSONEncodeError:
            pass  # a big int or a lone surrogate: json decides (and raises where it did)
    return _JSON_ENCODER.encode(obj).encode("utf-8")


def fast_decoder(decode: Callable[[str], Any]) -> Callable[[str], Any]:
    """decode (a json.JSONDecoder's), sped up by orjson wherever both give the same value.

    Any text orjson rejects goes to decode, so errors and their messages are decode's.
    """
    if orjson is None:  # pragma: no cover
        return decode
    loads, error = orjson.loads, orjson.JSONDecodeError

    def fast_decode(text: str) -> Any:
        try:
            value = loads(text)
        except error:
            return decode(text)
        return decode(text) if _maybe_big_int(value) else value

    return fast_decode


def loads_reply(text: str) -> Any:
    """Parse a line the API sent: orjson, or json for what orjson rejects (json's errors).

    Not for content keys: an integer beyond 64 bits may come back a float, which no field
    read from a reply (custom_id, status, error code, usage) ever is.
    """
    if orjson is not None:
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
    return json.loads(text)
