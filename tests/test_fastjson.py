"""orjson where it is byte-identical to json: canonical bytes and parsed values, proven on
generated documents (floats tiny, huge and -0.0, integers beyond 64 bits, any unicode)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gptbatch.canonical import canonical_json
from gptbatch.fastjson import canonical_dumps, fast_decoder, loads_reply

REFERENCE = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def reject(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in JSON")


PARSE = json.JSONDecoder(parse_constant=reject).decode
FAST_PARSE = fast_decoder(PARSE)


def reference(obj: Any) -> bytes:
    return REFERENCE.encode(obj).encode("utf-8")


def outcome(func: Any, arg: Any) -> tuple[str, Any]:
    """("ok", repr of the value) or ("error", the exception's type and message)."""
    try:
        return "ok", repr(func(arg))
    except (ValueError, TypeError, RecursionError) as exc:  # UnicodeEncodeError is a ValueError
        return "error", (type(exc).__name__, str(exc))


EDGE_FLOATS = [
    0.0,
    -0.0,
    1e-05,
    -1e-05,
    0.0001,
    1e-4 * 0.999,
    1e16,
    1e15,
    9999999999999998.0,
    1.7976931348623157e308,
    5e-324,
    2.2250738585072014e-308,
    0.1,
    1 / 3,
    123456789.125,
    1e22,
    1e21,
    -1.5e300,
]
EDGE_INTS = [
    0,
    -1,
    2**53 + 1,
    2**63 - 1,
    2**63,
    -(2**63),
    -(2**63) - 1,
    2**64 - 1,
    2**64,
    10**30,
    -(10**40),
]

floats = st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from(EDGE_FLOATS)
ints = st.integers() | st.sampled_from(EDGE_INTS) | st.integers(-(2**70), 2**70)
texts = st.text() | st.text(st.characters(codec=None, min_codepoint=0, max_codepoint=0x10FFFF))
leaves = st.none() | st.booleans() | ints | floats | texts
documents = st.recursive(
    leaves,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(texts, children, max_size=5),
    max_leaves=30,
)
bodies = st.fixed_dictionaries(
    {"model": st.sampled_from(["gpt-4o-mini", "text-embedding-3-small"]), "x": documents},
    optional={"temperature": floats, "n": ints, "messages": documents},
)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(documents, bodies))
def test_canonical_bytes_equal_the_json_module(doc: Any) -> None:
    assert outcome(canonical_dumps, doc) == outcome(reference, doc)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(documents, st.booleans(), st.sampled_from([(",", ":"), (", ", ": "), (" ,", " : ")]))
def test_parsed_values_equal_the_json_module(doc: Any, ascii_only: bool, seps: Any) -> None:
    text = json.dumps(doc, ensure_ascii=ascii_only, separators=seps)
    assert outcome(FAST_PARSE, text) == outcome(PARSE, text)


number_literals = st.from_regex(r"\A-?(0|[1-9][0-9]{0,40})(\.[0-9]{1,30})?([eE][+-]?[0-9]{1,4})?\Z")


@settings(max_examples=200)
@given(number_literals)
def test_number_literals_parse_to_the_same_value(literal: str) -> None:
    for text in (literal, f"[{literal}]", f'{{"n": {literal}, "s": "{literal}"}}'):
        assert outcome(FAST_PARSE, text) == outcome(PARSE, text)


@settings(max_examples=200)
@given(
    st.text(
        alphabet=st.sampled_from(list('{}[]",:0123456789.eE-+ \t\n\\u"abnrtf\x01')), max_size=30
    )
)
def test_junk_is_rejected_or_parsed_alike(text: str) -> None:
    assert outcome(FAST_PARSE, text) == outcome(PARSE, text)


@pytest.mark.parametrize(
    "text",
    [
        '"\\ud800"',  # lone surrogate escape: json parses it, canonical_json refuses it
        "1e400",  # inf: json parses it, canonical_json refuses it
        "NaN",
        "-Infinity",
        "123456789012345678901234567890",
        "18446744073709551616",
        '{"a": 1, "b": 2, "a": 3}',
        "[" * 3000 + "]" * 3000,
        '"\x01"',
        "\ufeff{}",
    ],
)
def test_edge_texts_behave_as_with_json(text: str) -> None:
    assert outcome(FAST_PARSE, text) == outcome(PARSE, text)
    parsed = outcome(PARSE, text)
    if parsed[0] == "ok":
        value = PARSE(text)
        assert outcome(canonical_json, value) == outcome(reference, value)


def test_values_json_refuses_are_refused_alike() -> None:
    circular: list[Any] = []
    circular.append(circular)
    for value in (math.nan, math.inf, {1: "int key"}, {"s": {1, 2}}, circular, "\udc80", (1, 2)):
        assert outcome(canonical_dumps, value) == outcome(reference, value)


def _within_64_bits(doc: Any) -> bool:
    if isinstance(doc, dict):
        return all(_within_64_bits(v) for v in doc.values())
    if isinstance(doc, list):
        return all(_within_64_bits(v) for v in doc)
    return not isinstance(doc, int) or isinstance(doc, bool) or -(2**63) <= doc < 2**64


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_reply_lines_parse_as_json_does_up_to_64_bit_integers(doc: Any) -> None:
    text = json.dumps(doc)
    got, expected = outcome(loads_reply, text), outcome(json.loads, text)
    if _within_64_bits(doc):
        assert got == expected
    else:  # parsed all the same, the big integer maybe as a float
        assert got[0] == expected[0] == "ok"


@settings(max_examples=200)
@given(
    st.text(
        alphabet=st.sampled_from(list('{}[]",:0123456789.eE-+ \t\n\\u"abnrtf\x01N')), max_size=30
    )
)
def test_junk_reply_lines_are_rejected_as_json_rejects_them(text: str) -> None:
    expected = outcome(json.loads, text)
    if expected[0] == "error":
        assert outcome(loads_reply, text) == expected
