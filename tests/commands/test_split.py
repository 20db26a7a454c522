"""Tests for gptbatch.commands.split and `gptbatch split`: shard files, errors, stale files."""

from __future__ import annotations

import hashlib
import json
import random
import re
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gptbatch.cli import main
from gptbatch.cli.split import parse_count
from gptbatch.commands import split as split_module
from gptbatch.commands.split import SHARD_FILE, shard_names, split_files
from gptbatch.errors import InputError
from gptbatch.inputs.scan import ScanOptions
from gptbatch.inputs.tokens import estimate_request

WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "eta",
    "theta",
    "iota",
    "kappa",
    "lambda",
    "mu",
    "nu",
    "xi",
    "omicron",
]


def chat_line(
    rng: random.Random, custom_id: str, model: str = "gpt-4o-mini", words: int = 400
) -> bytes:
    """A chat request with irregular spacing and key order, as people's files have them."""
    text = " ".join(rng.choice(WORDS) for _ in range(rng.randrange(5, words)))
    body = {"messages": [{"role": "user", "content": text}], "model": model, "max_tokens": 20}
    sep = rng.choice([(",", ":"), (", ", ": "), (" , ", " :  ")])
    return (
        b'{"url": "/v1/chat/completions",  "custom_id": '
        + json.dumps(custom_id).encode()
        + b', "method":"POST", "body": '
        + json.dumps(body, separators=sep, ensure_ascii=False).encode()
        + b"}"
    )


def embedding_line(rng: random.Random, custom_id: str) -> bytes:
    inputs = [" ".join(rng.choice(WORDS) for _ in range(20)) for _ in range(rng.randrange(1, 5))]
    return json.dumps(
        {
            "custom_id": custom_id,
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": "text-embedding-3-small", "input": inputs},
        }
    ).encode()


