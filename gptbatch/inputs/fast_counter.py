"""The optional fast exact counter: fastokens behind a guard, tiktoken remaining the reference.

fastokens (`pip install 'gptbatch[fast]'`) counts ~10x faster than tiktoken on one core and
gives tiktoken's `encode_ordinary` counts exactly, except on texts this module keeps from it:

- any text with a lone surrogate: fastokens raises on it (tiktoken counts it as U+FFFD), so
  the raise itself sends the text to tiktoken;
- for cl100k_base, any text containing U+180E (MONGOLIAN VOWEL SEPARATOR), which tiktoken's
  regex tables class differently;
- texts over tokens.text._ORDINARY_MAX_CHARS, which tiktoken counts its own way (text_len never
  asks this module about them).

Loading costs ~1.5-2.5 s and ~330 MB, so nothing loads it implicitly: the scanner selects it
(`select`) when the bytes to read repay that, and loads it in the parent, in a thread
(`start_loading`: the build runs in Rust without the GIL) as soon as the first chunk proves
the run cold, so the load overlaps tiktoken's and the first chunk's reading and counting
(tiktoken counts that chunk); it then waits for the load and forks its workers, which share
fastokens. A canary of known strings is counted with both counters at load; any mismatch
switches fastokens off with a reason. The token cache's key names the counter
(`counter_tag`), so counts made by different counters never mix.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

__all__ = [
    "CANARY",
    "COUNTERS",
    "GUARDED_CHARS",
    "counter_tag",
    "describe",
    "fastokens_version",
    "guarded_counter",
    "load",
    "raw_tokenizer",
    "select",
    "status",
]

# Input bytes per counting process from which fastokens repays its load (~1.5-2 s). Counting
# is ~40% of a cold scan's time with tiktoken (the rest: JSON, hashing, validation); fastokens
# saves ~0.035 s per MB of a chat file per process (bench/counters.py, o200k, 2 cores), so it
# pays from ~50 MB per process. Since texts are counted by words (tokens/words.py), prose
# whose words repeat saves only ~0.014 s per MB (pays from ~100 MB; the offline_throughput
# corpus), texts the words cannot cut (code, unspaced scripts) still ~0.08 (from ~20 MB).
MIN_BYTES_PER_PROCESS = 48 << 20

# Characters fastokens does not count like tiktoken, per encoding (tests/inputs/test_fast_counter.py
# sweeps every code point to prove this set is exactly the mismatching one).
GUARDED_CHARS: dict[str, frozenset[str]] = {
    "cl100k_base": frozenset("\u180e"),
    "o200k_base": frozenset(),
}

# Counted with both counters at load; a single mismatch switches fastokens off.
CANARY: tuple[str, ...] = (
    "hello world",
    "Don't you think it's   over?\r\n\r\nYES'LL\t\t 12345678 x",
    "<|endoftext|> <|fim_prefix|> are ordinary text here",
    "naïve café — 東京は晴れ。 안녕하세요 مرحبا שלום नमस्ते",
    "👩‍👩‍👧‍👦 🇫🇷 e\u0301\u0301 \u200b\u00a0 \t\n\n  \n",
    '{"role": "user", "content": "def f(x):\\n    return x ** 2"}',
    "a" * 700 + " " + "9" * 40 + " " + "ü" * 300,
)

# Per encoding: count(text) -> tokens, or None when the text is tiktoken's to count. Holds
# only while fastokens is selected; _LOADED keeps what was loaded for a later selection.
COUNTERS: dict[str, Callable[[str], int | None]] = {}
_LOADED: dict[str, Callable[[str], int | None]] = {}

_state: dict[str, str | bool] = {"selected": False, "reason": "not selected for this run"}


def fastokens_version() -> str | None:
    """The installed fastokens' version, or None when the extra is not installed."""
    from importlib import metadata  # ~10 ms to import: only where a version is asked

    try:
        return metadata.version("fastokens")
    except metadata.PackageNotFoundError:
        return None


_NOT_INSTALLED = "fastokens is not installed (pip install 'gptbatch[fast]')"


def _found() -> bool:
    """Is fastokens on the path? (Its version, read from its metadata, costs ~15 ms: it is
    read only where fastokens is chosen.)"""
    from importlib.util import find_spec

    return find_spec("fastokens") is not None


