"""Outputs rewritten by copying unchanged lines from the last output are byte for byte what a
full write from the store gives, whatever happened in between."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gptbatch.config.spec import Spec, load_spec
from gptbatch.engine.outputs import write_outputs
from gptbatch.state.store import Store

KEYS = [f"k{i}" for i in range(6)]

OP = st.one_of(
    st.tuples(st.just("sync"), st.lists(st.sampled_from(KEYS), max_size=6, unique=True)),
    st.tuples(
        st.just("result"),
        st.sampled_from(KEYS),
        st.sampled_from(["ok", "ok", "failed", "retry"]),
        st.text(max_size=20),
    ),
    st.tuples(st.just("reset"), st.booleans()),
    st.tuples(st.just("gc")),
    st.tuples(st.just("append to the output")),
    st.tuples(st.just("touch the output")),
    st.tuples(st.just("drop the index")),
    st.tuples(st.just("unversion"), st.sampled_from(KEYS)),
    st.tuples(st.just("write")),
)


def _line(key: str, text: str) -> str:
    return json.dumps({"custom_id": key, "response": {"status_code": 200, "body": {"t": text}}})


def _apply(store: Store, spec: Spec, op: tuple[Any, ...]) -> None:
    out = spec.output_dir / "in.jsonl"
    kind = op[0]
    if kind == "sync":
        rows = [
            (i, i + 1, 0, 1, k, f"c-{k}", "m", "/v1/chat/completions", 1, 1, 1, 0.0, "new", None)
            for i, k in enumerate(op[1])
        ]
        with store.snapshot() as before, store.transaction():
            store.replace_input(
                str(spec.inputs[0]),
                size=1,
                mtime_ns=1,
                sha256="x",
                defaults="{}",
                rows=rows,
                before=before,
            )
    elif kind == "result":
        line = _line(op[1], op[3]) if op[2] != "retry" else None
        with store.transaction():
            store.write_results([(op[1], op[2], 1, line, "why" if op[2] != "ok" else None, "b")])
    elif kind == "reset":
        with store.transaction():
            store.reset_results([str(spec.inputs[0])], only_failed=op[1])
    elif kind == "gc":
        store.drop_unreferenced()
    elif kind == "append to the output" and out.exists():
        with open(out, "ab") as f:
            f.write(b'{"custom_id": "someone else"}\n')
    elif kind == "touch the output" and out.exists():
        st_ = out.stat()
        os.utime(out, ns=(st_.st_atime_ns, st_.st_mtime_ns + 1000))
    elif kind == "drop the index":
        with store.transaction():
            store.db.execute("DELETE FROM output_index")
    elif kind == "unversion":  # an UPDATE of a result leaves its version unknown (NULL)
        with store.transaction():
            store.db.execute("UPDATE results SET error=error WHERE key=?", (op[1],))
    elif kind == "write":
        write_outputs(spec, store)


def _project(root: Path) -> tuple[Spec, Store]:
    """An empty input named by a batch.yaml in root, and a store for it."""
    (root / "batch.yaml").write_text(yaml.safe_dump({"inputs": ["in.jsonl"], "output_dir": "out"}))
    (root / "in.jsonl").write_text("")
    return load_spec(root / "batch.yaml"), Store(root / "state")


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


@settings(max_examples=60, deadline=None)
@given(ops=st.lists(OP, max_size=14))
def test_an_incremental_output_equals_a_full_write(ops: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        spec, store = _project(root)
        try:
            for op in [*ops, ("write",)]:
                _apply(store, spec, op)
                if op[0] != "write":
                    continue
                lines, failed = _expected(store, spec)
                assert (spec.output_dir / "in.jsonl").read_bytes() == lines
                errors = spec.output_dir / "in.errors.jsonl"
                got = (
                    [json.loads(x)["custom_id"] for x in errors.read_bytes().splitlines()]
                    if (errors.exists())
                    else []
                )
                assert got == failed
        finally:
            store.close()


@pytest.mark.parametrize("kernel_copy", [True, False])
def test_a_second_write_copies_what_did_not_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kernel_copy: bool
) -> None:
    """One result changed: only its line is read from the store; the rest is copied."""
    if not kernel_copy:  # a system or file system without copy_file_range

        def refuse(*args: Any) -> int:
            raise OSError(18, "Invalid cross-device link")

        monkeypatch.setattr(os, "copy_file_range", refuse, raising=False)
    spec, store = _project(tmp_path)
    try:
        _apply(store, spec, ("sync", KEYS))
        for key in KEYS:
            _apply(store, spec, ("result", key, "ok", "first"))
        write_outputs(spec, store)
        with store.transaction():
            store.reset_results([str(spec.inputs[0])], only_failed=False)
            store.write_results([(k, "ok", 1, _line(k, "first"), None, "b") for k in KEYS[1:]])
            store.write_results([(KEYS[0], "ok", 1, _line(KEYS[0], "second"), None, "b")])
        _apply(store, spec, ("sync", [*KEYS[1:], KEYS[0]]))  # the edited one moves to the end
        write_outputs(spec, store)
        with store.transaction():  # only the lines written since the last output are read
            store.write_results([(KEYS[2], "ok", 1, _line(KEYS[2], "third"), None, "b")])
        statements: list[str] = []
        store.db.set_trace_callback(statements.append)
        write_outputs(spec, store)
        store.db.set_trace_callback(None)
        assert sum("FROM results WHERE key=" in s for s in statements) == 1
        assert (spec.output_dir / "in.jsonl").read_bytes() == _expected(store, spec)[0]
    finally:
        store.close()


def test_a_full_write_finds_a_result_whose_version_is_unknown(tmp_path: Path) -> None:
    """Outputs join requests with results by version; one whose version an UPDATE made
    unknown is read by its key instead, not left out."""
    spec, store = _project(tmp_path)
    try:
        _apply(store, spec, ("sync", KEYS))
        for key in KEYS:
            _apply(store, spec, ("result", key, "ok", f"answer {key}"))
        _apply(store, spec, ("unversion", KEYS[3]))
        versions = dict(store.db.execute("SELECT key, result_version FROM requests"))
        assert versions[KEYS[3]] is None and None not in [versions[k] for k in KEYS[:3]]
        write_outputs(spec, store)
        expected = "".join(_line(k, f"answer {k}") + "\n" for k in KEYS).encode()
        assert (spec.output_dir / "in.jsonl").read_bytes() == expected
    finally:
        store.close()