def write_inputs(directory: Path, seed: int = 1) -> tuple[list[Path], list[bytes]]:
    """Three input files (one with a BOM, one with CRLF and blank lines); their raw lines."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    chat = [
        chat_line(rng, f"chat-{i}", rng.choice(["gpt-4o-mini", "gpt-4.1-nano"])) for i in range(300)
    ]
    more = [chat_line(rng, f"more-{i}") for i in range(150)]
    emb = [embedding_line(rng, f"emb-{i}") for i in range(120)]
    a, b, c = directory / "a.jsonl", directory / "b.jsonl", directory / "c.jsonl"
    a.write_bytes(b"\xef\xbb\xbf" + b"\n".join(chat) + b"\n")
    b.write_bytes(b"\r\n".join(more[:75]) + b"\r\n\r\n" + b"\r\n".join(more[75:]))  # no final EOL
    c.write_bytes(b"\n\n".join(emb) + b"\n")
    return [a, b, c], chat + more + emb


def read_shards(directory: Path) -> dict[str, list[bytes]]:
    return {
        p.name: p.read_bytes().split(b"\n")[:-1]
        for p in sorted(directory.iterdir())
        if SHARD_FILE.fullmatch(p.name)
    }


def test_every_line_once_byte_identical_and_each_shard_within_the_limit(tmp_path: Path) -> None:
    paths, lines = write_inputs(tmp_path / "in")
    out = tmp_path / "out"
    limit = 12_000
    result = split_files(paths, limit, out_dir=out, max_requests=40)
    written = read_shards(out)
    assert list(written) == [s.name for s in result.shards] == shard_names(len(written))
    # Every input line in exactly one shard, unchanged (BOM and CR are not part of a line).
    assert Counter(line for shard in written.values() for line in shard) == Counter(lines)
    position = {line: n for n, line in enumerate(lines)}
    for summary in result.shards:
        shard = written[summary.name]
        requests = [json.loads(line) for line in shard]
        tokens = sum(estimate_request(r["url"], r["body"]).tokens for r in requests)
        assert tokens <= limit and tokens == summary.tokens
        assert len(shard) <= 40 and len(shard) == summary.requests
        assert {(r["body"]["model"], r["url"]) for r in requests} == {(summary.model, summary.url)}
        assert [position[line] for line in shard] == sorted(position[line] for line in shard)
        assert (out / summary.name).stat().st_size == summary.nbytes
    # Groups appear in order of first appearance, each group's shards together.
    groups = [(s.model, s.url) for s in result.shards]
    order = list(dict.fromkeys(groups))
    assert order[0] == (json.loads(lines[0])["body"]["model"], "/v1/chat/completions")
    assert groups == sorted(groups, key=order.index)
    assert result.requests == len(lines)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_split_as_a_program_ends_when_done_with_everything_written(tmp_path: Path) -> None:
    """`python -m gptbatch split` ends without the interpreter's teardown (gptbatch.cli.run):
    its summary, shards and token cache are complete, its workers gone, its code kept;
    a failing split still reports and exits as before."""
    import os
    import subprocess
    import sys

    paths, lines = write_inputs(tmp_path / "in")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "GPTBATCH_CACHE_DIR": str(tmp_path / "cache"), "GPTBATCH_WORKERS": "2"}
    env["PYTHONPATH"] = str(root)
    cmd = [sys.executable, "-m", "gptbatch", "split", "12000", *map(str, paths)]
    done = subprocess.run(
        [*cmd, "--out-dir", str(tmp_path / "out")], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Will use ") and done.stderr == ""
    shards = done.stdout.count("shard-")
    assert shards == len(read_shards(tmp_path / "out")) > 1
    assert Counter(x for s in read_shards(tmp_path / "out").values() for x in s) == Counter(lines)
    import sqlite3

    with sqlite3.connect(tmp_path / "cache" / "tokens.sqlite") as conn:
        assert conn.execute("SELECT count(*) FROM counts").fetchone()[0] == len(lines)
    import time

    for _ in range(100):  # its idle workers end on their own, at once
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        if str(tmp_path / "in") not in ps:
            break
        time.sleep(0.05)
    assert str(tmp_path / "in") not in ps  # no worker left behind
    paths[0].write_bytes(paths[0].read_bytes() + b"not json\n")
    failed = subprocess.run(
        [*cmd, "--out-dir", str(tmp_path / "out2")], capture_output=True, text=True, env=env
    )
    assert failed.returncode == 2 and "not valid JSON" in failed.stderr
    assert not (tmp_path / "out2").exists()


def test_splitting_is_deterministic(tmp_path: Path) -> None:
    paths, _ = write_inputs(tmp_path / "in")
    split_files(paths, 20_000, out_dir=tmp_path / "one")
    split_files(paths, 20_000, out_dir=tmp_path / "two")
    assert read_shards(tmp_path / "one") == read_shards(tmp_path / "two")


def test_stale_shards_of_another_count_are_removed_and_nothing_else(tmp_path: Path) -> None:
    paths, _ = write_inputs(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    stale = ["shard-000-of-099.jsonl", "shard-098-of-099.jsonl", "shard-0000-of-1200.jsonl"]
    others = [
        "shard-notes.txt",
        "myshard-000-of-099.jsonl",
        "shard-000-of-099.jsonl.bak",
        "x.jsonl",
    ]
    for name in stale + others:
        (out / name).write_text("old\n")
    result = split_files(paths, 15_000, out_dir=out)
    assert sorted(result.removed) == sorted(stale)
    names = {p.name for p in out.iterdir()}
    assert names == set(others) | {s.name for s in result.shards}


def test_a_second_split_with_another_count_replaces_the_first(tmp_path: Path) -> None:
    paths, lines = write_inputs(tmp_path / "in")
    out = tmp_path / "out"
    first = split_files(paths, 40_000, out_dir=out)
    second = split_files(paths, 9_000, out_dir=out)
    assert len(second.shards) > len(first.shards)
    assert set(second.removed) == {s.name for s in first.shards} - {s.name for s in second.shards}
    assert sum(len(v) for v in read_shards(out).values()) == len(lines)


def test_old_shards_given_as_inputs_are_not_deleted(tmp_path: Path) -> None:
    paths, lines = write_inputs(tmp_path / "in")
    split_files(paths, 40_000, out_dir=tmp_path)
    old = sorted(p for p in tmp_path.iterdir() if SHARD_FILE.fullmatch(p.name))
    result = split_files(old, 9_000, out_dir=tmp_path)
    assert result.kept_inputs and set(result.kept_inputs) <= {p.name for p in old}
    assert all(p.exists() for p in old if p.name in result.kept_inputs)
    new = {s.name: (tmp_path / s.name).read_bytes() for s in result.shards}
    assert sum(v.count(b"\n") for v in new.values()) == len(lines)


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_a_request_over_the_limit_names_file_and_line_and_writes_nothing(tmp_path: Path) -> None:
    paths, _ = write_inputs(tmp_path / "in")
    big = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "lorem " * 5000}]}
    line = {"custom_id": "huge", "method": "POST", "url": "/v1/chat/completions", "body": big}
    with paths[1].open("ab") as f:
        f.write(b"\r\n" + json.dumps(line).encode() + b"\r\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "shard-000-of-002.jsonl").write_text("keep me\n")
    before = snapshot(out)
    tokens = estimate_request("/v1/chat/completions", big).tokens
    with pytest.raises(InputError) as info:
        split_files(paths, 3_000, out_dir=out)
    message = str(info.value)
    line_number = paths[1].read_bytes().split(b"\n").index(json.dumps(line).encode() + b"\r") + 1
    assert f"b.jsonl:{line_number}:" in message
    assert "'huge'" in message and f"{tokens:,}" in message and "3,000" in message
    assert "raise LIMIT" in message
    assert snapshot(out) == before


def test_an_invalid_line_fails_before_anything_is_written(tmp_path: Path) -> None:
    paths, _ = write_inputs(tmp_path / "in")
    with paths[2].open("ab") as f:
        f.write(b'{"custom_id": "bad", "method": "GET"}\n')
    out = tmp_path / "out"
    out.mkdir()
    (out / "shard-000-of-001.jsonl").write_text("keep me\n")
    before = snapshot(out)
    assert main(["split", "20000", *map(str, paths), "--out-dir", str(out)]) == 2
    assert snapshot(out) == before


def test_no_requests_is_an_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(InputError, match="no requests"):
        split_files([empty], 100, out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_adding_a_line_changes_few_shard_files(tmp_path: Path) -> None:
    # Many requests per shard, as when splitting for a tier's queue limit.
    rng = random.Random(4)
    lines = [chat_line(rng, f"r{i}", words=60) for i in range(6_000)]
    changed = []
    base: set[str] = set()
    for trial in range(6):
        edited = list(lines)
        if trial:
            edited.insert(rng.randrange(len(lines) + 1), chat_line(rng, f"new-{trial}", words=60))
        source = tmp_path / f"in{trial}.jsonl"
        source.write_bytes(b"\n".join(edited) + b"\n")
        out = tmp_path / f"out{trial}"
        split_files([source], 25_000, out_dir=out)
        contents = {hashlib.sha256(p.read_bytes()).hexdigest() for p in out.iterdir()}
        if not trial:
            base = contents
            assert len(base) >= 8
        else:
            changed.append(len(contents - base))
    assert statistics.median(changed) <= 2 and max(changed) <= 5


def test_cli_prints_the_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths, lines = write_inputs(tmp_path / "in")
    out = tmp_path / "out"
    assert (
        main(["split", "9_000", *map(str, paths), "--out-dir", str(out), "--max-requests", "60"])
        == 0
    )
    text = capsys.readouterr().out.splitlines()
    shards = read_shards(out)
    total = sum(estimate_request(r["url"], r["body"]).tokens for r in map(json.loads, lines))
    assert (
        text[0] == f"Will use {len(shards)} shards for {len(lines):,} requests / {total:,} tokens."
    )
    pattern = re.compile(
        r"  (shard-\d{3}-of-\d{3}\.jsonl): (\S+) (/v1/\S+) ([\d,]+) requests, ~([\d,]+) tokens"
    )
    rows = [pattern.fullmatch(line) for line in text[1 : 1 + len(shards)]]
    assert all(rows)
    for row in rows:
        assert row is not None
        assert int(row.group(4).replace(",", "")) == len(shards[row.group(1)]) <= 60


def test_cli_rejects_a_bad_limit(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["split", "lots", "x.jsonl"])
    assert info.value.code == 2
    assert "'lots' is not a count" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1900000", 1_900_000),
        ("1_900_000", 1_900_000),
        ("1,900,000", 1_900_000),
        ("1.9M", 1_900_000),
        ("500k", 500_000),
    ],
)
def test_parse_count(text: str, value: int) -> None:
    assert parse_count(text) == value


@pytest.mark.parametrize("text", ["0", "-5", "1.5", "2.5k5", "", "1e6"])
def test_parse_count_rejects(text: str) -> None:
    with pytest.raises(Exception, match=r"count|whole number"):
        parse_count(text)


def test_shard_names_sort_in_order() -> None:
    assert shard_names(3) == [
        "shard-000-of-003.jsonl",
        "shard-001-of-003.jsonl",
        "shard-002-of-003.jsonl",
    ]
    names = shard_names(1001)
    assert names[0] == "shard-0000-of-1001.jsonl" and names == sorted(names)
    assert all(SHARD_FILE.fullmatch(n) for n in names)


def copy_line_by_line(
    data: bytes, base: int, layout: Any, first: int, stop: int, shards: Any
) -> None:
    """The simple copy the run-at-a-time _copy_lines must equal: each line, then "\\n"."""
    for r in range(first, stop):
        begin = layout.offset[r] - base
        f = shards.file(layout.group[r])
        f.write(data[begin : begin + layout.length[r]])
        f.write(b"\n")
        shards.wrote(layout.group[r])


def all_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


KINDS = st.sampled_from(["mini", "mini", "mini", "nano", "blank"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    chats=st.lists(KINDS, min_size=1, max_size=40),
    embeddings=st.integers(0, 6),
    eol=st.sampled_from([b"\n", b"\n", b"\r\n"]),
    bom=st.booleans(),
    final_eol=st.booleans(),
    limit=st.integers(150, 3000),
    max_requests=st.integers(1, 12),
    chunk=st.integers(1, 2000),
    seed=st.integers(0, 3),
)
def test_copying_runs_of_lines_writes_what_copying_each_line_writes(
    tmp_path_factory: pytest.TempPathFactory,
    chats: list[str],
    embeddings: int,
    eol: bytes,
    bom: bool,
    final_eol: bool,
    limit: int,
    max_requests: int,
    chunk: int,
    seed: int,
) -> None:
    rng = random.Random(seed)
    lines = [
        b"" if kind == "blank" else chat_line(rng, f"c{i}", f"gpt-4.1-{kind}", words=8)
        for i, kind in enumerate(chats)
    ]
    lines.append(chat_line(rng, "last", words=8))
    directory = tmp_path_factory.mktemp("runs")
    paths = [directory / "chat.jsonl"]
    head = b"\xef\xbb\xbf" if bom else b""
    paths[0].write_bytes(head + eol.join(lines) + (eol if final_eol else b""))
    if embeddings:
        paths.append(directory / "emb.jsonl")
        paths[1].write_bytes(b"\n".join(embedding_line(rng, f"e{i}") for i in range(embeddings)))
    outputs = []
    # Small chunks, copied while the inputs are read, run by run; and one chunk per file,
    # copied line by line once the read is over (the two-pass way): the same files.
    for copy, chunk_bytes in ((split_module._copy_lines, chunk), (copy_line_by_line, 1 << 30)):
        out = directory / copy.__name__
        options = ScanOptions(workers=0, chunk_bytes=chunk_bytes, use_cache=False)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(split_module, "_copy_lines", copy)
            split_files(paths, limit, out_dir=out, max_requests=max_requests, options=options)
        outputs.append(all_bytes(out))
    assert outputs[0] == outputs[1]


@pytest.mark.parametrize("workers", [0, 2])
def test_chunks_are_copied_while_the_inputs_are_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    paths, lines = write_inputs(tmp_path / "in")
    real = split_module._copy_chunk
    seen_then: list[int] = []  # chunks read so far at each copy

    def copy(read: Any, stop: int, copier: Any) -> None:
        seen_then.append(len(copier.report.chunks))
        real(read, stop, copier)

    monkeypatch.setattr(split_module, "_copy_chunk", copy)
    options = ScanOptions(workers=workers, chunk_bytes=4000, use_cache=False)
    out = tmp_path / "out"
    result = split_files(paths, 12_000, out_dir=out, max_requests=40, options=options)
    assert min(seen_then) < max(seen_then)  # the first copies came before the read ended
    written = read_shards(out)
    assert Counter(line for shard in written.values() for line in shard) == Counter(lines)
    assert list(written) == [s.name for s in result.shards]


@pytest.mark.parametrize("workers", [0, 2])
def test_shards_and_counts_are_the_same_when_fastokens_takes_over_mid_split(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    """fastokens loads in the background while tiktoken counts the first chunk (held here
    until that chunk is read), then counts the rest, in this process or in workers forked
    after the load. The shards, byte for byte, and their counts are tiktoken's alone.
    The suite's corpus (every endpoint, CRLF, BOM), in small chunks."""
    pytest.importorskip("fastokens")
    import threading

    from gptbatch.inputs import fast_counter, scan
    from gptbatch.inputs.tokens import endpoints, words
    from tests.corpus import write_mixed_corpus

    paths = write_mixed_corpus(tmp_path / "mixed", requests_per_file=60)
    options = ScanOptions(workers=workers, chunk_bytes=3000, use_cache=False)
    gate, loading_then, counted = threading.Event(), [], []
    real_read, real_tokenizer = scan._read_here, fast_counter.raw_tokenizer
    real_counter = fast_counter.guarded_counter

    def read_here(reader: Any, unit: Any) -> Any:
        result = real_read(reader, unit)
        loading_then.append(fast_counter.loading())
        gate.set()  # the first chunk was counted while the load was held
        return result

    def held_tokenizer(encoding: str) -> Any:
        assert gate.wait(60)
        return real_tokenizer(encoding)

    def recording_counter(encoding: str, tokenizer: Any) -> Any:
        count = real_counter(encoding, tokenizer)
        return lambda text: counted.append(text) or count(text)

    monkeypatch.setattr(scan, "_read_here", read_here)
    monkeypatch.setattr(fast_counter, "raw_tokenizer", held_tokenizer)
    monkeypatch.setattr(fast_counter, "guarded_counter", recording_counter)
    runs = {}
    for counter in ("tiktoken", "fastokens"):
        monkeypatch.setenv("GPTBATCH_COUNTER", counter)
        monkeypatch.setattr(fast_counter, "_LOADED", {})  # built anew, in the background
        endpoints._MEMOS.clear()
        words.clear()
        gate.clear()
        loading_then.clear()
        out = tmp_path / counter
        try:
            result = split_files(paths, 300_000, out_dir=out, max_requests=25, options=options)
        finally:
            gate.set()
        assert fast_counter.status()[0] == counter
        assert loading_then[0] == (counter == "fastokens")
        runs[counter] = (all_bytes(out), result.shards)
    monkeypatch.delenv("GPTBATCH_COUNTER")
    fast_counter.select(0)
    assert runs["fastokens"] == runs["tiktoken"]
    assert len(runs["tiktoken"][1]) > 5
    if workers == 0:  # this process counted with fastokens past the canary (workers: their own)
        assert len([t for t in counted if t not in fast_counter.CANARY]) > 50


