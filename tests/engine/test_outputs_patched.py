"""Outputs patched by their input's chunks (unchanged chunks' bytes copied from the last
output, the rest written) are byte for byte what a full write gives, however the input
and its results changed in between."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from test_sync_chunks import OP, _apply, _chat, _render, small_chunks

from gptbatch.config.spec import Spec, load_spec
from gptbatch.engine import outputs
from gptbatch.engine.outputs import write_outputs
from gptbatch.engine.sync import sync_inputs
from gptbatch.errors import InputError
from gptbatch.report import NullReporter
from gptbatch.state.store import Store

STEP = st.one_of(
    st.tuples(st.just("input"), OP),
    st.tuples(
        st.just("result"),
        st.integers(0, 80),
        st.sampled_from(["ok", "ok", "ok", "failed", "retry"]),
        st.text(max_size=8),
    ),
    st.tuples(st.just("results"), st.sampled_from(["ok", "failed"])),  # for every request
    st.tuples(st.just("reset"), st.booleans()),
    st.tuples(st.just("append to the output")),
    st.tuples(st.just("touch the output")),
    st.tuples(st.just("copy the output")),  # the same bytes, another inode (a cache restore)
    st.tuples(st.just("drop the index")),
    st.tuples(st.just("write")),
)


def _line(cid: str, text: str) -> str:
    return json.dumps({"custom_id": cid, "response": {"status_code": 200, "body": {"t": text}}})


def _expected(store: Store, spec: Spec) -> tuple[bytes, list[str]]:
    """The output and the failed custom_ids, from the store's rows (another code path)."""
    lines, failed = [], []
    for request, result in store.request_results(str(spec.inputs[0])):
        if result is None or result.state == "retry":
            continue
        if result.state == "ok" and result.line is not None:
            lines.append(result.line.rstrip("\n") + "\n")
        else:
            failed.append(request.custom_id)
    return "".join(lines).encode(), failed


def _keys(store: Store) -> list[tuple[str, str]]:
    return list(store.db.execute("SELECT key, custom_id FROM requests ORDER BY ordinal"))


def _step(store: Store, spec: Spec, state: dict[str, Any], step: tuple[Any, ...], n: int) -> None:
    path = spec.inputs[0]
    out = spec.output_dir / "in.jsonl"
    kind = step[0]
    if kind == "input":
        _apply(state, step[1])
        path.write_bytes(_render(state))
        os.utime(path, ns=(n + 1, n + 1))
        with contextlib.suppress(InputError):
            sync_inputs(spec, store, NullReporter())
    elif kind in ("result", "results"):
        keys = _keys(store)
        if not keys:
            return
        chosen = [keys[step[1] % len(keys)]] if kind == "result" else keys
        state_ = step[2] if kind == "result" else step[1]
        text = step[3] if kind == "result" else "all"
        rows = [
            (k, state_, 1, _line(c, text) if state_ != "retry" else None, None, "b")
            for k, c in chosen
        ]
        with store.transaction():
            store.write_results(rows)
    elif kind == "reset":
        with store.transaction():
            store.reset_results([str(path)], only_failed=step[1])
    elif kind == "append to the output" and out.exists():
        with open(out, "ab") as f:
            f.write(b'{"custom_id": "someone else"}\n')
    elif kind == "touch the output" and out.exists():
        st_ = out.stat()
        os.utime(out, ns=(st_.st_atime_ns, st_.st_mtime_ns + 1000))
    elif kind == "copy the output" and out.exists():
        copy = out.with_name("copy.tmp")
        copy.write_bytes(out.read_bytes())
        os.replace(copy, out)
    elif kind == "drop the index":
        with store.transaction():
            store.db.execute("DELETE FROM output_index")


class _Patches:
    """Counts the writes patched from the last output."""

    def __init__(self) -> None:
        self.real = outputs._patch_output
        self.patched = 0

    def __call__(self, *args: Any) -> Any:
        done = self.real(*args)
        self.patched += done is not None
        return done


