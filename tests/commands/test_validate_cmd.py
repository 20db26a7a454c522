"""`gptbatch validate`: config and every input line checked offline; problems on stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gptbatch.cli import main

REPO = Path(__file__).resolve().parents[2]
CHAT = "/v1/chat/completions"
EMB = "/v1/embeddings"
DONE = "gptbatch: {n} problem{s} found; nothing was written"
HI = [{"role": "user", "content": "Hi"}]  # the smallest valid chat messages


@pytest.fixture(autouse=True)
def restore_environment() -> Iterator[None]:
    """load_spec loads .env files into os.environ; undo that after each test."""
    saved = dict(os.environ)
    yield
    for name in set(os.environ) - set(saved):
        del os.environ[name]
    os.environ.update(saved)


def chat(custom_id: str, **body: Any) -> dict[str, Any]:
    full = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}], **body}
    return {"custom_id": custom_id, "method": "POST", "url": CHAT, "body": full}


def emb(custom_id: str, items: Any = "text") -> dict[str, Any]:
    body = {"model": "text-embedding-3-small", "input": items}
    return {"custom_id": custom_id, "method": "POST", "url": EMB, "body": body}


def jl(*objs: Any) -> bytes:
    return b"".join(
        (
            o
            if isinstance(o, bytes)
            else o.encode()
            if isinstance(o, str)
            else json.dumps(o).encode()
        )
        + b"\n"
        for o in objs
    )


def listing(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and directory under root with its size and mtime: equal means nothing written."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            stat = path.lstat()
            out[str(path.relative_to(root))] = (stat.st_size, stat.st_mtime_ns)
    return out


def validate(root: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run `gptbatch validate ARGS` in root; assert it wrote nothing; return (rc, out, err)."""
    before = listing(root)
    code = main(["validate", *args])
    captured = capsys.readouterr()
    assert listing(root) == before
    return code, captured.out, captured.err


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


# --- the example ---------------------------------------------------------------------------------