def select(total_bytes: int, processes: int = 1) -> bool:
    """Choose fastokens when total_bytes, read by processes, repay its load; say why either way.

    GPTBATCH_COUNTER=tiktoken keeps tiktoken; GPTBATCH_COUNTER=fastokens uses fastokens
    whatever the size.
    """
    wait_loaded()  # an earlier scan's load still running would race with this one
    wanted = os.environ.get("GPTBATCH_COUNTER", "").strip().lower()
    min_bytes = MIN_BYTES_PER_PROCESS * max(1, processes)
    if wanted == "tiktoken":
        reason, chosen = "GPTBATCH_COUNTER=tiktoken", False
    elif not _found():
        reason, chosen = _NOT_INSTALLED, False
    elif wanted == "fastokens":
        reason, chosen = "GPTBATCH_COUNTER=fastokens", True
    elif total_bytes < min_bytes:
        reason = (
            f"{total_bytes:,} bytes to read in {processes} process(es), under the "
            f"{min_bytes:,} that repay its load"
        )
        chosen = False
    else:
        reason, chosen = f"{total_bytes:,} bytes to read repay its load", True
    if chosen and fastokens_version() is None:  # a module without its distribution
        reason, chosen = _NOT_INSTALLED, False
    _state.update(selected=chosen, reason=reason)
    COUNTERS.clear()
    if chosen:
        COUNTERS.update(_LOADED)
    return chosen


def counter_tag() -> str:
    """ "fastokens=<version>" when fastokens is selected for this process, else ""."""
    if not _state["selected"]:
        return ""
    return f"fastokens={fastokens_version()}"


def guarded_counter(encoding: str, tokenizer: Any) -> Callable[[str], int | None]:
    """count(text) with tokenizer, or None for the texts tiktoken must count (see above)."""
    encode = tokenizer.encode_ordinary
    chars = tuple(GUARDED_CHARS[encoding])

    def count(text: str) -> int | None:
        for c in chars:
            if c in text:
                return None
        try:
            return len(encode(text))
        except UnicodeEncodeError:  # a lone surrogate: tiktoken counts it as U+FFFD
            return None

    return count


def raw_tokenizer(encoding: str) -> Any:
    """fastokens' Tokenizer for a bundled encoding, unguarded (for load, tests and bench).

    Built from the rank file gptbatch.inputs.encodings seeds into tiktoken's cache, with the
    split pattern and special tokens gptbatch gives tiktoken: never the network.
    """
    from fastokens import Tokenizer

    from gptbatch.inputs import encodings

    path = encodings.seed_tiktoken_cache(encoding)
    if path is None:
        raise OSError("tiktoken's cache is disabled (TIKTOKEN_CACHE_DIR='')")
    blob = encodings.BUNDLED[encoding]
    return Tokenizer.from_tiktoken(
        str(path), pattern=blob.pat_str, special_tokens=dict(blob.special_tokens)
    )


def load(encoding: str) -> bool:
    """Load fastokens for encoding if selected; True when COUNTERS now holds it.

    Reads the rank file gptbatch.inputs.encodings seeds (never the network) and checks the
    canary against tiktoken; on any failure fastokens stays off and describe() says why.
    """
    if not _state["selected"] or encoding not in GUARDED_CHARS:
        return False
    if encoding in _LOADED:
        COUNTERS[encoding] = _LOADED[encoding]
        return True
    from gptbatch.inputs import encodings

    try:
        tokenizer = raw_tokenizer(encoding)
    except Exception as exc:  # any failure to load just keeps tiktoken
        _switch_off(f"loading fastokens for {encoding} failed: {type(exc).__name__}: {exc}")
        return False
    count = guarded_counter(encoding, tokenizer)
    reference = encodings.get_encoding(encoding)
    for text in CANARY:
        expected, got = len(reference.encode_ordinary(text)), count(text)
        if got != expected:
            _switch_off(
                f"canary mismatch on {encoding}: {text[:40]!r} counted {got}, tiktoken {expected}"
            )
            return False
    if not _LOADED:
        atexit.register(_keep_at_exit)
    COUNTERS[encoding] = _LOADED[encoding] = count
    return True


def _keep_at_exit() -> None:
    """Leave the loaded counters to the end of the process instead of freeing them.

    As gptbatch.inputs.encodings does for tiktoken: freeing fastokens' tables (~300 MB, in
    Rust) took ~0.1 s of the interpreter's teardown, for memory the exit returns anyway.
    """
    try:
        import ctypes  # only here: ~2 ms to import
    except ImportError:  # a Python built without ctypes: the teardown frees them, as before
        return

    for count in _LOADED.values():
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(count))


def load_for_loaded_encodings() -> None:
    """load() every encoding tiktoken has loaded in this process (the ones counts need)."""
    encodings = sys.modules.get("gptbatch.inputs.encodings")
    if encodings is not None and _state["selected"]:
        for name in encodings.loaded_encoding_names():
            load(name)


