"""The one-pass, multi-process reader: same requests, keys, counts, problems and shard bytes as
read_requests and the code before it, wherever chunk boundaries fall; changed inputs caught."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from corpus import write_mixed_corpus
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gptbatch.cli import main
from gptbatch.commands import split as split_module
from gptbatch.errors import InputError
from gptbatch.inputs.requests import read_requests
from gptbatch.inputs.scan import Scanner, ScanOptions
from gptbatch.inputs.tokens import estimate_request

DATA = Path(__file__).parents[1] / "data"
CHAT = "/v1/chat/completions"


def reference(paths: list[Path], **kwargs: Any) -> tuple[list[tuple[Any, ...]], str | None]:
    """What read_requests + estimate_request give: records, and the error text if any."""
    records: list[tuple[Any, ...]] = []
    try:
        for r in read_requests(paths, **kwargs):
            estimate = estimate_request(r.url, r.body)
            where = (r.key, r.custom_id, r.path, r.line, r.offset, r.length)
            records.append((*where, estimate.tokens, estimate.encoding, estimate.caveats))
    except InputError as exc:
        return records, str(exc)
    return records, None


def scanned(paths: list[Path], options: ScanOptions) -> tuple[list[tuple[Any, ...]], str | None]:
    records: list[tuple[Any, ...]] = []
    try:
        for r in Scanner(paths, options).requests():
            where = (r.key, r.custom_id, r.path, r.line, r.offset, r.length)
            records.append((*where, r.tokens, r.encoding, r.caveats))
    except InputError as exc:
        return records, str(exc)
    return records, None


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_mixed_corpus(tmp_path_factory.mktemp("mixed"))


# --- token counts: the same lines as before the change --------------------------------------


@pytest.mark.parametrize(("workers", "chunk"), [("1", ""), ("2", "3000")])
def test_tokens_per_request_prints_what_the_old_code_printed(
    mixed: list[Path],
    workers: str,
    chunk: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("GPTBATCH_WORKERS", workers)
    monkeypatch.setenv("GPTBATCH_CHUNK_BYTES", chunk)
    directory = f"{mixed[0].parent}/"
    for _ in range(2):  # counted, then from the cache
        assert main(["tokens", "--per-request", *map(str, mixed)]) == 0
        out = capsys.readouterr().out
        assert out.replace(directory, "{dir}/") == (DATA / "tokens_per_request.txt").read_text()


def test_parallel_and_one_process_reads_equal_read_requests(mixed: list[Path]) -> None:
    expected = reference(mixed)
    assert expected[1] is None and len(expected[0]) == 360
    for options in (
        ScanOptions(workers=1, use_cache=False),
        ScanOptions(workers=2, chunk_bytes=1, use_cache=False),
        ScanOptions(workers=2, chunk_bytes=4096, use_cache=False),
    ):
        assert scanned(mixed, options) == expected


# --- split: shard bytes as before ---------------------------------------------------------


def split_transcript(paths: list[Path], out: Path, capsys: Any) -> list[str]:
    lines = []
    for limit in ["20000", "60000", "300000"]:
        target = out / f"out{limit}"
        argv = [*map(str, paths), "--out-dir", str(target), "--max-requests", "25"]
        code = main(["split", limit, *argv])
        done = capsys.readouterr()
        lines.append(f"$ split {limit} --max-requests 25 -> exit {code}")
        text = (done.out + done.err).replace(f"{paths[0].parent}/", "{dir}/")
        lines += text.splitlines()
        if target.exists():
            for p in sorted(target.iterdir()):
                lines.append(f"{p.name} {hashlib.sha256(p.read_bytes()).hexdigest()}")
    return lines


@pytest.mark.parametrize(("workers", "chunk"), [("1", ""), ("2", "2000")])
def test_split_writes_the_shards_and_messages_of_the_old_code(
    mixed: list[Path],
    tmp_path: Path,
    workers: str,
    chunk: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("GPTBATCH_WORKERS", workers)
    monkeypatch.setenv("GPTBATCH_CHUNK_BYTES", chunk)
    expected = (DATA / "split_expected.txt").read_text().splitlines()
    assert split_transcript(mixed, tmp_path, capsys) == expected


# --- chunk boundaries anywhere ------------------------------------------------------------


def chat(custom_id: str, text: str = "hello there", url: str = CHAT) -> bytes:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body}).encode()


LINES = st.sampled_from(
    [
        "ok",
        "ok",
        "ok",
        "long",
        "blank",
        "spaces",
        "dup",
        "embeddings",
        "bad-json",
        "bad-method",
        "too-long",
        "bad-utf8",
    ]
)


def render(kinds: list[str], seed: int) -> list[bytes]:
    lines = []
    for i, kind in enumerate(kinds):
        if kind == "ok":
            lines.append(chat(f"id-{seed}-{i}", f"text number {i} ünïcode"))
        elif kind == "long":  # longer than most chunk sizes drawn, within max_line_bytes
            lines.append(chat(f"id-{seed}-{i}", "word " * 100))
        elif kind == "blank":
            lines.append(b"")
        elif kind == "spaces":
            lines.append(b" \t ")
        elif kind == "dup":
            lines.append(chat(f"id-{seed}-0", "same id as the first line"))
        elif kind == "embeddings":
            line = {"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings"}
            lines.append(json.dumps({**line, "body": {"model": "m", "input": "x"}}).encode())
        elif kind == "bad-json":
            lines.append(b'{"custom_id": "broken", ')
        elif kind == "bad-method":
            lines.append(chat(f"id-{seed}-{i}").replace(b'"POST"', b'"GET"'))
        elif kind == "too-long":  # over max_line_bytes
            lines.append(chat(f"id-{seed}-{i}", "x" * 900))
        else:
            lines.append(b'{"custom_id": "\xff"}')
    return lines


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    files=st.lists(st.lists(LINES, min_size=0, max_size=12), min_size=1, max_size=3),
    crlf=st.booleans(),
    bom=st.booleans(),
    final_eol=st.booleans(),
    chunk=st.integers(1, 700),
    max_problems=st.sampled_from([2, 50]),
)
def test_any_chunk_boundaries_give_read_requests_results(
    tmp_path_factory: pytest.TempPathFactory,
    files: list[list[str]],
    crlf: bool,
    bom: bool,
    final_eol: bool,
    chunk: int,
    max_problems: int,
) -> None:
    directory = tmp_path_factory.mktemp("chunks")
    paths = []
    for n, kinds in enumerate(files):
        eol = b"\r\n" if crlf else b"\n"
        data = eol.join(render(kinds, n)) + (eol if final_eol else b"")
        path = directory / f"f{n}.jsonl"
        path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + data)
        paths.append(path)
    limits = {"max_problems": max_problems, "max_line_bytes": 700}
    expected = reference(paths, **limits)
    options = ScanOptions(workers=0, chunk_bytes=chunk, use_cache=False, **limits)
    assert scanned(paths, options) == expected


def test_worker_processes_report_problems_in_file_and_line_order(tmp_path: Path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_bytes(
        b"\n".join([chat("x"), b"{", chat("y"), chat("x"), chat("z", url="/v1/embeddings")])
    )
    b.write_bytes(b"\n".join([chat("y"), b"", chat("w", "w" * 5000), b"[1]", chat("v")]) + b"\n")
    missing = tmp_path / "missing.jsonl"
    expected = reference([a, missing, b, tmp_path], max_problems=4)
    assert expected[1] is not None and "more problems not shown" in expected[1]
    for chunk in (1, 50, 10_000):
        options = ScanOptions(workers=2, chunk_bytes=chunk, use_cache=False, max_problems=4)
        assert scanned([a, missing, b, tmp_path], options) == expected


# --- a file that changes between reading and copying --------------------------------------


def changing_copy(path: Path, edit: Any, line: int | None) -> Any:
    """split's chunk copy, editing path once first: before copying the chunk holding line
    (read by then, not yet copied), or before the first copy if line is None."""
    real = split_module._copy_chunk
    done: list[bool] = []

    def copy(read: Any, stop: int, copier: Any) -> Any:
        lines = copier.layout.line
        holds = stop > read.first_record and (
            line is None or lines[read.first_record] <= line <= lines[stop - 1]
        )
        if holds and not done:
            done.append(True)
            edit(path)
        return real(read, stop, copier)

    return copy


def edit_line_7(path: Path) -> None:
    lines = path.read_bytes().split(b"\n")
    lines[6] = lines[6].replace(b"text number", b"TEXT NUMBER")
    path.write_bytes(b"\n".join(lines))


def append_line(path: Path) -> None:
    with path.open("ab") as f:
        f.write(chat("appended") + b"\n")


@pytest.mark.parametrize(("edit", "line"), [(edit_line_7, 7), (append_line, None)])
@pytest.mark.parametrize("workers", [0, 2])
def test_a_file_changed_during_split_is_an_error_and_leaves_no_shards(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    edit: Any,
    line: int | None,
    workers: int,
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"\n".join(chat(f"r{i}", f"text number {i}") for i in range(40)) + b"\n")
    out = tmp_path / "out"
    monkeypatch.setattr(split_module, "_copy_chunk", changing_copy(source, edit, line))
    monkeypatch.setenv("GPTBATCH_WORKERS", str(workers))
    monkeypatch.setenv("GPTBATCH_CHUNK_BYTES", "500")
    assert main(["split", "300", str(source), "--out-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert "changed while gptbatch ran" in err
    if line is not None:
        assert f"{source}:{line}:" in err
    else:
        assert f"{source}:" in err
    # No shard, no temporary part file (and no directory if the run made it while copying).
    assert not out.exists() or list(out.iterdir()) == []


# --- the token-count cache ----------------------------------------------------------------


def count_estimates(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    from gptbatch.inputs import scan

    calls: list[str] = []
    real = scan._estimate

    def estimate(request: Any) -> Any:
        calls.append(request.custom_id)
        return real(request)

    monkeypatch.setattr(scan, "_estimate", estimate)
    return calls


def tokens_of(paths: list[Path]) -> dict[str, int]:
    scanner = Scanner(paths, ScanOptions(workers=0))
    counts = {r.custom_id: r.tokens for r in scanner.requests()}
    scanner.commit_counts()
    return counts


def test_cache_hit_miss_and_never_another_requests_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = count_estimates(monkeypatch)
    source = tmp_path / "in.jsonl"
    source.write_bytes(chat("a", "short") + b"\n" + chat("b", "a much longer text " * 20) + b"\n")
    first = tokens_of([source])
    assert calls == ["a", "b"]
    assert tokens_of([source]) == first and calls == ["a", "b"]  # both hits
    # Same texts under swapped ids, and one edited body: every one is a new request.
    source.write_bytes(
        chat("b", "short")
        + b"\n"
        + chat("a", "a much longer text " * 20)
        + b"\n"
        + chat("c", "short!")
        + b"\n"
    )
    swapped = tokens_of([source])
    assert calls[2:] == ["b", "a", "c"]
    assert swapped == {"b": first["a"], "a": first["b"], "c": swapped["c"]}
    # A new estimator version (changed counting rules) misses everything.
    monkeypatch.setattr("gptbatch.inputs.scan.estimator_version", lambda: "another-version")
    assert tokens_of([source]) == swapped and calls[5:] == ["b", "a", "c"]


def test_cache_is_not_written_when_the_command_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("GPTBATCH_CACHE_DIR", str(cache))
    source = tmp_path / "in.jsonl"
    source.write_bytes(chat("a") + b"\n" + b"{not json\n")
    assert main(["tokens", str(source)]) == 2
    assert main(["split", "1000", str(source), "--out-dir", str(tmp_path / "o")]) == 2
    assert not (cache / "tokens.sqlite").exists()
    source.write_bytes(chat("a") + b"\n")
    assert main(["tokens", str(source)]) == 0
    assert (cache / "tokens.sqlite").exists()


def test_a_corrupt_cache_is_ignored_then_rebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("GPTBATCH_CACHE_DIR", str(cache))
    (cache / "tokens.sqlite").write_bytes(b"this is not a database" * 100)
    source = tmp_path / "in.jsonl"
    source.write_bytes(chat("a") + b"\n")
    assert main(["tokens", str(source)]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and captured.err == ""
    calls = count_estimates(monkeypatch)
    assert main(["tokens", str(source)]) == 0 and calls == []  # rebuilt, now a hit


def test_cache_is_bounded_and_can_be_turned_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3

    cache = tmp_path / "cache"
    monkeypatch.setenv("GPTBATCH_CACHE_DIR", str(cache))
    monkeypatch.setenv("GPTBATCH_CACHE_MAX_ENTRIES", "5")
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"\n".join(chat(f"r{i}", f"t{i}") for i in range(12)) + b"\n")
    assert main(["tokens", str(source)]) == 0
    with sqlite3.connect(cache / "tokens.sqlite") as conn:
        assert conn.execute("SELECT count(*) FROM counts").fetchone()[0] == 5
    monkeypatch.setenv("GPTBATCH_CACHE_DIR", "")
    calls = count_estimates(monkeypatch)
    assert main(["tokens", str(source)]) == 0 and len(calls) == 12


def scan_all(paths: list[Path]) -> Iterator[Any]:
    yield from Scanner(paths, ScanOptions(workers=0, use_cache=False)).requests()


def test_plan_extra_facts_match_the_request(tmp_path: Path) -> None:
    from gptbatch.commands.plan import output_limit, upload_facts

    source = tmp_path / "in.jsonl"
    source.write_bytes(chat("a") + b"\n")
    (request,) = read_requests([source])
    assert upload_facts(request) == (
        len(request.canonical_line()) + 1,
        output_limit(request.url, request.body),
    )
    assert [r.key for r in scan_all([source])] == [request.key]


def test_a_pipe_is_read_by_tokens_and_refused_by_split(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import os
    import threading

    fifo = tmp_path / "requests.pipe"

    def feed() -> None:
        with fifo.open("wb") as f:
            f.write(chat("p1") + b"\n" + chat("p2") + b"\n")

    for command in (["tokens"], ["split", "1000"]):
        os.mkfifo(fifo)
        writer = threading.Thread(target=feed)
        writer.start()
        code = main(
            [*command, str(fifo), *(["--out-dir", str(tmp_path / "o")] * (len(command) > 1))]
        )
        writer.join()
        fifo.unlink()
        out, err = capsys.readouterr()
        if command == ["tokens"]:
            assert code == 0 and "2 requests" in out
        else:
            assert code == 2 and "is not a regular file" in err
            assert not any((tmp_path / "o").iterdir())


@pytest.mark.parametrize(("workers", "chunk"), [("1", ""), ("2", "2000")])
def test_plan_prints_what_the_old_code_printed(
    mixed: list[Path],
    workers: str,
    chunk: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("GPTBATCH_WORKERS", workers)
    monkeypatch.setenv("GPTBATCH_CHUNK_BYTES", chunk)
    config = mixed[0].parent / "batch.yaml"
    config.write_text(
        "version: 1\ninputs:\n"
        + "".join(f"  - {p.name}\n" for p in mixed)
        + "output_dir: out\nlimits:\n  enqueued_tokens:\n    gpt-4o-mini: 300000\n"
        + "    gpt-4o: 80000\n"
    )
    transcript = []
    for args in (["plan", str(config), "--json"], ["plan", str(config)]):
        code = main(args)
        done = capsys.readouterr()
        text = (done.out + done.err).replace(f"{config.parent}/", "{dir}/")
        transcript.append(f"$ {' '.join(args[:1] + args[2:])} -> exit {code}\n{text}")
    expected = DATA / "plan_expected.txt"
    if os.environ.get("GPTBATCH_REGEN_EXPECTED") == "1" and workers == "1":  # by hand only
        expected.write_text("".join(transcript))
    assert "".join(transcript) == expected.read_text()


@pytest.mark.parametrize("dup", [False, True])
def test_custom_ids_whose_hashes_collide_are_told_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dup: bool
) -> None:
    monkeypatch.setattr("gptbatch.inputs.seen_ids._slot_hash", lambda custom_id: 12345)
    paths = write_mixed_corpus(tmp_path, requests_per_file=15)
    if dup:
        with paths[2].open("ab") as f:
            f.write(paths[0].read_bytes().splitlines()[3] + b"\n")
    expected = reference(paths)
    assert (expected[1] is not None) == dup
    assert scanned(paths, ScanOptions(workers=0, chunk_bytes=700, use_cache=False)) == expected


def die(chunk: Any) -> None:
    import os

    os._exit(3)  # a worker killed mid-chunk (the OOM killer, kill -9)


@pytest.mark.timeout(60)
def test_a_dead_worker_is_an_error_not_a_hang(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gptbatch.errors import GptbatchError
    from gptbatch.inputs import scan

    source = tmp_path / "in.jsonl"
    source.write_bytes(b"\n".join(chat(f"r{i}") for i in range(50)) + b"\n")
    monkeypatch.setattr(scan, "_read_in_worker", die)
    with pytest.raises(GptbatchError, match="worker process reading the inputs died"):
        list(Scanner([source], ScanOptions(workers=2, chunk_bytes=300, use_cache=False)).requests())


def cached_rows(cache: Path) -> int:
    import sqlite3

    if not (cache / "tokens.sqlite").exists():
        return 0
    with sqlite3.connect(cache / "tokens.sqlite") as conn:
        return int(conn.execute("SELECT count(*) FROM counts").fetchone()[0])


@pytest.mark.parametrize("corrupt", [False, True])
@pytest.mark.parametrize("streamed", [False, True])
def test_counts_written_ahead_are_kept_only_on_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, corrupt: bool, streamed: bool
) -> None:
    """Counts written before the command ends (prepare; streamed while added, as split's
    read does) reach the cache only on commit."""
    from gptbatch.inputs import token_cache
    from gptbatch.inputs.token_cache import CachedCount, PendingCounts, TokenCache

    monkeypatch.setattr(token_cache, "_STREAM_BATCH", 7)  # many batches, one left over
    cache = tmp_path / "cache"
    cache.mkdir()
    if corrupt:  # the background write fails; commit's own path rebuilds the file
        (cache / "tokens.sqlite").write_bytes(b"this is not a database" * 100)
    for keep in (False, True):
        pending = PendingCounts(cache / "tokens.sqlite", "v1")
        if streamed:
            pending.stream()
        for i in range(50):
            pending.add(f"key-{i}", CachedCount(i, "o200k_base", ("a caveat",) if i % 2 else ()))
        if streamed and not corrupt:  # streamed, not yet committed: nobody else sees them
            assert cached_rows(cache) == 0
        pending.prepare()
        with pytest.raises(RuntimeError):
            pending.add("late", CachedCount(1, "o200k_base"))
        if keep:
            pending.commit()
            assert cached_rows(cache) == 50
        else:
            pending.discard()
            if not corrupt:  # (a corrupt file is left as it was)
                assert cached_rows(cache) == 0
    found = TokenCache(cache / "tokens.sqlite", "v1").lookup(["key-3", "key-48", "other"])
    assert found == {
        "key-3": CachedCount(3, "o200k_base", ("a caveat",)),
        "key-48": CachedCount(48, "o200k_base", ()),
    }


def test_counts_committed_behind_are_kept_and_nothing_undoes_them(tmp_path: Path) -> None:
    from gptbatch.inputs.token_cache import CachedCount, PendingCounts, TokenCache

    cache = tmp_path / "cache"
    cache.mkdir()
    pending = PendingCounts(cache / "tokens.sqlite", "v1")
    for i in range(2_000):
        pending.add(f"key-{i}", CachedCount(i, "o200k_base"))
    pending.commit_behind()
    writer = pending._writer
    assert writer is not None and not writer.daemon  # the interpreter waits for it at exit
    pending.discard()  # a later discard (or commit) neither undoes nor repeats the write
    pending.commit()
    writer.join()
    assert cached_rows(cache) == 2_000
    found = TokenCache(cache / "tokens.sqlite", "v1").lookup(["key-7", "key-1999"])
    assert found == {
        "key-7": CachedCount(7, "o200k_base"),
        "key-1999": CachedCount(1999, "o200k_base"),
    }


def test_a_streaming_writer_starts_at_its_first_batch_and_never_outlives_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No thread before a full batch (the scanner forks after its small first chunk), none
    at all for a warm run, and none left after commit or discard, with or without prepare."""
    from gptbatch.inputs import token_cache
    from gptbatch.inputs.token_cache import CachedCount, PendingCounts

    monkeypatch.setattr(token_cache, "_STREAM_BATCH", 7)
    pending = PendingCounts(tmp_path / "cache" / "tokens.sqlite", "v1")
    pending.stream()
    pending.prepare()
    pending.commit()
    assert not (tmp_path / "cache").exists()
    for end in ("commit", "discard"):
        pending = PendingCounts(tmp_path / "cache" / "tokens.sqlite", "v1")
        pending.stream()
        for i in range(6):
            pending.add(f"{end}-{i}", CachedCount(i, "o200k_base"))
        assert pending._writer is None
        for i in range(6, 10):
            pending.add(f"{end}-{i}", CachedCount(i, "o200k_base"))
        writer = pending._writer
        assert writer is not None and writer.is_alive()
        getattr(pending, end)()
        writer.join(timeout=5)
        assert not writer.is_alive()
    assert cached_rows(tmp_path / "cache") == 10  # the committed run's, all of them