def test_example_is_ok_and_counts_match_the_files(
    tmp_path: Path,
    example_config: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    counts: Counter[tuple[str, str]] = Counter()
    for path in sorted((tmp_path / "examples" / "inputs").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            request = json.loads(line)
            counts[(request["body"]["model"], request["url"])] += 1
    breakdown = ", ".join(f"{m} {u}: {n}" for (m, u), n in sorted(counts.items()))
    code, out, err = validate(tmp_path, capsys, "examples/batch.yaml")
    assert (code, err) == (0, "")
    assert out == f"ok: {sum(counts.values())} requests in 2 files ({breakdown})\n"
    assert breakdown == (
        "gpt-4o-mini /v1/chat/completions: 12, text-embedding-3-small /v1/embeddings: 8"
    )
    assert not (tmp_path / "examples" / "out").exists()


def test_default_config_is_batch_yaml_in_the_working_directory(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (work / "batch.yaml").write_text("inputs: ['*.jsonl']\nmodel: gpt-4o-mini\n")
    (work / "a.jsonl").write_bytes(jl(chat("1"), {**chat("2"), "body": {"messages": HI}}))
    (work / "b.jsonl").write_bytes(jl(chat("3")))
    code, out, err = validate(work, capsys)
    assert (code, out, err) == (
        0,
        "ok: 3 requests in 2 files (gpt-4o-mini /v1/chat/completions: 3)\n",
        "",
    )


def test_missing_default_config(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = validate(work, capsys)
    assert (code, out) == (2, "")
    assert err.splitlines()[0].startswith(f"batch.yaml: no batch.yaml in {work}: run where")
    assert err.splitlines()[-1] == DONE.format(n=1, s="")


# --- bad inputs: every problem is file:line: what: what to do, on stderr, exit 2 -----------------

BAD: list[tuple[str, str, dict[str, bytes], list[str]]] = [
    (
        "not json",
        "inputs: [in.jsonl]",
        {"in.jsonl": jl(chat("a"), '{"custom_id": "b", }')},
        [
            "in.jsonl:2: not valid JSON: Expecting property name enclosed in double quotes at "
            'column 20: each line is {"custom_id": ..., "method": "POST", "url": ..., '
            '"body": {...}}, one per line'
        ],
    ),
    (
        "not an object",
        "inputs: [in.jsonl]",
        {"in.jsonl": jl('"just a string"')},
        [
            'in.jsonl:1: not a JSON object (got str): each line is {"custom_id": ..., '
            '"method": "POST", "url": ..., "body": {...}}'
        ],
    ),
    (
        "missing custom_id",
        "inputs: [in.jsonl]",
        {
            "in.jsonl": jl(
                chat("a"), {"method": "POST", "url": CHAT, "body": {"model": "m", "messages": HI}}
            )
        },
        ["in.jsonl:2: missing custom_id: give every request a unique string id"],
    ),
    (
        "custom_id not a string",
        "inputs: [in.jsonl]",
        {"in.jsonl": jl({**chat("a"), "custom_id": ["a"]})},
        [
            'in.jsonl:1: custom_id must be a string, got ["a"]: '
            'quote it, e.g. "custom_id": "request-1"'
        ],
    ),
    (
        "method not POST",
        "inputs: [in.jsonl]",
        {"in.jsonl": jl({**chat("a"), "method": "post"})},
        ['in.jsonl:1: method \'post\' is not supported: the Batch API only takes "method": "POST"'],
    ),
    (
        "unknown endpoint",
        "inputs: [in.jsonl]",
        {"in.jsonl": jl({**chat("a"), "url": "v1/chat/completions"})},
        [
            "in.jsonl:1: url 'v1/chat/completions' is not a Batch API endpoint: use one of "
            "/v1/chat/completions, /v1/responses, /v1/embeddings, /v1/completions, "
            "/v1/moderations, /v1/images/generations, /v1/images/edits, /v1/videos"
        ],
    ),
    (
        "two endpoints in one file",
        "inputs: [in.jsonl]",
        {"in.jsonl": jl(emb("a"), emb("b"), chat("c"), chat("d"))},
        [
            f"in.jsonl:{n}: url '/v1/chat/completions' differs from '/v1/embeddings' set at "
            "in.jsonl:1: the Batch API takes one endpoint per input file; move requests for "
            "other endpoints to their own file"
            for n in (3, 4)
        ],
    ),
    (
        "body missing",
        "inputs: [in.jsonl]",
        {"in.jsonl": jl({"custom_id": "a", "method": "POST", "url": CHAT})},
        ["in.jsonl:1: missing body: add a body object with the request"],
    ),
    (
        "model missing",
        "inputs: [in.jsonl]",
        {"in.jsonl": jl({**chat("a"), "body": {"messages": HI}})},
        ["in.jsonl:1: body.model is missing: add a model to body or set model in batch.yaml"],
    ),
    (
        "model differs from config",
        "inputs: [in.jsonl]\nmodel: gpt-4o",
        {"in.jsonl": jl(chat("a"))},
        [
            "in.jsonl:1: body.model 'gpt-4o-mini' differs from the config's model 'gpt-4o': "
            "remove the model from the request or change model in batch.yaml"
        ],
    ),
    (
        "url differs from config endpoint",
        "inputs: [in.jsonl]\nendpoint: /v1/embeddings",
        {"in.jsonl": jl(emb("a"), chat("b"))},
        [
            "in.jsonl:2: url '/v1/chat/completions' differs from the config's endpoint "
            "'/v1/embeddings': remove the url from the request or change endpoint in batch.yaml"
        ],
    ),
    (
        "stream",
        "inputs: [in.jsonl]",
        {"in.jsonl": jl(chat("a"), chat("b", stream=True))},
        ["in.jsonl:2: body.stream is true: the Batch API does not stream; remove stream"],
    ),
    (
        "duplicate custom_id across files",
        "inputs: [a.jsonl, b.jsonl]",
        {"a.jsonl": jl(chat("x"), chat("y")), "b.jsonl": jl(chat("z"), "", chat("x"))},
        [
            "b.jsonl:3: duplicate custom_id 'x' (first seen at a.jsonl:1): "
            "custom_ids must be unique across all inputs"
        ],
    ),
    (
        "invalid utf-8",
        "inputs: [in.jsonl]",
        {"in.jsonl": jl(chat("a")) + b'{"custom_id": "\xc3\x28"}\n'},
        ["in.jsonl:2: invalid UTF-8 at byte 16 of the line: save the file as UTF-8"],
    ),
    (
        "too many embedding inputs",
        "inputs: [in.jsonl]",
        {"in.jsonl": jl(emb("a", [f"t{i}" for i in range(3000)]))},
        [
            "in.jsonl:1: body.input has 3,000 items, over the API's 2048 per request: "
            "split it into requests of at most 2048 inputs"
        ],
    ),
    (
        "unknown top-level key",
        "inputs: [in.jsonl]",
        {"in.jsonl": jl({**chat("a"), "model": "gpt-4o-mini"})},
        [
            "in.jsonl:1: unknown key 'model': the Batch API accepts only custom_id, method, "
            "url and body; request parameters go inside body"
        ],
    ),
    (
        "line over the config's byte cap",
        "inputs: [in.jsonl]\nlimits: {max_bytes_per_batch: 2000}",
        {"in.jsonl": jl(chat("a"), chat("b", messages=[{"role": "user", "content": "x" * 3000}]))},
        [
            "in.jsonl:2: line is {n:,} bytes, over the 2,000-byte per-batch cap: "
            "no batch file can hold it; shrink the request"
        ],
    ),
    (
        "config schema error",
        "inputs: [in.jsonl]\nlimits:\n  safety_margin: 1.5",
        {"in.jsonl": jl(chat("a"))},
        [
            "batch.yaml:3: limits.safety_margin: 1.5 is greater than the maximum of 0.9: a "
            "fraction of the token limit kept free, between 0 and 0.9, because estimates can be "
            "low; default 0.1"
        ],
    ),
    (
        "glob matching nothing",
        "inputs:\n  - in.jsonl\n  - more/*.jsonl",
        {"in.jsonl": jl(chat("a"))},
        [
            "batch.yaml:3: inputs[1]: 'more/*.jsonl' matches no files: globs are relative to the "
            "config's directory, {root}"
        ],
    ),
]


@pytest.mark.parametrize(
    ("config", "files", "expected"), [c[1:] for c in BAD], ids=[c[0] for c in BAD]
)
def test_bad_input_is_reported_and_nothing_is_written(
    work: Path,
    capsys: pytest.CaptureFixture[str],
    config: str,
    files: dict[str, bytes],
    expected: list[str],
) -> None:
    (work / "batch.yaml").write_text(config + "\n")
    for name, data in files.items():
        (work / name).write_bytes(data)
    big = max((len(line) for data in files.values() for line in data.splitlines()), default=0)
    expected = [e.replace("{n:,}", f"{big:,}").replace("{root}", str(work)) for e in expected]
    code, out, err = validate(work, capsys, "batch.yaml")
    assert (code, out) == (2, "")
    n = len(expected)
    assert err.splitlines() == [*expected, DONE.format(n=n, s="s" if n > 1 else "")]


def test_max_problems_caps_the_list_but_counts_the_rest(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (work / "batch.yaml").write_text("inputs: [in.jsonl]\n")
    (work / "in.jsonl").write_bytes(jl(*["[]"] * 5))
    code, _, err = validate(work, capsys, "--max-problems", "2")
    assert code == 2
    lines = err.splitlines()
    assert [line.split(":")[:2] for line in lines[:2]] == [["in.jsonl", "1"], ["in.jsonl", "2"]]
    assert lines[2:] == ["... and 3 more problems not shown", DONE.format(n=5, s="s")]


def test_the_api_key_is_never_printed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = "sk-proj-" + "7" * 48
    monkeypatch.setenv("GPTBATCH_TEST_KEY", "x")
    monkeypatch.delenv("GPTBATCH_TEST_KEY")  # monkeypatch now removes what .env adds
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(f"GPTBATCH_TEST_KEY={secret}\n")
    (tmp_path / "in.jsonl").write_bytes(jl(chat("a")))
    (tmp_path / "batch.yaml").write_text(
        "inputs: [in.jsonl]\napi: {api_key_env: GPTBATCH_TEST_KEY}\n"
    )
    code, out, err = validate(tmp_path, capsys)
    assert code == 0 and secret not in out + err
    (tmp_path / "in.jsonl").write_bytes(jl(chat("a"), "{"))
    code, out, err = validate(tmp_path, capsys)
    assert code == 2 and secret not in out + err


def test_python_dash_m_exit_codes(tmp_path: Path, example_config: Path) -> None:
    (tmp_path / "in.jsonl").write_bytes(jl(chat("a"), chat("a")))
    (tmp_path / "batch.yaml").write_text("inputs: [in.jsonl]\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    ok = subprocess.run(
        [sys.executable, "-m", "gptbatch", "validate", str(example_config)],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60,
    )  # fmt: skip
    assert (ok.returncode, ok.stderr) == (0, "")
    assert ok.stdout.startswith("ok: 20 requests in 2 files")
    bad = subprocess.run(
        [sys.executable, "-m", "gptbatch", "validate"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.startswith("in.jsonl:2: duplicate custom_id 'a' (first seen at in.jsonl:1)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["batch.yaml", "examples", "in.jsonl"]


# --- what build would refuse, validate refuses too -----------------------------------------------


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (
            ["a/x.jsonl", "b/x.jsonl"],
            "inputs {root}/a/x.jsonl and {root}/b/x.jsonl would write the same output x.jsonl: "
            "rename one of them",
        ),
        (
            ["x.jsonl", "x.errors.jsonl"],
            "inputs {root}/x.jsonl and {root}/x.errors.jsonl would both write "
            "{root}/out/x.errors.jsonl: rename one of them",
        ),
    ],
    ids=["same name in two directories", "x and x.errors"],
)
def test_inputs_whose_results_collide_are_refused(
    work: Path, capsys: pytest.CaptureFixture[str], names: list[str], expected: str
) -> None:
    for index, name in enumerate(names):
        (work / name).parent.mkdir(exist_ok=True)
        (work / name).write_bytes(jl(chat(f"r{index}")))
    (work / "batch.yaml").write_text(f"inputs: {json.dumps(names)}\n")
    code, out, err = validate(work, capsys)
    assert (code, out) == (2, "")
    assert err.splitlines() == [expected.format(root=work), DONE.format(n=1, s="")]


def test_a_request_over_the_token_limit_is_reported_at_its_line(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gptbatch.inputs.tokens import estimate_request

    big_chat = chat("b", messages=[{"role": "user", "content": "word " * 200}])
    big_emb = emb("c", "word " * 200)
    chat_tokens, emb_tokens = (
        estimate_request(r["url"], r["body"]).tokens for r in (big_chat, big_emb)
    )
    (work / "a.jsonl").write_bytes(jl(chat("a"), big_chat, "{"))
    (work / "b.jsonl").write_bytes(jl(big_emb))
    (work / "batch.yaml").write_text(
        "inputs: [a.jsonl, b.jsonl]\nlimits:\n  enqueued_tokens: {gpt-4o-mini: 100, '*': 150}\n"
    )
    code, out, err = validate(work, capsys)
    assert (code, out) == (2, "")
    lines = err.splitlines()
    assert lines[0] == (
        f"a.jsonl:2: request 'b': ~{chat_tokens} tokens, over the enqueued-token limit of 100 for "
        "gpt-4o-mini: it can never be queued; split it into smaller requests or raise "
        "limits.enqueued_tokens"
    )
    assert lines[1].startswith("a.jsonl:3: not valid JSON")
    assert lines[2].startswith(
        f"b.jsonl:1: request 'c': ~{emb_tokens} tokens, over the enqueued-token limit of 150 for "
        "text-embedding-3-small"
    )
    assert lines[3:] == [DONE.format(n=3, s="s")]


def test_the_token_limit_check_respects_max_problems(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (work / "a.jsonl").write_bytes(jl(*(chat(f"r{i}") for i in range(5)), "[]"))
    (work / "batch.yaml").write_text("inputs: [a.jsonl]\nlimits: {enqueued_tokens: 5}\n")
    code, _, err = validate(work, capsys, "--max-problems", "2")
    assert code == 2
    lines = err.splitlines()
    assert [line.split(":")[:2] for line in lines[:2]] == [["a.jsonl", "1"], ["a.jsonl", "2"]]
    assert lines[2:] == ["... and 4 more problems not shown", DONE.format(n=6, s="s")]


def test_tokens_are_not_estimated_without_a_limit(
    work: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import gptbatch.inputs.tokens

    def refuse(*args: Any) -> None:
        raise AssertionError("estimated without a limit")

    monkeypatch.setattr(gptbatch.inputs.tokens, "estimate_request", refuse)
    (work / "a.jsonl").write_bytes(jl(chat("a")))
    (work / "batch.yaml").write_text("inputs: [a.jsonl]\nlimits: {enqueued_tokens: {o3: 5}}\n")
    assert validate(work, capsys)[0] == 0