def _run(size: int, steps: list[tuple[Any, ...]]) -> int:
    patches = _Patches()
    outputs._patch_output = patches
    try:
        with tempfile.TemporaryDirectory() as tmp, small_chunks():
            root = Path(tmp)
            (root / "batch.yaml").write_text(
                yaml.safe_dump({"inputs": ["in.jsonl"], "output_dir": "out"})
            )
            state: dict[str, Any] = {"lines": [_chat(f"c{i}", f"t{i % 7}") for i in range(size)]}
            (root / "in.jsonl").write_bytes(_render(state))
            spec = load_spec(root / "batch.yaml")
            store = Store(root / "state")
            try:
                sync_inputs(spec, store, NullReporter())
                for n, step in enumerate([*steps, ("write",)]):
                    _step(store, spec, state, step, n)
                    if step[0] != "write":
                        continue
                    write_outputs(spec, store)
                    lines, failed = _expected(store, spec)
                    assert (spec.output_dir / "in.jsonl").read_bytes() == lines
                    errors = spec.output_dir / "in.errors.jsonl"
                    got = (
                        # JSONL lines end at \n only: an error text may hold U+0085 or U+2028
                        [json.loads(x)["custom_id"] for x in errors.read_text().split("\n") if x]
                        if errors.exists()
                        else []
                    )
                    assert got == failed
            finally:
                store.close()
    finally:
        outputs._patch_output = patches.real
    return patches.patched


@settings(max_examples=100, deadline=None)
@given(size=st.integers(0, 60), steps=st.lists(STEP, max_size=12))
def test_a_patched_output_equals_a_full_write(size: int, steps: list[tuple[Any, ...]]) -> None:
    _run(size, steps)


def test_each_kind_of_change_is_patched() -> None:
    """Insertions, deletions, moved blocks, CRLF, the same bytes, an edit across a chunk
    boundary, new results: each output after the first is patched, and right."""
    results = ("results", "ok")
    write = ("write",)
    steps: list[tuple[Any, ...]] = [results, write]
    for op in [
        ("insert", 30, 1),
        ("delete", 10, 5),
        ("move", 5, 10, 40),
        ("crlf", 0, 20),
        ("same",),
        ("delete", 8, 3),  # lines across (most likely) a boundary of chunks of ~4 lines
        ("edit", 20, "a longer text"),
    ]:
        steps += [("input", op), write, ("result", 7, "ok", "new"), write]
    # every write but the first (nothing to patch yet), the closing one of _run included
    assert _run(60, steps) == len([s for s in steps if s == write])


def test_an_output_copied_back_with_its_bytes_is_still_patched() -> None:
    """A new inode and mtime (a CI cache restored, `cp -a` of the project): the recorded
    sha256 says the bytes are the last write's, so the next write still copies them."""
    results, write = ("results", "ok"), ("write",)
    steps: list[tuple[Any, ...]] = [results, write, ("copy the output",)]
    steps += [("input", ("edit", 20, "a longer text")), write, ("copy the output",)]
    steps += [("append to the output",), ("result", 3, "ok", "new"), write]
    # patched: the write after the copy; not the one after a line was appended (other bytes)
    assert _run(60, steps) == 2  # (the closing write of _run is patched too)


@contextlib.contextmanager
def _halves() -> Any:
    """Every full write of 2+ lines split in two, the second half written by the worker;
    yields the number of halves the worker wrote (a one-item list)."""
    used = [0]
    threshold, append = outputs.PARALLEL_MIN_LINES, outputs._Part.append_to

    def counted(self: Any, *args: Any) -> bool:
        done = append(self, *args)
        used[0] += done
        return done

    outputs.PARALLEL_MIN_LINES = 2
    outputs._Part.append_to = counted  # type: ignore[method-assign]
    try:
        yield used
    finally:
        outputs.PARALLEL_MIN_LINES = threshold
        outputs._Part.append_to = append  # type: ignore[method-assign]


@settings(max_examples=25, deadline=None)
@given(size=st.integers(0, 60), steps=st.lists(STEP, max_size=8))
def test_an_output_written_in_two_halves_equals_one_written_whole(
    size: int, steps: list[tuple[Any, ...]]
) -> None:
    with _halves():
        _run(size, steps)


def test_the_second_half_is_written_by_the_worker_with_its_failures_in_order() -> None:
    """Results ok and failed in both halves, then one missing: the output and the errors
    file come out in input order, the second half from the worker's part files."""
    steps: list[tuple[Any, ...]] = [("results", "ok")]
    steps += [("result", i, "failed", "x") for i in (3, 17, 41, 55)]
    steps += [("result", 30, "retry", ""), ("drop the index",)]
    with _halves() as used:
        _run(60, steps)
    assert used[0] == 1


def _fails(*args: Any) -> Any:
    raise OSError("the worker's disk is full")


def test_a_second_half_the_worker_could_not_write_is_written_here() -> None:
    steps: list[tuple[Any, ...]] = [("results", "ok"), ("result", 50, "failed", "x")]
    real = outputs.write_part
    outputs.write_part = _fails
    try:
        with _halves() as used:
            _run(60, steps)  # its checks: the output and errors are whole, in order
    finally:
        outputs.write_part = real
    assert used[0] == 0