def test_a_split_forks_its_workers_with_no_other_thread_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The counts' streaming writer starts after the fork (a fork copies no thread, and
    any lock a thread held stays held in the child), and the split remembers every count."""
    import threading

    from gptbatch.inputs import scan, token_cache

    monkeypatch.setattr(token_cache, "_STREAM_BATCH", 16)
    monkeypatch.setenv("GPTBATCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("GPTBATCH_WORKERS", "2")
    monkeypatch.setenv("GPTBATCH_CHUNK_BYTES", "4096")
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"\n".join(chat(f"r{i}", f"text number {i}") for i in range(600)) + b"\n")
    threads: list[set[int | None]] = []
    start_pool = scan._start_pool

    def watched(*args: Any) -> Any:
        threads.append({t.ident for t in threading.enumerate()})
        return start_pool(*args)

    monkeypatch.setattr(scan, "_start_pool", watched)
    # Threads the split found (another test's simulator in this process) are not its own:
    # at the fork, no thread runs that did not run before the split began.
    before = {t.ident for t in threading.enumerate()}
    assert main(["split", "100000", str(source), "--out-dir", str(tmp_path / "out")]) == 0
    assert len(threads) == 1 and threads[0] <= before
    assert cached_rows(tmp_path / "cache") == 600


def test_a_split_that_fails_while_copying_remembers_no_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("GPTBATCH_CACHE_DIR", str(cache))
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"\n".join(chat(f"r{i}", f"text number {i}") for i in range(40)) + b"\n")
    monkeypatch.setattr(split_module, "_copy_chunk", changing_copy(source, edit_line_7, 7))
    assert main(["split", "300", str(source), "--out-dir", str(tmp_path / "out")]) == 2
    assert cached_rows(cache) == 0
    monkeypatch.undo()
    monkeypatch.setenv("GPTBATCH_CACHE_DIR", str(cache))
    assert main(["split", "300", str(source), "--out-dir", str(tmp_path / "out")]) == 0
    assert cached_rows(cache) == 40


def test_a_gemini_key_used_twice_is_a_duplicate_as_read_requests_says(tmp_path: Path) -> None:
    """Gemini's lines name their request by `key`: a key used twice is reported by the
    scanner (in workers or not, any chunking) as read_requests reports it."""
    from gptbatch.inputs.gemini_lines import GENERATE_URL

    def gem(key: str) -> bytes:
        parts = [{"text": f"about {key}"}]
        return json.dumps({"key": key, "request": {"contents": [{"parts": parts}]}}).encode()

    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_bytes(b"\n".join([gem("k0"), gem("k1"), gem("k0"), gem("k2")]) + b"\n")
    b.write_bytes(b"\n".join([gem("k3"), gem("k1")]) + b"\n")
    kwargs: dict[str, Any] = {"model": "gemini-2.5-flash", "endpoint": GENERATE_URL}
    expected = reference([a, b], **kwargs)
    assert expected[1] is not None and "duplicate custom_id 'k0'" in expected[1]
    assert "duplicate custom_id 'k1'" in expected[1]
    for workers, chunk in ((0, None), (0, 40), (2, 60)):
        options = ScanOptions(workers=workers, chunk_bytes=chunk, use_cache=False, **kwargs)
        assert scanned([a, b], options) == expected
