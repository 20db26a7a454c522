"""fastokens against tiktoken: the guarded fast counter must count exactly as tiktoken does.

Differential tests (they need the `fast` extra, which the `test` extra includes):
- a code-point sweep per encoding: fastokens unguarded vs tiktoken's encode_ordinary, each
  code point alone and in the contexts where the known difference shows. The mismatching set
  must equal GUARDED_CHARS exactly, so a new difference (say tiktoken moving to newer Unicode
  tables) fails here. By default the sweep takes every code point below U+3000 and every 5th
  above (with the guarded ones); `-m slow` sweeps all 1.1M.
- the guarded counter, through text_len, on the known bad texts and a hypothesis fuzz;
- estimate_request over the suite's corpus with the accelerator on and off.
"""

from __future__ import annotations

import array
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("fastokens")

from hypothesis import given, settings
from hypothesis import strategies as st

from gptbatch.inputs import fast_counter
from gptbatch.inputs.encodings import get_encoding
from gptbatch.inputs.tokens import endpoints, estimate_request, words
from gptbatch.inputs.tokens.text import _ORDINARY_MAX_CHARS, text_len
from tests.corpus import write_mixed_corpus

ENCODINGS = ("o200k_base", "cl100k_base")
# "{}" alone; " {}a" and "{}'s" are where cl100k's U+180E difference shows (alone it does not).
CONTEXTS = ("{}", " {}a", "{}'s")


@pytest.fixture(scope="module")
def raw() -> dict[str, object]:
    return {name: fast_counter.raw_tokenizer(name) for name in ENCODINGS}


@pytest.fixture(scope="module")
def fast_on() -> Iterator[None]:
    """fastokens selected and loaded for both encodings; tiktoken again afterwards."""
    saved = os.environ.get("GPTBATCH_COUNTER")
    os.environ["GPTBATCH_COUNTER"] = "fastokens"
    try:
        assert fast_counter.select(0)
        for name in ENCODINGS:
            assert fast_counter.load(name), fast_counter.status()
        assert fast_counter.counter_tag().startswith("fastokens=")
        yield
    finally:
        if saved is None:
            os.environ.pop("GPTBATCH_COUNTER", None)
        else:
            os.environ["GPTBATCH_COUNTER"] = saved
        fast_counter.select(0)
        assert not fast_counter.COUNTERS


def _code_points(full: bool) -> list[int]:
    points = range(0x110000) if full else [*range(0x3000), *range(0x3000, 0x110000, 5)]
    chosen = {c for c in points if not 0xD800 <= c < 0xE000}  # surrogates: tested apart
    for chars in fast_counter.GUARDED_CHARS.values():
        chosen.update(map(ord, chars))
    return sorted(chosen)


def _mismatches(tokenizer: object, encoding: str, points: list[int]) -> set[str]:
    """Code points whose texts fastokens (unguarded) counts unlike tiktoken, in any context."""
    enc = get_encoding(encoding)
    bad: set[str] = set()
    for context in CONTEXTS:
        texts = [context.format(chr(c)) for c in points]
        _, offsets = tokenizer.encode_batch_flat(texts)  # type: ignore[attr-defined]
        ends = array.array("Q")
        ends.frombytes(offsets)
        ordinary = enc.encode_ordinary
        for i, text in enumerate(texts):
            if ends[i + 1] - ends[i] != len(ordinary(text)):
                bad.add(chr(points[i]))
    return bad


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_sampled_sweep_finds_exactly_the_guarded_set(raw: dict, encoding: str) -> None:
    bad = _mismatches(raw[encoding], encoding, _code_points(full=False))
    assert bad == fast_counter.GUARDED_CHARS[encoding]


@pytest.mark.slow
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_full_sweep_finds_exactly_the_guarded_set(raw: dict, encoding: str) -> None:
    bad = _mismatches(raw[encoding], encoding, _code_points(full=True))
    assert bad == fast_counter.GUARDED_CHARS[encoding]


KNOWN_BAD = [
    " \u180ea",
    "\u180e's",
    "x \u180e\u180e's and more",
    "a\ud800b",
    "\udfff",
    "lone \udc80 surrogate \u180e's",
]


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("text", KNOWN_BAD)
def test_guard_sends_the_known_bad_texts_to_tiktoken(fast_on: None, encoding: str, text: str):
    """Fails if the guard is removed: unguarded, these count wrong or raise."""
    enc = get_encoding(encoding)
    assert text_len(enc, text) == (len(enc.encode_ordinary(text)), False)


