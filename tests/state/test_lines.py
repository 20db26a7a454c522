"""Result lines packed by copying a compressor primed with the dictionary (state/lines.py):
the same bytes as a compressor made for the line alone, and they read back."""

from __future__ import annotations

import zlib

from hypothesis import given, settings
from hypothesis import strategies as st

from gptbatch.state import lines
from gptbatch.state.lines import pack_line, unpack_line


def _fresh(line: str, zdict: bytes | None) -> bytes:
    args = (lines.ZLIB_LEVEL, zlib.DEFLATED, lines.ZLIB_WBITS, lines.ZLIB_MEMLEVEL)
    packer = zlib.compressobj(*args) if zdict is None else zlib.compressobj(*args, zdict=zdict)
    return packer.compress(line.encode("utf-8")) + packer.flush()


@settings(max_examples=60, deadline=None)
@given(
    texts=st.lists(st.text(max_size=2_000), min_size=1, max_size=8),
    zdicts=st.lists(st.one_of(st.none(), st.binary(min_size=1, max_size=9_000)), min_size=1),
)
def test_a_packed_line_is_what_a_compressor_of_its_own_makes(
    texts: list[str], zdicts: list[bytes | None]
) -> None:
    # More dictionaries than the process keeps primed, each used for several lines in turn.
    more = [bytes([n]) * (100 + n) for n in range(lines._PRIMED_MAX + 1)]
    for round_ in range(2):
        for i, zdict in enumerate((zdicts + more) * 3):
            text = texts[(i + round_) % len(texts)]
            packed = pack_line(text, zdict)
            assert packed == _fresh(text, zdict)
            assert unpack_line(None, packed, zdict) == text
    assert len(lines._PRIMED) <= lines._PRIMED_MAX
    assert pack_line(None, zdicts[0]) is None