@pytest.mark.parametrize("corpus", ["mixed", "prose"])
@pytest.mark.parametrize("workers", [0, 2])
def test_shards_are_byte_identical_with_texts_counted_by_their_words(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int, corpus: str
) -> None:
    """Counting each text as the sum of its words (gptbatch.inputs.tokens.words) changes no
    count: the suite's corpus and prose-like chat files split into the same shards, byte
    for byte, with the same token totals, as with every text counted whole."""
    from gptbatch.inputs.tokens import endpoints, words
    from tests.corpus import write_mixed_corpus

    if corpus == "mixed":
        paths = write_mixed_corpus(tmp_path / "in", requests_per_file=60)
    else:
        paths = write_inputs(tmp_path / "in")[0]
    options = ScanOptions(workers=workers, chunk_bytes=5000, use_cache=False)
    runs = {}
    for by_words in (True, False):
        if not by_words:
            monkeypatch.setattr(words, "ENCODINGS", frozenset())
        endpoints._MEMOS.clear()
        words.clear()
        out = tmp_path / f"out-{by_words}"
        result = split_files(paths, 300_000, out_dir=out, max_requests=25, options=options)
        runs[by_words] = (all_bytes(out), result.shards)
        if by_words and workers == 0:
            assert len(words._MEMOS["o200k_base"][1]) > 10  # the words really were used
    assert runs[True] == runs[False]
    assert len(runs[True][1]) > 5


def test_the_shard_directory_is_synced_once_after_the_final_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parts are renamed twice (temp -> part -> shard): the directory's fsync comes once,
    after the last final name, instead of after every part (17 ms each here)."""
    from gptbatch import canonical

    paths, _ = write_inputs(tmp_path / "in")
    out = tmp_path / "out"
    synced: list[tuple[str, list[str]]] = []

    def record(where: str):  # type: ignore[no-untyped-def]
        def fsync_dir(directory: Path) -> None:
            names = sorted(
                p.name for p in Path(directory).iterdir() if SHARD_FILE.fullmatch(p.name)
            )
            synced.append((where, names))

        return fsync_dir

    monkeypatch.setattr(canonical, "fsync_dir", record("atomic_writer"))
    monkeypatch.setattr(split_module, "fsync_dir", record("split"))
    result = split_files(paths, 12_000, out_dir=out, max_requests=40)
    assert len(result.shards) > 3
    assert synced == [("split", [s.name for s in result.shards])]
