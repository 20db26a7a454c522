"""A new input synced through the parallel scanner leaves exactly the rows (digests, tokens,
costs), the inputs table and the problems that the one-process read leaves."""

from __future__ import annotations

import json
import sqlite3
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gptbatch.config.spec import load_spec
from gptbatch.engine import sync
from gptbatch.errors import InputError
from gptbatch.inputs.token_cache import cache_path
from gptbatch.report import NullReporter
from gptbatch.state.rows import REQUEST_ROW_SELECT
from gptbatch.state.store import Store

CHAT = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"

# Any text but lone surrogates (those are a problem case, drawn separately).
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
NUMBER = st.one_of(
    st.sampled_from([1e-05, 0.1, 2.5e-07, 1.0, 1e300, -0.0]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(-(2**70), 2**70),
)
CONFIGS = st.sampled_from(
    [{}, {"model": "gpt-4o-mini"}, {"endpoint": CHAT}, {"model": "gpt-4o", "endpoint": CHAT}]
)


@st.composite
def bodies(draw: st.DrawFn, url: str, config: dict[str, str]) -> dict[str, Any]:
    """A valid request body for url, with the config's model or one of several (priced or not)."""
    if url == CHAT:
        body: dict[str, Any] = {"messages": [{"role": "user", "content": draw(TEXT)}]}
        for name in draw(st.sets(st.sampled_from(["max_tokens", "max_completion_tokens"]))):
            body[name] = draw(st.integers(0, 2**70))
        models = ["gpt-4o-mini", "gpt-4o", "no-such-model"]
    else:
        inputs = st.one_of(
            TEXT.filter(bool),
            st.lists(TEXT, min_size=1, max_size=4),
            st.lists(st.integers(0, 2**20), min_size=1, max_size=5),
            st.lists(st.lists(st.integers(0, 100), max_size=3), min_size=1, max_size=3),
        )
        body = {"input": draw(inputs)}
        models = ["text-embedding-3-small", "text-embedding-3-large", "no-such-model"]
    for name in draw(st.sets(st.sampled_from(["temperature", "seed", "top_p"]))):
        body[name] = draw(NUMBER)
    if "model" in config:
        if draw(st.booleans()):
            body["model"] = config["model"]
    else:
        body["model"] = draw(st.sampled_from(models))
    return body


@st.composite
def request_lines(draw: st.DrawFn, cid: str, url: str, config: dict[str, str]) -> bytes:
    """One valid request line, rendered in one of several JSON spellings."""
    obj: dict[str, Any] = {"custom_id": cid, "method": "POST"}
    if "endpoint" not in config or draw(st.booleans()):
        obj["url"] = url
    obj["body"] = draw(bodies(url, config))
    if draw(st.booleans()):
        obj = dict(reversed(list(obj.items())))
    separators = draw(st.sampled_from([(", ", ": "), (",", ":")]))
    text = json.dumps(obj, ensure_ascii=draw(st.booleans()), separators=separators)
    before, after = draw(st.sampled_from(["", " ", "\t"])), draw(st.sampled_from(["", "  "]))
    return (before + text + after).encode()


BLANK = st.sampled_from([b"", b"   ", b"\t"])
BAD = st.sampled_from(
    [
        b"{not json",
        b"[1, 2]",
        b'{"custom_id": "lonely"}',
        b"\xff\xfe not utf-8",
        b'{"custom_id": "nan", "method": "POST", "url": "/v1/embeddings", "body": NaN}',
        b'{"custom_id": "s", "method": "POST", "url": "/v1/embeddings",'
        b' "body": {"model": "m", "input": "\\ud800"}}',
        b"DUPLICATE",  # the custom_id of an earlier line of the file
        b"OTHER-URL",  # a valid request for another endpoint: mixed endpoints
    ]
)


@st.composite
def files(draw: st.DrawFn, name: str, config: dict[str, str], bad: bool) -> bytes:
    """A new input file: requests, blank lines (and with bad, broken lines), CRLF, a BOM."""
    url = CHAT if "endpoint" in config else draw(st.sampled_from([CHAT, EMBEDDINGS]))
    other = EMBEDDINGS if url == CHAT else CHAT
    count = draw(st.integers(0, 14))
    lines: list[bytes] = []
    for i in range(count):
        suffix = draw(st.sampled_from(["", "-é", "-日本", " x"]))
        lines.append(draw(request_lines(f"{name}-{i}{suffix}", url, config)))
        if draw(st.integers(0, 3)) == 0:
            lines.append(draw(BLANK))
        if bad and draw(st.integers(0, 2)) == 0:
            lines.append(draw(BAD))
    for i, line in enumerate(lines):
        if line == b"DUPLICATE":
            lines[i] = lines[0]  # always a request
        elif line == b"OTHER-URL":
            body: dict[str, Any] = {"model": config.get("model", "gpt-4o-mini")}
            if other == EMBEDDINGS:
                body["input"] = "x"
            else:
                body["messages"] = [{"role": "user", "content": "x"}]
            obj = {"custom_id": f"{name}-other-{i}", "method": "POST", "url": other, "body": body}
            lines[i] = json.dumps(obj).encode()
    newline = b"\r\n" if draw(st.booleans()) else b"\n"
    data = newline.join(lines) + (newline if lines and draw(st.booleans()) else b"")
    return (b"\xef\xbb\xbf" if draw(st.booleans()) else b"") + data


@st.composite
def projects(draw: st.DrawFn, bad: bool) -> tuple[dict[str, str], dict[str, bytes], int]:
    """(config, input name -> bytes, chunk bytes for the parallel read)."""
    config = draw(CONFIGS)
    names = ["a.jsonl", "b.jsonl"][: draw(st.integers(1, 2))]
    inputs = {name: draw(files(name[0], config, bad)) for name in names}
    return config, inputs, draw(st.integers(1, 600))


def _forbidden(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("the one-process read was used for a new input")


def _sync(root: Path, state: str, env: dict[str, str], parallel: bool) -> Any:
    """Sync root's project into a fresh state; the requests and inputs tables, or problems."""
    spec = load_spec(root / "batch.yaml")
    store = Store(root / state)
    try:
        with pytest.MonkeyPatch.context() as mp:
            for name, value in env.items():
                mp.setenv(name, value)
            if parallel:
                mp.setattr(sync, "_rows", _forbidden)
            try:
                sync.sync_inputs(spec, store, NullReporter())
            except InputError as exc:
                assert _tables(store) == ([], [])  # rolled back
                return [str(p) for p in exc.problems], exc.truncated
        return _tables(store)
    finally:
        store.close()


def _tables(store: Store) -> tuple[list[Any], list[Any]]:
    rows = store.db.execute(
        f"SELECT {REQUEST_ROW_SELECT} FROM requests r ORDER BY r.path, r.ordinal"
    )
    inputs = store.db.execute(
        "SELECT path, size, mtime_ns, sha256, defaults, requests FROM inputs ORDER BY path"
    )
    return list(rows), list(inputs)


def _both(config: dict[str, str], inputs: dict[str, bytes], chunk: int) -> Iterator[Any]:
    """What the one-process sync and the parallel sync of a new project leave."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        doc = {"inputs": list(inputs), "output_dir": "out", **config}
        (root / "batch.yaml").write_text(yaml.safe_dump(doc))
        for name, data in inputs.items():
            (root / name).write_bytes(data)
        yield _sync(root, "simple", {"GPTBATCH_WORKERS": "1"}, parallel=False)
        env = {"GPTBATCH_WORKERS": "2", "GPTBATCH_CHUNK_BYTES": str(chunk)}
        yield _sync(root, "parallel", env, parallel=True)


@settings(max_examples=60, deadline=None)
@given(project=projects(bad=False))
def test_a_new_input_read_in_parallel_leaves_the_same_rows(project: Any) -> None:
    simple, parallel = _both(*project)
    rows, inputs = simple
    assert not isinstance(inputs, int), f"problems: {rows}"
    assert len(inputs) == len(project[1])
    assert all(row[-1] is not None for row in rows)  # every row has its line's digest
    assert parallel == simple


@settings(max_examples=60, deadline=None)
@given(project=projects(bad=True))
def test_a_bad_new_input_read_in_parallel_gives_the_same_problems(project: Any) -> None:
    simple, parallel = _both(*project)
    assert parallel == simple


def test_the_problem_cap_and_its_count_are_the_same(tmp_path: Path) -> None:
    lines = []
    for i in range(70):
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"q{i}"}]}
        lines.append(
            json.dumps({"custom_id": f"r{i}", "method": "POST", "url": CHAT, "body": body})
        )
        lines.append("{broken" if i % 2 else json.dumps({"custom_id": f"r{i // 2}"}))
    data = ("\n".join(lines) + "\n").encode()
    simple, parallel = _both({}, {"in.jsonl": data}, 700)
    problems, _ = simple
    assert len(problems) == 50  # of 175
    assert parallel == simple


def test_new_counts_reach_the_token_cache_only_when_the_sync_commits(tmp_path: Path) -> None:
    """A bad input rolls the sync back and remembers no count; a good one remembers all."""
    good = b"".join(
        json.dumps(
            {
                "custom_id": f"r{i}",
                "method": "POST",
                "url": CHAT,
                "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
            }
        ).encode()
        + b"\n"
        for i in range(20)
    )
    env = {"GPTBATCH_WORKERS": "2", "GPTBATCH_CHUNK_BYTES": "300"}
    (tmp_path / "batch.yaml").write_text(
        yaml.safe_dump({"inputs": ["in.jsonl"], "output_dir": "o"})
    )
    cache = cache_path()
    assert cache is not None  # the test's own (conftest), never the user's

    def remembered() -> int:
        if not cache.exists():
            return 0
        with sqlite3.connect(cache) as conn:
            return conn.execute("SELECT count(*) FROM counts").fetchone()[0]

    (tmp_path / "in.jsonl").write_bytes(good + b"{broken\n")
    problems, _ = _sync(tmp_path, "state-bad", env, parallel=True)
    assert problems and remembered() == 0
    (tmp_path / "in.jsonl").write_bytes(good)
    rows, _ = _sync(tmp_path, "state-good", env, parallel=True)
    for thread in threading.enumerate():  # the counts are committed behind the sync
        if thread.name == "token-cache":
            thread.join()
    assert len(rows) == 20 and remembered() == 20
