"""Counting a text as the sum of its words (gptbatch.inputs.tokens.words) against tiktoken.

The cut is exact only if every space it cuts at has non-whitespace, to tiktoken's patterns,
on both sides. These tests prove it the way test_fast_counter proves fastokens:
- a code-point sweep per encoding: each code point beside the spaces of the contexts where a
  misjudged whitespace would change the pieces ("a{c} {c}b": tiktoken would then keep
  "{c} " together), summed by words vs counted whole (every code point below U+3000 and
  every 7th above by default, all 1.1M with `-m slow`);
- a hypothesis fuzz of texts joined by spaces and other whitespace, through text_len;
- the memo's bounds, and a word the counter cannot count;
- splitting a file gives byte-identical shards with the word count on and off.
"""

from __future__ import annotations

import random
import re
import unicodedata
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gptbatch.inputs.encodings import get_encoding
from gptbatch.inputs.tokens import endpoints, words
from gptbatch.inputs.tokens.text import text_len

ENCODINGS = ("o200k_base", "cl100k_base")
# Unicode's White_Space property (PropList.txt): what tiktoken's patterns call \s.
WHITE_SPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680"
    + "".join(map(chr, range(0x2000, 0x200B)))
    + ("\u2028\u2029\u202f\u205f\u3000")
)
# The first three are where a cut beside whitespace changes the count (see the test that
# the sweep would catch one); the others put each code point beside a space in other ways.
CONTEXTS = (
    "a{c} {c}b",
    "a{c} {c}",
    "{c} {c}b",
    "x {c}'s {c}",
    "1{c} {c}2 {c}.",
    "a{c}  {c}b",
    "{c}  {c}  {c}",
)


@pytest.fixture(autouse=True)
def fresh_memo() -> Iterator[None]:
    words.clear()
    endpoints._MEMOS.clear()
    yield
    words.clear()


def by_words(encoding: str, text: str) -> int | None:
    enc = get_encoding(encoding)
    return words.count_by_words(encoding, text, lambda t: len(enc.encode_ordinary(t)))


def clean_by_definition(text: str) -> bool:
    """The reference: every run of spaces is one or two long, with a non-whitespace
    character on each side."""
    for run in re.finditer(" +", text):
        start, end = run.span()
        if end - start > 2 or start == 0 or end == len(text):
            return False
        if text[start - 1].isspace() or text[end].isspace():
            return False
    return True


def test_python_whitespace_covers_unicode_white_space() -> None:
    """The cut's whitespace (str.isspace, re's \\s) must include all of tiktoken's \\s."""
    assert all(c.isspace() for c in WHITE_SPACE)
    assert [c for c in WHITE_SPACE if c.isprintable()] == [" "]  # the shortcut for clean texts
    for c in WHITE_SPACE.replace(" ", ""):
        assert not words.splits_cleanly(f"a{c} b") and not words.splits_cleanly(f"a {c}b")
        assert not words.splits_cleanly(f"é{c} b") and not words.splits_cleanly(f"é {c}b")


def test_every_ascii_character_beside_a_space_is_judged_as_by_definition() -> None:
    """ASCII texts take the memchr path (no isprintable): it must agree with the definition."""
    for c in map(chr, range(128)):
        for text in (f"a{c} b", f"a {c}b", f"a{c}  b", f"{c} b", f"a {c}", f"x{c}y z"):
            assert words.splits_cleanly(text) == clean_by_definition(text), repr(text)


def _points(full: bool) -> list[int]:
    points = range(0x110000) if full else [*range(0x3000), *range(0x3000, 0x110000, 7)]
    chosen = {c for c in points if not 0xD800 <= c < 0xE000} | set(map(ord, WHITE_SPACE))
    return sorted(chosen)


def _sweep(encoding: str, points: list[int]) -> tuple[int, list[str]]:
    """(texts cut, texts whose words' sum differs from the whole count)."""
    enc = get_encoding(encoding)
    ordinary = enc.encode_ordinary
    cut, wrong = 0, []
    for context in CONTEXTS:
        for point in points:
            text = context.format(c=chr(point))
            words.clear()  # each word counted afresh: no count reused across texts
            got = by_words(encoding, text)
            if got is None:
                assert not clean_by_definition(text), repr(text)
                continue
            cut += 1
            if got != len(ordinary(text)):
                wrong.append(text)
    return cut, wrong


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_sampled_sweep_cuts_only_where_the_count_stays_exact(encoding: str) -> None:
    points = _points(full=False)
    cut, wrong = _sweep(encoding, points)
    assert wrong == []
    assert cut > 0.9 * len(points) * len(CONTEXTS)  # the sweep really cut almost everywhere


