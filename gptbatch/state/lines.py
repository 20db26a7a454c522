"""Compressed result lines: zlib with a small window, against the project's preset dictionary."""

from __future__ import annotations

import zlib
from typing import Any

ZLIB_LEVEL = 1  # result lines are JSON: level 1 keeps most of the gain at a fraction of the time
# An 8 KiB window and memory level 5: zlib's defaults (32 KiB, 8) set up ~256 KiB of state for
# every line, which took 21 us a 900-byte line against 12 (more on a busy machine) for the
# same size.
# Lines stored with any window are read alike (inflate takes any window up to 32 KiB).
ZLIB_WBITS = 13
ZLIB_MEMLEVEL = 5
# Result lines are compressed one by one, so alone each finds little to repeat; against the
# project's first result line as a preset dictionary, the JSON keys and shape that every line
# shares compress too (2.5x smaller on the simulator's chat results). The dictionary lives in
# meta under this key, written in the transaction of the first line compressed with it.
ZDICT_META = "zdict"
ZDICT_MAX = 1 << ZLIB_WBITS  # zlib uses at most a window's worth: the dictionary's last bytes


# Setting a preset dictionary hashes all of it into the compressor: for a 700-byte result
# line that was half of its 15 us. A compressor given the dictionary once is copied for each
# line instead (6.8 us, the same bytes out), a few dictionaries kept per process.
_PRIMED: dict[bytes | None, Any] = {}
_PRIMED_MAX = 4


def _primed(zdict: bytes | None) -> Any:
    """A compressor that has been given zdict and nothing else, to copy."""
    packer = _PRIMED.get(zdict)
    if packer is None:
        if zdict is None:
            packer = zlib.compressobj(ZLIB_LEVEL, zlib.DEFLATED, ZLIB_WBITS, ZLIB_MEMLEVEL)
        else:
            packer = zlib.compressobj(
                ZLIB_LEVEL, zlib.DEFLATED, ZLIB_WBITS, ZLIB_MEMLEVEL, zdict=zdict
            )
        if len(_PRIMED) >= _PRIMED_MAX:
            _PRIMED.clear()
        _PRIMED[zdict] = packer
    return packer


def pack_line(line: str | None, zdict: bytes | None = None) -> bytes | None:
    """A result line as stored: zlib-compressed UTF-8, against a preset dictionary if given."""
    if line is None:
        return None
    packer = _primed(zdict).copy()
    return packer.compress(line.encode("utf-8")) + packer.flush()


def zline_dictionary_id(zline: bytes) -> int | None:
    """The adler32 of the preset dictionary a stored line needs (zlib header FDICT), if any."""
    return int.from_bytes(zline[2:6], "big") if zline[1] & 0x20 else None


def unpack_bytes(line: str | None, zline: bytes | None, zdict: bytes | None = None) -> bytes | None:
    """A stored result line back as UTF-8 (rows written before m002 hold it uncompressed)."""
    if zline is None:
        return None if line is None else line.encode("utf-8")
    if zdict is None:
        return zlib.decompress(zline)
    unpacker = zlib.decompressobj(zdict=zdict)
    data = unpacker.decompress(zline)
    # A whole stream comes out of decompress; flush (a third of the time) only if it did not.
    return data if unpacker.eof else data + unpacker.flush()


def unpack_line(line: str | None, zline: bytes | None, zdict: bytes | None = None) -> str | None:
    """A stored result line back as text."""
    if zline is None:
        return line
    data = unpack_bytes(line, zline, zdict)
    return None if data is None else data.decode("utf-8")
