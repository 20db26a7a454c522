"""Result lines compressed against the project's dictionary read back exactly."""

from __future__ import annotations

import contextlib
import json
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gptbatch.errors import StateError
from gptbatch.state.store import Store

# Short lines, and long ones (up to 20,000 characters) that outgrow the compression window.
LINE = st.one_of(
    st.text(min_size=0, max_size=300),
    st.builds(lambda s, n: s * n, st.text(min_size=1, max_size=50), st.integers(100, 400)),
)
LINES = st.lists(LINE, min_size=1, max_size=6)


@settings(max_examples=40, deadline=None)
@given(lines=LINES)
def test_lines_read_back_byte_for_byte(
    tmp_path_factory: pytest.TempPathFactory, lines: list[str]
) -> None:
    store = Store(tmp_path_factory.mktemp("zdict"))
    try:
        for i, line in enumerate(lines):
            with store.transaction():
                store.write_results([(f"k{i}", "ok", 1, line, None, "b")])
        assert [store.result(f"k{i}").line for i in range(len(lines))] == lines  # type: ignore[union-attr]
        assert [text for _, text in store.ok_lines_after(0)] == lines
    finally:
        store.close()


def test_a_rolled_back_first_line_leaves_no_dictionary_behind(tmp_path: Path) -> None:
    store = Store(tmp_path)
    first = json.dumps({"custom_id": "a", "response": {"body": {"x": "first " * 40}}})
    second = json.dumps({"custom_id": "b", "response": {"body": {"x": "second " * 40}}})
    with contextlib.suppress(RuntimeError), store.transaction():
        store.write_results([("a", "ok", 1, first, None, "b")])
        assert store.result("a").line == first  # type: ignore[union-attr]
        raise RuntimeError("killed before the commit")
    assert store.get_meta("zdict") is None
    with store.transaction():
        store.write_results([("b", "ok", 1, second, None, "b")])
    store.close()
    store = Store(tmp_path)  # a new process: nothing remembered in memory
    try:
        assert store.get_meta("zdict") == second
        assert store.result("b").line == second  # type: ignore[union-attr]
        assert store.result("a") is None
    finally:
        store.close()


def test_plain_zlib_rows_still_read_and_a_lost_dictionary_is_a_state_error(tmp_path: Path) -> None:
    store = Store(tmp_path)
    try:
        with store.transaction():
            store.db.execute(
                "INSERT INTO results(key, state, attempts, zline) VALUES ('p', 'ok', 1, ?)",
                (zlib.compress(b"plain m002 row"),),
            )
            store.write_results([("d", "ok", 1, "a line " * 20, None, "b")])
            store.db.execute("DELETE FROM meta WHERE key='zdict'")
        assert store.result("p").line == "plain m002 row"  # type: ignore[union-attr]
        store._zdicts.clear()
        with pytest.raises(StateError, match="compression dictionary"):
            store.result("d")
    finally:
        store.close()


def test_rows_packed_with_zlibs_default_window_still_read(tmp_path: Path) -> None:
    """Lines stored before the 8 KiB window (32 KiB, memory level 8), and against a
    dictionary longer than the window, read back; new lines against it too."""
    store = Store(tmp_path)
    dictionary = json.dumps({"pad": "x y z " * 4000}).encode()  # ~24 KB
    old_line = json.dumps({"custom_id": "old", "pad": "x y z " * 3000})
    packer = zlib.compressobj(1, zdict=dictionary)
    old = packer.compress(old_line.encode()) + packer.flush()
    try:
        with store.transaction():
            store.set_meta("zdict", dictionary.decode())
            store.db.execute(
                "INSERT INTO results(key, state, attempts, zline) VALUES ('o', 'ok', 1, ?)", (old,)
            )
            store.write_results([("n", "ok", 1, old_line.replace("old", "new"), None, "b")])
        assert store.result("o").line == old_line  # type: ignore[union-attr]
        assert store.result("n").line == old_line.replace("old", "new")  # type: ignore[union-attr]
    finally:
        store.close()
