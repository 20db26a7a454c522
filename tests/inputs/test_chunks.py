"""Content-defined chunks found again from the last ones (gptbatch.inputs.chunks): checked
ahead on threads or one by one, the chunks are those a fresh read finds."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from gptbatch.inputs import chunks as chunks_module
from gptbatch.inputs.chunks import find_chunks


def _lines(rng: random.Random, n: int) -> list[bytes]:
    return [
        f'{{"custom_id": "c{i}", "x": "{"y" * rng.randint(0, 60)}"}}'.encode() for i in range(n)
    ]


def _edit(rng: random.Random, lines: list[bytes]) -> None:
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(len(lines))
        kind = rng.choice(["longer", "insert", "delete", "move", "shorter"])
        if kind == "longer":
            lines[at] += b" and more"
        elif kind == "shorter":
            lines[at] = lines[at][: len(lines[at]) // 2]
        elif kind == "insert":
            lines[at:at] = [b'{"new": %d}' % rng.randrange(10**6)] * rng.randint(1, 300)
        elif kind == "delete":
            del lines[at : at + rng.randint(1, 700)]
        else:
            block = lines[at : at + rng.randint(1, 900)]
            del lines[at : at + len(block)]
            to = rng.randrange(len(lines) + 1)
            lines[to:to] = block


@pytest.mark.parametrize("parallel_bytes", [0, 1 << 60])
def test_chunks_found_from_the_last_ones_are_those_found_afresh(
    tmp_path: Path, parallel_bytes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each of a few edits (lines longer, shorter, inserted, deleted, moved), with the checks
    ahead on threads (0: always) or never: the same chunks as with nothing known."""
    monkeypatch.setattr(chunks_module._Checks, "PARALLEL_BYTES", parallel_bytes)
    rng = random.Random(7)
    path = tmp_path / "in.jsonl"
    lines = _lines(rng, 20_000)
    path.write_bytes(b"\n".join(lines) + b"\n")
    known = find_chunks(path)
    assert len(known) > 20
    for _ in range(12):
        _edit(rng, lines)
        path.write_bytes(b"\n".join(lines) + (b"\n" if rng.random() < 0.8 else b""))
        found = find_chunks(path, known)
        assert found == find_chunks(path)
        assert sum(c.length for c in found) == path.stat().st_size
        known = found


def test_checks_ahead_leave_no_thread_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The read's threads are gone when it returns: a scan forks its workers next."""
    import threading

    monkeypatch.setattr(chunks_module._Checks, "PARALLEL_BYTES", 0)
    path = tmp_path / "in.jsonl"
    lines = _lines(random.Random(1), 5_000)
    path.write_bytes(b"\n".join(lines) + b"\n")
    known = find_chunks(path)
    lines[2_500] += b" edited"
    path.write_bytes(b"\n".join(lines) + b"\n")
    before = threading.active_count()
    find_chunks(path, known)
    assert not [t for t in threading.enumerate() if t.name.startswith("gptbatch-chunks")]
    assert threading.active_count() == before


def test_a_check_made_ahead_where_a_chunk_is_not_asked_is_not_its_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunk 1 was checked ahead where it would be if chunk 0 held (and it is there); asked
    at another position, the answer is the check there, not the one made ahead."""
    monkeypatch.setattr(chunks_module._Checks, "PARALLEL_BYTES", 0)
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join(_lines(random.Random(3), 3_000)) + b"\n")
    known = find_chunks(path)
    with open(path, "rb") as f, chunks_module._Checks(f, known) as checks:
        assert checks.same(0, 0)
        assert 1 in checks.ahead  # checked ahead at known[0].length, where it is
        assert not checks.same(1, known[0].length + 1)
        assert checks.same(2, known[2].start)
