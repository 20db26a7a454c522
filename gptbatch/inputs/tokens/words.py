"""Exact token counts of texts through a memo of their space-separated words.

Why: a cold split or build counts every text, and tiktoken's encode_ordinary (~18 MB/s on
one core) was most of a cold split's time. Texts repeat their words far more than they
repeat themselves, so counting each distinct word once per process, and every text as the
sum of its words' counts, does the same work in a fraction of the time, with no new
dependency and no load time.

Why it is exact: tiktoken splits a text with its pattern (o200k_base's and cl100k_base's
alike) into pieces and encodes each piece alone, so a text's count is the sum of its pieces'
counts. In both patterns a space can only be the first character of a piece or part of a
piece made only of whitespace. Take a space whose neighbours are both non-whitespace: no
piece holds it together with the character before it (that piece would be all whitespace,
and its neighbour is not), and the piece it starts ends within the next word (a piece can
only run on over a space if it is all whitespace, and the word is not). So the text cut
just before each such space (" " + word, after the first word) gives the same pieces as the
whole text, and its count is the sum of the parts' counts. Two spaces between
non-whitespace cut the same way: the first is a piece alone in both patterns (the run is
not followed by whitespace, so `\\s+(?!\\S)` stops one short), which is what the empty word
between them counts (" "). Only when every run of spaces in a text is one or two spaces
long with non-whitespace on both sides is it cut; else it is counted whole (three spaces
are one piece of two and a space that starts the next, not three words). Whitespace here is a
superset of the patterns' `\\s` (Unicode White_Space): declaring too much whitespace only
means cutting less. tests/inputs/test_words.py checks the decomposition against tiktoken
over every code point beside a space, and by a fuzz.

Memory: per encoding and process, at most MAX_ENTRIES words and MAX_HEADS first words of
texts, each of at most MAX_WORD_CHARS characters (the first ones met: in prose the common
words come early): ~10 MB for 112k words of 3-12 letters, ~20 MB at most.
"""

from __future__ import annotations

import re
from collections.abc import Callable

# The encodings whose split patterns the argument above was made for (and tested with).
ENCODINGS = frozenset({"o200k_base", "cl100k_base"})
MAX_ENTRIES = 1 << 17
MAX_HEADS = 1 << 14
MAX_WORD_CHARS = 48
# ASCII characters that are whitespace to tiktoken's \s (\t-\r) or to Python (\x1c-\x1f).
_ASCII_SPACES = "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f"
# Python's \s is str.isspace: Unicode White_Space and \x1c-\x1f (tests check the superset).
_SPACE_BESIDE_WHITESPACE = re.compile(r" [^\S ]|[^\S ] ")


class _Unknown(Exception):
    """The counter could not count a word: the text is counted whole."""


class _Memo(dict):
    """Counts of prefix + word by word; a word missing is counted (and kept, if room)."""

    def __init__(self, prefix: str, limit: int) -> None:
        super().__init__()
        self.prefix = prefix
        self.limit = limit
        self.exact: Callable[[str], int | None] = len  # set by count_by_words before use

    def __missing__(self, word: str) -> int:
        if word.isdigit() and word.isascii():
            # Both patterns cut a run of digits into pieces of three from its start
            # (\p{N}{1,3}) and never join a space to a digit (the space is a piece alone),
            # and every string of 1-3 ASCII digits is one token in both vocabularies.
            tokens = (len(word) + 2) // 3 + (1 if self.prefix else 0)
        else:
            tokens = self.exact(self.prefix + word)
            if tokens is None:
                raise _Unknown
        if len(word) <= MAX_WORD_CHARS and len(self) < self.limit:
            self[word] = tokens
        return tokens


# encoding name -> (counts of a text's first word, counts of " " + word)
_MEMOS: dict[str, tuple[_Memo, _Memo]] = {}


def clear() -> None:
    """Forget every word's count (tests and benchmarks that compare counters)."""
    _MEMOS.clear()


def _ascii_space_beside_whitespace(text: str) -> bool:
    return any(c in text and (" " + c in text or c + " " in text) for c in _ASCII_SPACES)


def _ascii_whitespace_but_space(text: str) -> bool:
    """Does text hold any of _ASCII_SPACES? (Unrolled: most texts hold none but \n.)"""
    return (
        "\n" in text
        or "\t" in text
        or "\r" in text
        or "\x0b" in text
        or "\x0c" in text
        or "\x1c" in text
        or "\x1d" in text
        or "\x1e" in text
        or "\x1f" in text
    )


def splits_cleanly(text: str) -> bool:
    """Is every run of spaces in text one or two long, between non-whitespace characters?"""
    if text[:1] == " " or text[-1:] == " " or "   " in text:
        return False
    if text.isascii():  # a few memchr scans: cheaper than isprintable's look at every char
        return not (_ascii_whitespace_but_space(text) and _ascii_space_beside_whitespace(text))
    if text.isprintable():  # every whitespace character but the space is unprintable
        return True
    return _SPACE_BESIDE_WHITESPACE.search(text) is None


def count_by_words(encoding: str, text: str, exact: Callable[[str], int | None]) -> int | None:
    """text's token count as the sum of its words' (see above); None if it must be whole.

    exact(text) is the counter's own count of a text (None if it cannot count it); it is
    asked once per distinct word and process (words past the memo's room: once per use).
    """
    if encoding not in ENCODINGS or " " not in text or not splits_cleanly(text):
        return None
    memos = _MEMOS.get(encoding)
    if memos is None:
        memos = _MEMOS[encoding] = (_Memo("", MAX_HEADS), _Memo(" ", MAX_ENTRIES))
    heads, words = memos
    heads.exact = words.exact = exact
    parts = text.split(" ")
    try:  # known words in C; __missing__ only for new ones
        return heads[parts[0]] + sum(map(words.__getitem__, parts[1:]))
    except _Unknown:
        return None
