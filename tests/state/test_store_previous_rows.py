"""Store.previous_rows: the in-order walk answers exactly as the indexed lookup does."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from gptbatch.state.store import Store


def _store_with(directory: Path, ids: list[str]) -> Store:
    store = Store(directory)
    rows = [
        (i, i + 1, 0, 1, f"k-{cid}", cid, "m", "/v1/chat/completions", 1, 1, 1, 0.0, "new", None)
        for i, cid in enumerate(ids)
    ]
    with store.snapshot() as before, store.transaction():
        store.replace_input(
            "in.jsonl", size=1, mtime_ns=1, sha256="x", defaults="{}", rows=rows, before=before
        )
    return store


@settings(max_examples=60, deadline=None)
@given(
    old=st.lists(st.sampled_from([f"c{i}" for i in range(12)]), unique=True, max_size=12),
    new=st.lists(st.sampled_from([f"c{i}" for i in range(16)]), max_size=16),
)
def test_walk_matches_the_indexed_lookup(old: list[str], new: list[str]) -> None:
    """Edits, insertions, deletions, moves and repeats: the same row for every custom_id."""
    with tempfile.TemporaryDirectory() as tmp:
        store = _store_with(Path(tmp), old)
        try:
            with store.snapshot() as reader:
                walk = store.previous_rows(reader, "in.jsonl")
                for cid in new:
                    assert walk(cid) == store.previous_row(reader, "in.jsonl", cid)
        finally:
            store.close()