def test_guarded_texts_really_differ_unguarded(raw: dict) -> None:
    """The guard is needed (else a fastokens fix would leave a dead guard behind)."""
    enc = get_encoding("cl100k_base")
    assert len(raw["cl100k_base"].encode_ordinary(" \u180ea")) != len(
        enc.encode_ordinary(" \u180ea")
    )
    with pytest.raises(UnicodeEncodeError):
        raw["o200k_base"].encode_ordinary("a\ud800b")


def test_long_texts_keep_tiktoken_s_path(fast_on: None) -> None:
    enc = get_encoding("o200k_base")
    text = "word " * (_ORDINARY_MAX_CHARS // 5 + 1)
    calls = []
    saved = fast_counter.COUNTERS["o200k_base"]
    fast_counter.COUNTERS["o200k_base"] = lambda t: calls.append(t) or saved(t)
    try:
        assert text_len(enc, text)[0] == len(enc.encode(text, disallowed_special=()))
        assert calls == []
        text_len(enc, "short")
        assert calls == ["short"]
    finally:
        fast_counter.COUNTERS["o200k_base"] = saved


_SCRIPTS = (
    "latin naïve café ÆØÅ ß",
    "кириллица данные",
    "ελληνικά",
    "عربي مرحبا",
    "עברית שלום",
    "हिन्दी नमस्ते",
    "東京は晴れ。中文字符",
    "한국어 안녕하세요",
    "ไทย สวัสดี",
    "ᠮᠣᠩᠭᠣᠯ\u180e",
)
_PIECES = st.one_of(
    st.sampled_from(_SCRIPTS),
    st.sampled_from(["🙂", "👩‍👩‍👧‍👦", "🇫🇷", "🏳️‍🌈", "👍🏽", "\u200d", "\ufe0f"]),
    st.text(st.sampled_from("aeo\u0301\u0308\u0327\u20dd\u0345"), max_size=12),  # combining
    st.text(st.sampled_from(" \t\n\r\x0b\x0c\u00a0\u2003\u3000\u180e\u200b"), max_size=40),
    st.text(st.sampled_from("0123456789٠١٢३४"), min_size=1, max_size=40),
    st.sampled_from(["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'LL", "don't", "’s"]),
    st.sampled_from(["\r\n", "\r\n\r\n", "\n\r", "line\r\nnext", "  \r\n  "]),
    st.sampled_from(["<|endoftext|>", "<|fim_prefix|>", '{"a": [1, 2]}', "x**2//3"]),
    st.text(max_size=20),  # anything, lone surrogates included
)
_LONG_WORDS = st.builds(
    lambda alphabet, n: (alphabet * 3000)[:n],
    st.sampled_from(["a", "ab", "é", "日本", "xyz", "Zürich", "🙂", "qwertyuiop"]),
    st.integers(500, 3000),
).filter(lambda w: 500 <= len(w.encode("utf-8", "surrogatepass")) <= 3000 or len(w) == 500)


@pytest.mark.parametrize("encoding", ENCODINGS)
@settings(max_examples=300, deadline=None)
@given(texts=st.lists(st.one_of(_PIECES, _LONG_WORDS), max_size=12), data=st.data())
def test_fuzz_guarded_counter_equals_tiktoken(
    fast_on: None, encoding: str, texts: list[str], data: st.DataObject
) -> None:
    enc = get_encoding(encoding)
    text = data.draw(st.sampled_from(["", " ", "\n"])).join(texts)
    assert text_len(enc, text)[0] == len(enc.encode_ordinary(text))


def _estimates(bodies: list[tuple[str, dict]]) -> list[object]:
    endpoints._MEMOS.clear()  # else the second run would reuse the first run's counts
    words.clear()
    return [estimate_request(url, body) for url, body in bodies]


def test_estimate_request_same_with_and_without_fastokens(fast_on: None, tmp_path) -> None:
    bodies = []
    for path in write_mixed_corpus(tmp_path, requests_per_file=80):
        for line in path.read_bytes().decode("utf-8-sig").splitlines():
            if line.strip():
                request = json.loads(line)
                bodies.append((request["url"], request["body"]))
    with_fast = _estimates(bodies)
    saved = dict(fast_counter.COUNTERS)
    fast_counter.COUNTERS.clear()
    try:
        without = _estimates(bodies)
    finally:
        fast_counter.COUNTERS.update(saved)
    assert with_fast == without


def test_canary_mismatch_switches_fastokens_off(fast_on: None, monkeypatch) -> None:
    saved_counters, saved_loaded = dict(fast_counter.COUNTERS), dict(fast_counter._LOADED)
    saved_state = dict(fast_counter._state)
    try:
        fast_counter.COUNTERS.clear()
        fast_counter._LOADED.clear()
        monkeypatch.setattr(fast_counter, "CANARY", (*fast_counter.CANARY, " \u180ea"))
        monkeypatch.setitem(fast_counter.GUARDED_CHARS, "cl100k_base", frozenset())
        assert not fast_counter.load("cl100k_base")
        assert fast_counter.status()[0] == "tiktoken"
        assert "canary mismatch on cl100k_base" in fast_counter.status()[1]
        assert fast_counter.counter_tag() == ""
    finally:
        fast_counter.COUNTERS.update(saved_counters)
        fast_counter._LOADED.update(saved_loaded)
        fast_counter._state.update(saved_state)


def test_the_cache_key_names_the_counter(fast_on: None) -> None:
    from gptbatch.inputs.token_cache import estimator_version

    with_fast = estimator_version()
    saved = os.environ["GPTBATCH_COUNTER"]
    os.environ["GPTBATCH_COUNTER"] = "tiktoken"
    try:
        fast_counter.select(10**12)
        assert estimator_version() != with_fast
    finally:
        os.environ["GPTBATCH_COUNTER"] = saved
        fast_counter.select(0)
    assert estimator_version() == with_fast


@pytest.mark.parametrize("workers", [0, 2])
def test_scanner_with_fastokens_counts_as_with_tiktoken(
    tmp_path, monkeypatch, workers: int
) -> None:
    """Through the scanner: fastokens loaded in the parent (before the fork) counts the same,
    and the token cache keys its counts apart from tiktoken's."""
    from gptbatch.inputs.scan import Scanner, ScanOptions

    paths = write_mixed_corpus(tmp_path / "in", requests_per_file=40)
    monkeypatch.setenv("GPTBATCH_CACHE_DIR", str(tmp_path / "cache"))
    runs = {}
    for counter in ("tiktoken", "fastokens"):
        monkeypatch.setenv("GPTBATCH_COUNTER", counter)
        endpoints._MEMOS.clear()
        words.clear()
        options = ScanOptions(workers=workers, chunk_bytes=4096)
        scanner = Scanner(paths, options)
        counts = [(r.custom_id, r.tokens, r.caveats) for r in scanner.requests()]
        assert fast_counter.status()[0] == counter
        scanner.commit_counts()
        runs[counter] = (counts, scanner.version)
    monkeypatch.delenv("GPTBATCH_COUNTER")
    fast_counter.select(0)
    assert runs["tiktoken"][0] == runs["fastokens"][0]
    assert runs["tiktoken"][1] != runs["fastokens"][1]


def _gated_load(monkeypatch: pytest.MonkeyPatch) -> tuple[Any, list[str]]:
    """Hold the background load until the returned event is set; texts fastokens counted.

    _LOADED starts empty (an earlier test may have built fastokens in this process), so the
    scan must really build it in the background.
    """
    import threading

    gate = threading.Event()
    counted: list[str] = []
    real_tokenizer, real_counter = fast_counter.raw_tokenizer, fast_counter.guarded_counter

    def slow_tokenizer(encoding: str) -> object:
        assert gate.wait(60), "the test never released the load"
        return real_tokenizer(encoding)

    def recording_counter(encoding: str, tokenizer: object):
        count = real_counter(encoding, tokenizer)
        return lambda text: counted.append(text) or count(text)

    monkeypatch.setattr(fast_counter, "_LOADED", {})
    monkeypatch.setattr(fast_counter, "raw_tokenizer", slow_tokenizer)
    monkeypatch.setattr(fast_counter, "guarded_counter", recording_counter)
    return gate, counted


@pytest.mark.parametrize("workers", [0, 2])
def test_the_load_starts_with_the_first_cold_chunk_and_counts_stay_tiktoken_s(
    tmp_path, monkeypatch, workers: int
) -> None:
    """fastokens starts loading in a thread as soon as the first chunk proves the run cold,
    while tiktoken counts that chunk; the scan waits for it before reading on (and before
    forking), and counts the rest with it: every count equals tiktoken's alone."""
    from gptbatch.inputs.scan import Scanner, ScanOptions

    paths = write_mixed_corpus(tmp_path / "in", requests_per_file=40)
    options = ScanOptions(workers=workers, chunk_bytes=4096, use_cache=False)
    monkeypatch.setenv("GPTBATCH_COUNTER", "tiktoken")
    endpoints._MEMOS.clear()
    words.clear()
    expected = [(r.custom_id, r.tokens, r.caveats) for r in Scanner(paths, options).requests()]

    gate, counted = _gated_load(monkeypatch)
    monkeypatch.setenv("GPTBATCH_COUNTER", "fastokens")
    endpoints._MEMOS.clear()
    words.clear()
    got, state = [], []
    scanner = Scanner(paths, options)
    try:
        for record in scanner.requests():
            got.append((record.custom_id, record.tokens, record.caveats))
            state.append((fast_counter.loading(), bool(fast_counter.COUNTERS)))
            gate.set()  # the first record is out: the load was held through the first chunk
    finally:
        gate.set()
        fast_counter.wait_loaded()
    after_first_chunk = scanner.report.chunks[1].first_record
    assert 0 < after_first_chunk < len(state)
    assert state[0] == (True, False)  # loading while the first chunk was counted (tiktoken)
    assert set(state[after_first_chunk:]) == {(False, True)}  # loaded before reading on
    assert got == expected
    assert fast_counter.status()[0] == "fastokens"
    if workers == 0:
        # This process counted the rest with fastokens (workers' counts are their own).
        assert len([t for t in counted if t not in fast_counter.CANARY]) > 50
    monkeypatch.delenv("GPTBATCH_COUNTER")
    fast_counter.select(0)


def test_a_background_load_that_fails_the_canary_keeps_tiktoken(tmp_path, monkeypatch) -> None:
    from gptbatch.inputs.scan import Scanner, ScanOptions

    paths = write_mixed_corpus(tmp_path / "in", requests_per_file=20)
    options = ScanOptions(workers=2, chunk_bytes=4096, use_cache=False)
    monkeypatch.setenv("GPTBATCH_COUNTER", "tiktoken")
    endpoints._MEMOS.clear()
    words.clear()
    expected = [(r.custom_id, r.tokens) for r in Scanner(paths, options).requests()]
    gate, _ = _gated_load(monkeypatch)
    gate.set()
    monkeypatch.setattr(fast_counter, "guarded_counter", lambda encoding, tokenizer: len)
    monkeypatch.setenv("GPTBATCH_COUNTER", "fastokens")
    endpoints._MEMOS.clear()
    words.clear()
    saved_state = dict(fast_counter._state)
    try:
        got = [(r.custom_id, r.tokens) for r in Scanner(paths, options).requests()]
        assert got == expected
        counter, why = fast_counter.status()
        assert counter == "tiktoken" and "canary mismatch" in why
    finally:
        fast_counter._state.update(saved_state)
        monkeypatch.delenv("GPTBATCH_COUNTER")
        fast_counter.select(0)


def test_a_warm_first_chunk_does_not_start_the_load_early(tmp_path, monkeypatch) -> None:
    """The load starts early only when the first chunk needs counts (a cold run)."""
    from gptbatch.inputs.scan import Scanner, ScanOptions

    paths = write_mixed_corpus(tmp_path / "in", requests_per_file=20)
    monkeypatch.setenv("GPTBATCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("GPTBATCH_COUNTER", "fastokens")
    options = ScanOptions(workers=0, chunk_bytes=1 << 20)
    scanner = Scanner(paths[:1], options)
    assert list(scanner.requests())
    scanner.commit_counts()
    gate, _ = _gated_load(monkeypatch)
    first = []
    try:
        for _ in Scanner(paths[:1], options).requests():
            first.append(fast_counter.loading())
            break
    finally:
        gate.set()
        fast_counter.wait_loaded()
    assert first == [False]
    monkeypatch.delenv("GPTBATCH_COUNTER")
    fast_counter.select(0)


def test_loaded_counters_are_kept_past_the_interpreter_teardown(fast_on: None) -> None:
    count = fast_counter._LOADED["o200k_base"]
    before = sys.getrefcount(count)
    fast_counter._keep_at_exit()  # one reference more, never given back: teardown skips it
    assert sys.getrefcount(count) == before + 1