@pytest.mark.slow
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_full_sweep_cuts_only_where_the_count_stays_exact(encoding: str) -> None:
    _, wrong = _sweep(encoding, _points(full=True))
    assert wrong == []


@pytest.mark.parametrize(
    ("encoding", "text"),
    [
        ("o200k_base", "a\u3000 \u3000b"),
        ("o200k_base", "a\xa0 \xa0"),
        ("o200k_base", "a\n \nb"),
        ("cl100k_base", "a\t \tb"),
    ],
)
def test_whitespace_that_would_change_the_count_is_not_cut(encoding: str, text: str) -> None:
    enc = get_encoding(encoding)
    head, rest = text.split(" ", 1)
    cut = len(enc.encode_ordinary(head)) + len(enc.encode_ordinary(" " + rest))
    assert cut != len(enc.encode_ordinary(text))  # cutting here would be wrong
    assert by_words(encoding, text) is None
    assert text_len(enc, text)[0] == len(enc.encode_ordinary(text))


def test_the_sweep_would_catch_a_cut_beside_whitespace(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not vacuous: cutting at every space, the sweep's contexts find wrong counts."""
    monkeypatch.setattr(words, "splits_cleanly", lambda text: "  " not in text)
    for encoding in ENCODINGS:
        _, wrong = _sweep(encoding, sorted(map(ord, WHITE_SPACE)))
        assert {"a\t \tb", "a\n \nb"} <= set(wrong)
    enc = get_encoding("o200k_base")  # three spaces are not three words
    assert len(enc.encode_ordinary("a   b")) != sum(
        len(enc.encode_ordinary(p)) for p in ("a", " ", " ", " b")
    )
    assert text_len(enc, "a   b")[0] == len(enc.encode_ordinary("a   b"))


_WORDS = st.one_of(
    st.sampled_from(
        [
            "the",
            "The",
            "don't",
            "it's",
            "I'LL",
            "naïve",
            "東京は晴れ",
            "данные",
            "🙂",
            "👍🏽",
            "e\u0301",
            "12345",
            "3.14",
            "x**2",
            "<|endoftext|>",
            "'s",
            "’s",
            "\u180e",
            "\u200b",
            "a\ud800b",
            "--",
            "...",
            "(a)",
            "http://x.io/a?b=1",
        ]
    ),
    st.text(st.sampled_from("ab'1. \t\n\r\u00a0\u2003\u3000\x1c\u0301"), min_size=1, max_size=6),
    st.text(max_size=8),  # anything, lone surrogates included
    st.from_regex(r"[0-9]{1,40}[.,]?", fullmatch=True),  # counted without tiktoken
)


@pytest.mark.parametrize("encoding", ENCODINGS)
@settings(max_examples=400, deadline=None)
@given(
    parts=st.lists(_WORDS, max_size=30),
    sep=st.sampled_from([" ", " ", "  ", "   ", "\n", " \n"]),
)
def test_fuzz_text_len_equals_tiktoken(encoding: str, parts: list[str], sep: str) -> None:
    enc = get_encoding(encoding)
    text = sep.join(parts)
    assert words.splits_cleanly(text) == clean_by_definition(text) or " " not in text
    for _ in range(2):  # with the memo cold, then warm
        assert text_len(enc, text)[0] == len(enc.encode_ordinary(text))


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_prose_is_cut_and_counted_exactly(encoding: str) -> None:
    rng = random.Random(7)
    vocabulary = ["the", "of", "and", "Zürich", "naïve", "don't", "x2", "1999.", "(see", "it)"]
    enc = get_encoding(encoding)
    for _ in range(200):
        text = " ".join(rng.choice(vocabulary) for _ in range(rng.randint(1, 400)))
        assert by_words(encoding, text) in (None, len(enc.encode_ordinary(text)))
        assert text_len(enc, text)[0] == len(enc.encode_ordinary(text))
    known = words._MEMOS[encoding][1]
    assert set(known) == set(vocabulary)  # each word counted once, then reused


def test_memo_bounds_keep_counts_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(words, "MAX_ENTRIES", 5)
    enc = get_encoding("o200k_base")
    long_word = "supercalifragilistic" * 4
    text = " ".join([f"w{i}" for i in range(50)] + [long_word, long_word])
    asked: list[str] = []

    def exact(t: str) -> int:
        asked.append(t)
        return len(enc.encode_ordinary(t))

    assert words.count_by_words("o200k_base", text, exact) == len(enc.encode_ordinary(text))
    known = words._MEMOS["o200k_base"][1]
    assert len(known) == 5 and long_word not in known
    assert asked.count(" " + long_word) == 2  # not kept: counted at each use


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_runs_of_ascii_digits_are_counted_without_the_counter(encoding: str) -> None:
    """A word of ASCII digits is counted by arithmetic (pieces of three, the space apart):
    every string of 1-3 digits, and longer ones, first in a text and after a space."""
    enc = get_encoding(encoding)
    rng = random.Random(3)
    runs = [str(i).zfill(n) for n in (1, 2, 3) for i in range(10**n)]
    runs += [str(rng.randrange(10 ** rng.randint(3, 80))).zfill(4) for _ in range(500)]

    def refuse(text: str) -> int:
        raise AssertionError(f"asked the counter for {text!r}")

    for run in runs:
        text = f"{run} {run}"
        assert words.count_by_words(encoding, text, refuse) == len(enc.encode_ordinary(text))
    mixed = "Total 1234567 of 89, then 0042 and 3.14 x2 2024."
    assert by_words(encoding, mixed) == len(enc.encode_ordinary(mixed))


def test_digits_other_than_ascii_go_to_the_counter() -> None:
    asked: list[str] = []

    def exact(text: str) -> int:
        asked.append(text)
        return len(get_encoding("o200k_base").encode_ordinary(text))

    text = "١٢٣ x ² １２"  # Arabic-Indic, superscript, fullwidth
    assert words.count_by_words("o200k_base", text, exact) == len(
        get_encoding("o200k_base").encode_ordinary(text)
    )
    assert asked == ["١٢٣", " x", " ²", " １２"]


def test_a_word_the_counter_cannot_count_sends_the_text_whole() -> None:
    assert words.count_by_words("o200k_base", "a b c", lambda t: None if "b" in t else 1) is None
    assert words.count_by_words("o200k_base", "a c", lambda t: 1) == 2
    assert words.count_by_words("r50k_base", "a c", lambda t: 1) is None  # pattern unchecked


def test_texts_without_clean_spaces_are_not_cut() -> None:
    unclean = ["", "word", " lead", "trail ", "three   spaces", "tab\t x", "x \nnext", "é \u3000"]
    for text in unclean:
        assert by_words("o200k_base", text) is None
    for text in ["one two\nthree four", "End.  Next  one"]:
        assert by_words("o200k_base", text) == len(get_encoding("o200k_base").encode_ordinary(text))


def test_every_white_space_char_is_known_to_unicodedata() -> None:
    """The White_Space list above is Unicode's (Zs, Zl, Zp and the C0/C1 controls)."""
    zs = {chr(c) for c in range(0x110000) if unicodedata.category(chr(c)) in ("Zs", "Zl", "Zp")}
    assert zs <= set(WHITE_SPACE)


def test_a_loaded_fast_counter_counts_whole_texts(monkeypatch: pytest.MonkeyPatch) -> None:
    """fastokens (where loaded) is faster on a whole text than the memo; the memo serves the
    texts it declines (its guard), a word at a time."""
    from gptbatch.inputs import fast_counter

    enc = get_encoding("o200k_base")
    asked: list[str] = []

    def fast(text: str) -> int | None:
        asked.append(text)
        return None if "\u180e" in text else len(enc.encode_ordinary(text))

    monkeypatch.setitem(fast_counter.COUNTERS, "o200k_base", fast)
    assert text_len(enc, "one two three")[0] == len(enc.encode_ordinary("one two three"))
    assert asked == ["one two three"] and "o200k_base" not in words._MEMOS
    guarded = "one \u180etwo three"
    assert text_len(enc, guarded)[0] == len(enc.encode_ordinary(guarded))
    assert asked[1:] == [guarded, "one", " \u180etwo", " three"]
