"""Text token counts: the encoding a model uses, and tiktoken's count of a text."""

from __future__ import annotations

import functools
from collections.abc import Callable

import tiktoken
import tiktoken.model

from gptbatch.inputs.encodings import get_encoding
from gptbatch.inputs.fast_counter import COUNTERS as _FAST_COUNTERS
from gptbatch.inputs.tokens.words import count_by_words

DEFAULT_ENCODING = "o200k_base"


# Models tiktoken does not know. OpenAI publishes no tokenizer for the moderation models;
# omni-moderation is built on GPT-4o, so o200k_base.
_EXTRA_MODEL_PREFIXES = {"omni-moderation": "o200k_base", "text-moderation": "o200k_base"}
_OFFLINE_ENCODINGS = {"o200k_base", "cl100k_base"}
# Same ranks and split pattern as o200k_base, so ordinary text counts the same.
_ENCODING_ALIASES = {"o200k_harmony": "o200k_base"}


def encoding_name_for_model(model: str | None) -> tuple[str, str | None]:
    """(encoding name, caveat or None) for a model name, falling back to o200k_base."""
    if model is None:
        return DEFAULT_ENCODING, None
    if not isinstance(model, str):
        return DEFAULT_ENCODING, f"model is not a string ({model!r}): counted with o200k_base"
    return _encoding_for_name(model)


@functools.lru_cache(maxsize=1024)  # a batch names few models; tiktoken's lookup is slow-ish
def _encoding_for_name(model: str) -> tuple[str, str | None]:
    try:
        name = tiktoken.model.encoding_name_for_model(model)
    except KeyError:
        for prefix, encoding in _EXTRA_MODEL_PREFIXES.items():
            if model.startswith(prefix):
                return encoding, None
        return DEFAULT_ENCODING, f"unknown model {model!r}: counted with {DEFAULT_ENCODING}"
    name = _ENCODING_ALIASES.get(name, name)
    if name not in _OFFLINE_ENCODINGS:
        return DEFAULT_ENCODING, (
            f"model {model!r} uses {name}, which gptbatch cannot load offline: "
            f"counted with {DEFAULT_ENCODING}"
        )
    return name, None


_PIECE = 10_000  # characters per piece when tiktoken gives up on a whole text


def _pieces_len(enc: tiktoken.Encoding, text: str) -> int:
    """Tokens of text counted in pieces: a little high at the cuts, never fails."""
    total = 0
    for start in range(0, len(text), _PIECE):
        piece = text[start : start + _PIECE]
        try:
            total += len(enc.encode(piece, disallowed_special=()))
        except ValueError:
            total += len(piece.encode("utf-8", "surrogatepass"))  # byte-level BPE: <= bytes
    return total


# encode_ordinary is a quarter faster than encode(..., disallowed_special=()) and gives the
# same tokens, but panics where the regex runs out of stack. That takes a whitespace run of
# most of a million characters (800,000 pass); shorter texts cannot reach it.
_ORDINARY_MAX_CHARS = 100_000


def _ordinary_len(enc: tiktoken.Encoding, text: str) -> int | None:
    """encode_ordinary's count (fastokens' where loaded), or None where tiktoken panics."""
    fast = _FAST_COUNTERS.get(enc.name)  # empty unless the scanner loaded fastokens
    if fast is not None:
        tokens = fast(text)
        if tokens is not None:
            return tokens
    try:
        return len(enc.encode_ordinary(text))
    except BaseException as exc:  # pyo3's PanicException derives from BaseException
        if type(exc).__name__ != "PanicException":
            raise
    return None


_ORDINARY: dict[tiktoken.Encoding, Callable[[str], int | None]] = {}


def text_len(enc: tiktoken.Encoding, text: str) -> tuple[int, bool]:
    """(tokens, whether the text had to be counted in pieces).

    `encode(..., disallowed_special=())` counts special-token strings as text like
    encode_ordinary does, but where tiktoken's regex runs out of backtracking stack (a huge
    run of whitespace, tiktoken issue #15) it raises ValueError instead of panicking.
    """
    if len(text) <= _ORDINARY_MAX_CHARS:
        # fastokens, where loaded, counts a whole text faster than the words' memo sums it;
        # else the memo (gptbatch.inputs.tokens.words), else tiktoken on the whole text.
        fast = _FAST_COUNTERS.get(enc.name)  # empty unless the scanner loaded fastokens
        tokens = None if fast is None else fast(text)
        if tokens is None:
            ordinary = _ORDINARY.get(enc)
            if ordinary is None:  # one per encoding: a new partial per text was 2% of a count
                ordinary = _ORDINARY[enc] = functools.partial(_ordinary_len, enc)
            tokens = count_by_words(enc.name, text, ordinary)
            if tokens is None:
                tokens = ordinary(text)
        if tokens is not None:
            return tokens, False
    try:
        return len(enc.encode(text, disallowed_special=())), False
    except ValueError:
        return _pieces_len(enc, text), True


def count_text(text: str, encoding: str) -> int:
    """Tokens in text; special-token strings such as <|endoftext|> count as ordinary text."""
    return text_len(get_encoding(encoding), text)[0] if text else 0