# The thread loading fastokens beside the caller's work (start_loading), if any.
_loader: list[threading.Thread] = []


def may_start() -> bool:
    """Is fastokens selected, and neither loaded nor being loaded (start_loading would act)?"""
    return bool(_state["selected"]) and not _loader and not COUNTERS


def start_loading(names: Sequence[str]) -> bool:
    """Start loading fastokens for the encodings names, in a thread; True if a load started.

    fastokens builds its tables in Rust without holding the GIL (~1.5 s of one core), so
    the caller goes on meanwhile (the scanner: loading tiktoken, reading and counting its
    first chunk with it); counts use fastokens from the moment load() puts it in COUNTERS
    (both give the same counts: the canary and tests/inputs/test_fast_counter.py).
    """
    if not _state["selected"] or _loader:
        return False
    names = [n for n in dict.fromkeys(names) if n in GUARDED_CHARS]
    if not names or all(n in _LOADED for n in names):
        for name in names:
            load(name)  # already built: nothing to wait for
        return False

    def run() -> None:
        for name in names:
            load(name)

    # A daemon: a run that fails before the load ends must not wait for it at exit.
    thread = threading.Thread(target=run, name="gptbatch-fastokens-load", daemon=True)
    _loader.append(thread)
    thread.start()
    return True


def start_loading_for(models: Sequence[str | None]) -> bool:
    """start_loading for the encodings of these models (requests about to be counted)."""
    from gptbatch.inputs.tokens.text import encoding_name_for_model

    return start_loading([encoding_name_for_model(model)[0] for model in models])


def loading() -> bool:
    """Is the thread start_loading started still building fastokens?"""
    return bool(_loader) and _loader[0].is_alive()


def wait_loaded() -> None:
    """Wait for the load start_loading started, if any (before a fork: no thread may run)."""
    if _loader:
        _loader[0].join()
        _loader.clear()


def before_fork() -> None:
    """Ready the counters a parent loaded for its forked workers to share.

    Waits for a background load (a fork must not copy a thread mid-way), loads fastokens if
    selected, and frees tiktoken's Python copy of its ranks (see
    encodings.release_rank_tables). Nothing to do when nothing counted yet.
    """
    wait_loaded()
    encodings = sys.modules.get("gptbatch.inputs.encodings")  # imported only if it counted
    if encodings is not None:
        load_for_loaded_encodings()
        encodings.release_rank_tables()


T = TypeVar("T")


def loading_after_first(items: Iterator[T]) -> Iterator[T]:
    """items, with fastokens loaded once the first (which showed the need) is out: the load
    started while the first was read (start_loading) is waited for, or made now."""
    first = next(items, None)
    if first is None:
        return
    yield first
    wait_loaded()
    load_for_loaded_encodings()
    yield from items


def _switch_off(reason: str) -> None:
    COUNTERS.clear()
    _LOADED.clear()
    _state.update(selected=False, reason=f"switched off: {reason}")


def status() -> tuple[str, str]:
    """("fastokens" or "tiktoken", why): the counter of this process's counts from now on
    (once a load started in the background has ended)."""
    wait_loaded()
    return ("fastokens" if COUNTERS else "tiktoken"), str(_state["reason"])


def describe() -> str:
    """Which counter runs and why, for `gptbatch --version -v`."""
    import tiktoken

    version = fastokens_version()
    reference = f"tiktoken {tiktoken.__version__}"
    if COUNTERS:
        return (
            f"counter: fastokens {version} (guarded; {reference} for the rest), "
            f"loaded for {', '.join(sorted(COUNTERS))}: {_state['reason']}"
        )
    if str(_state["reason"]).startswith("switched off"):
        return f"counter: {reference} (fastokens {version} {_state['reason']})"
    if version is None:
        return f"counter: {reference} (fastokens is not installed: pip install 'gptbatch[fast]')"
    forced = os.environ.get("GPTBATCH_COUNTER", "").strip().lower()
    if forced == "tiktoken":
        return f"counter: {reference} (GPTBATCH_COUNTER=tiktoken; fastokens {version} unused)"
    if forced == "fastokens":
        return f"counter: fastokens {version}, guarded, {reference} for the rest (GPTBATCH_COUNTER)"
    return (
        f"counter: {reference} for inputs under {MIN_BYTES_PER_PROCESS >> 20} MB per counting "
        f"process; fastokens {version}, guarded, for larger ones, where it repays its load "
        "(GPTBATCH_COUNTER=tiktoken or fastokens forces one)"
    )
