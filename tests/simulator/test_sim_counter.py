"""The fast simulator: fastokens counts and orjson parsing give exactly what tiktoken and json
give, so a simulator run with --fast-counter bills and answers as one without."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from simtools import chat, fixed_entropy, manual_service, submit

from gptbatch.inputs import fast_counter
from gptbatch.simulator import validation
from gptbatch.simulator.results import FAST_GUARDED, FAST_MAX_CHARS, TokenCounter

TEXTS = [
    "hello world",
    "Simulated reply to request 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08.",
    "naïve café — 東京は晴れ。 안녕하세요 مرحبا שלום नमस्ते 👩‍👩‍👧‍👦 🇫🇷",
    "a\u180eb",  # cl100k: fastokens classes it unlike tiktoken, so tiktoken counts it
    "lone \ud800 surrogate",  # fastokens raises on it; tiktoken counts it as U+FFFD
    "x" * 50 + " " * 3000 + "y",
    "word " * (FAST_MAX_CHARS // 5 + 10),  # past the piecewise limit: tiktoken's to count
    "I'll 12345678901234 '''  \r\n\r\n\t tabs",
]
MODELS = ["gpt-4o-mini", "gpt-4", "gpt-3.5-turbo"]  # o200k_base and cl100k_base


def test_fast_counts_are_tiktokens_counts_and_fastokens_is_used() -> None:
    fast, plain = TokenCounter(fast=True), TokenCounter()
    for model in MODELS:
        for text in TEXTS:
            assert fast.text(model, text) == plain.text(model, text), (model, text[:20])
        assert fast._counting(model)[1] is not None  # fastokens loaded, canary passed


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=300))
def test_fast_counts_equal_tiktoken_on_any_text(text: str) -> None:
    fast, plain = _COUNTERS
    for model in ("gpt-4o-mini", "gpt-4"):
        assert fast.text(model, text) == plain.text(model, text)


_COUNTERS = (TokenCounter(fast=True), TokenCounter())


def test_guarded_characters_are_the_clients_proven_set() -> None:
    """The client's set is proven by a sweep of every code point (test_fast_counter.py)."""
    assert {k: frozenset(v) for k, v in FAST_GUARDED.items()} == fast_counter.GUARDED_CHARS


LINES = [
    b'{"a": 1, "b": [1.5, -0.0, 1e-05, 3.0e10], "c": "\\u00e9\\n"}',
    b'{"big": 123456789012345678901234567890, "n": -9223372036854775809}',
    b'{"id": "12345678901234567890123"}',  # a long digit run in a string: json parses it
    b'{"a": 1234567890, "b": 123456789, "c": 18446744073709551616}',  # many digits, one long run
    b'{"a": 1234567890, "b": 1234567890, "c": 9.5}',  # 20 digits but no run of 19: orjson
    b'{"a": NaN, "b": Infinity}',
    b'\xef\xbb\xbf{"a": 1}',
    b'{"a": "\\ud800"}',
    b'{"a": 1e400}',
    b'{"a": 1, "a": 2}',
    b'{"a": 1} x',
    b'{"a": "\xff"}',
    b'{"a": "tab\there"}',
    b"[" * 2000 + b"]" * 2000,
    b"",
    b"   ",
]


@pytest.mark.parametrize("raw", LINES)
def test_input_lines_parse_as_json_parses_them(raw: bytes) -> None:
    def outcome(loads):  # type: ignore[no-untyped-def]
        try:
            return "ok", json.dumps(loads(raw), sort_keys=True)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            return "error", type(exc).__name__ != "RecursionError"

    assert outcome(validation._loads) == outcome(lambda r: json.loads(r.decode("utf-8")))


@settings(max_examples=300, deadline=None)
@given(
    value=st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
        max_leaves=12,
    )
)
def test_any_json_document_parses_to_the_same_value(value: object) -> None:
    raw = json.dumps(value).encode("utf-8", "surrogatepass")
    try:
        expected = json.dumps(json.loads(raw.decode("utf-8")), sort_keys=True)
    except UnicodeDecodeError:
        with pytest.raises((UnicodeDecodeError, ValueError)):
            validation._loads(raw)
        return
    assert json.dumps(validation._loads(raw), sort_keys=True) == expected


def test_a_fast_simulator_bills_and_answers_as_a_plain_one() -> None:
    # (no lone surrogate: gptbatch never sends one, and the simulator cannot digest it)
    lines = [chat(f"r{i}", t) for i, t in enumerate(TEXTS) if "\ud800" not in t]
    lines.append(chat("big", "x", max_tokens=123456789012345678901234567890))
    runs = []
    for fast in (False, True):
        service = manual_service(fixed_entropy(3), fast_counter=fast)
        batch = submit(service, lines)
        service.clock.advance(100_000)
        batch = service.batch(batch["id"])
        assert batch["status"] == "completed", batch
        billed = sorted(
            (b.custom_id, b.prompt_tokens, b.completion_tokens) for b in service.journal.billed
        )
        assert len(billed) == len(lines) and all(b[1] > 0 for b in billed)
        runs.append((service.file_content(batch["output_file_id"]), billed))
    assert runs[0] == runs[1]  # byte for byte, and billed alike
