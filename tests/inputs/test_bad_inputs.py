"""Bad input, end to end through the CLI: exit 2, a message that says where and what to do, and
not one byte written. Every case runs `validate`; cases whose config or input is bad also run
`build`, which must stop before it submits anything (the API address points at nothing).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gptbatch.cli import main
from gptbatch.inputs.tokens import estimate_request

CHAT = "/v1/chat/completions"
SECRET = "sk-proj-" + "Zq7" * 16  # a key pasted into the wrong field
NOWHERE = "http://127.0.0.1:9"  # nothing listens: an accidental API call fails loudly


def chat(custom_id: str = "a", **body: Any) -> dict[str, Any]:
    full = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}], **body}
    return {"custom_id": custom_id, "method": "POST", "url": CHAT, "body": full}


def req(url: str, custom_id: str = "a", **body: Any) -> dict[str, Any]:
    """A request to url whose body is a model and the given fields."""
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": {"model": "m", **body}}


def drop(obj: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k != key}


def jl(*lines: Any) -> bytes:
    """JSONL: objects are dumped, str and bytes lines are taken as they are."""
    out = b""
    for line in lines:
        raw = line if isinstance(line, bytes) else line.encode() if isinstance(line, str) else None
        out += (raw if raw is not None else json.dumps(line).encode()) + b"\n"
    return out


def alias_bomb() -> str:
    levels = ['  l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for n in range(1, 9):
        levels.append(f"  l{n}: &l{n} [{', '.join([f'*l{n - 1}'] * 9)}]")
    return "inputs: [in.jsonl]\nmetadata:\n" + "\n".join(levels) + "\n"


# Special files, as values of Case.files.
FIFO = ("fifo",)
DIRECTORY = ("dir",)


def symlink(target: str) -> tuple[str, str]:
    return ("symlink", target)


@dataclass(frozen=True)
class Case:
    """One bad project: its files, the message expected on stderr, whether build runs too."""

    name: str
    files: dict[str, Any]
    expect: str
    config: str | bytes = "inputs: [in.jsonl]\n"
    also: str = ""  # a second part of the message, where a path that varies sits between
    build: bool = True  # the config or an input is bad: build must refuse it too
    spec_ok: bool = False  # the config loads: the problem is found after that
    args: tuple[str, ...] = field(default=("batch.yaml",))


GOOD = jl(chat("ok"))
SHAPE_HINT = 'each line is {"custom_id": ..., "method": "POST", "url": ..., "body": {...}}'

CASES = [
    # --- request lines ---------------------------------------------------------------------
    Case(
        "more problems than are shown",
        {"in.jsonl": jl(*['{"custom_id": "b",'] * 70)},
        "in.jsonl:50: not valid JSON",
        also="... and 20 more problems not shown",
        spec_ok=True,
    ),
    Case(
        "malformed json",
        {"in.jsonl": jl(chat("ok"), '{"custom_id": "b",')},
        "in.jsonl:2: not valid JSON: Expecting property name enclosed in double quotes at "
        f"column 19: {SHAPE_HINT}, one per line",
        spec_ok=True,
    ),
    Case(
        "not utf-8",
        {"in.jsonl": GOOD + b'{"custom_id": "caf\xe9"}\n'},
        "in.jsonl:2: invalid UTF-8 at byte 19 of the line: save the file as UTF-8",
        spec_ok=True,
    ),
    Case(
        "bom on a later line",
        {"in.jsonl": GOOD + b"\xef\xbb\xbf" + jl(chat("b"))},
        f"in.jsonl:2: not valid JSON: Expecting value at column 1: {SHAPE_HINT}",
        spec_ok=True,
    ),
    Case(
        "not an object",
        {"in.jsonl": jl("[1, 2]")},
        f"in.jsonl:1: not a JSON object (got list): {SHAPE_HINT}",
        spec_ok=True,
    ),
    Case(
        "missing custom_id",
        {"in.jsonl": jl(drop(chat(), "custom_id"))},
        "in.jsonl:1: missing custom_id: give every request a unique string id",
        spec_ok=True,
    ),
    Case(
        "custom_id a number",
        {"in.jsonl": jl({**chat(), "custom_id": 7})},
        'in.jsonl:1: custom_id must be a string, got 7: quote it, e.g. "custom_id": "request-1"',
        spec_ok=True,
    ),
    Case(
        "custom_id empty",
        {"in.jsonl": jl(chat(""))},
        "in.jsonl:1: custom_id is empty: give every request a unique string id",
        spec_ok=True,
    ),
    Case(
        "missing method",
        {"in.jsonl": jl(drop(chat(), "method"))},
        'in.jsonl:1: missing method: add "method": "POST"',
        spec_ok=True,
    ),
    Case(
        "wrong method",
        {"in.jsonl": jl({**chat(), "method": "GET"})},
        'in.jsonl:1: method \'GET\' is not supported: the Batch API only takes "method": "POST"',
        spec_ok=True,
    ),
    Case(
        "method a number",
        {"in.jsonl": jl({**chat(), "method": 1})},
        'in.jsonl:1: method 1 is not supported: the Batch API only takes "method": "POST"',
        spec_ok=True,
    ),
    Case(
        "missing url",
        {"in.jsonl": jl(drop(chat(), "url"))},
        "in.jsonl:1: missing url: add a url (one of /v1/chat/completions",
        also="or set endpoint in batch.yaml",
        spec_ok=True,
    ),
    Case(
        "unknown url",
        {"in.jsonl": jl({**chat(), "url": "/v1/audio/speech"})},
        "in.jsonl:1: url '/v1/audio/speech' is not a Batch API endpoint: use one of",
        spec_ok=True,
    ),
    Case(
        "url a list",
        {"in.jsonl": jl({**chat(), "url": [CHAT]})},
        'in.jsonl:1: url ["/v1/chat/completions"] is not a Batch API endpoint: use one of',
        spec_ok=True,
    ),
    Case(
        "two endpoints in one file",
        {"in.jsonl": jl(chat("a"), req("/v1/embeddings", "b", input="x"))},
        "in.jsonl:2: url '/v1/embeddings' differs from '/v1/chat/completions' set at",
        also="in.jsonl:1: the Batch API takes one endpoint per input file; move requests for "
        "other endpoints to their own file",
        spec_ok=True,
    ),
    Case(
        "missing body",
        {"in.jsonl": jl(drop(chat(), "body"))},
        "in.jsonl:1: missing body: add a body object with the request",
        spec_ok=True,
    ),
    Case(
        "body a string",
        {"in.jsonl": jl({**chat(), "body": "Hi"})},
        "in.jsonl:1: body must be a JSON object, got 'Hi': put the request parameters in an object",
        spec_ok=True,
    ),
    Case(
        "stream true",
        {"in.jsonl": jl(chat(stream=True))},
        "in.jsonl:1: body.stream is true: the Batch API does not stream; remove stream",
        spec_ok=True,
    ),
    Case(
        "unknown top-level key",
        {"in.jsonl": jl({**chat(), "temperature": 0})},
        "in.jsonl:1: unknown key 'temperature': the Batch API accepts only custom_id, method, "
        "url and body; request parameters go inside body",
        spec_ok=True,
    ),
    Case(
        "model missing",
        {"in.jsonl": jl({**chat(), "body": {"messages": [{"role": "user", "content": "x"}]}})},
        "in.jsonl:1: body.model is missing: add a model to body or set model in batch.yaml",
        spec_ok=True,
    ),
    Case(
        "model differs from the config",
        {"in.jsonl": GOOD},
        "in.jsonl:1: body.model 'gpt-4o-mini' differs from the config's model 'gpt-4o': remove",
        config="inputs: [in.jsonl]\nmodel: gpt-4o\n",
        spec_ok=True,
    ),
    Case(
        "duplicate custom_id in one file",
        {"in.jsonl": jl(chat("a"), chat("b"), chat("a"))},
        "in.jsonl:3: duplicate custom_id 'a' (first seen at ",
        also="in.jsonl:1): custom_ids must be unique across all inputs",
        spec_ok=True,
    ),
    Case(
        "duplicate custom_id across files",
        {"a.jsonl": jl(chat("x")), "b.jsonl": jl(chat("y"), chat("x"))},
        "b.jsonl:2: duplicate custom_id 'x' (first seen at ",
        also="a.jsonl:1): custom_ids must be unique across all inputs",
        config="inputs: [a.jsonl, b.jsonl]\n",
        spec_ok=True,
    ),
    Case(
        "more duplicates across files than are shown",
        {
            "a.jsonl": jl(*(chat(f"c{i}") for i in range(60))),
            "b.jsonl": jl(*(chat(f"c{i}") for i in range(60))),
        },
        "b.jsonl:1: duplicate custom_id 'c0' (first seen at ",
        also="... and 10 more problems not shown",
        config="inputs: [a.jsonl, b.jsonl]\n",
        spec_ok=True,
    ),
    Case(
        "number out of range",
        {"in.jsonl": GOOD + jl(json.dumps(chat("b")).replace('"Hi"', "1e400"))},
        "in.jsonl:2: number out of range (e.g. 1e400): JSON numbers must be finite",
        spec_ok=True,
    ),
    Case(
        "NaN in a request",
        {"in.jsonl": jl(json.dumps(chat()).replace('"Hi"', "NaN"))},
        "in.jsonl:1: not valid JSON: NaN is not allowed in JSON: use null or a finite number",
        spec_ok=True,
    ),
    Case(
        "unpaired surrogate",
        {"in.jsonl": jl(json.dumps(chat()).replace('"Hi"', '"\\ud800"'))},
        "in.jsonl:1: contains an unpaired surrogate escape (e.g. \\ud800): the API cannot encode",
        spec_ok=True,
    ),
    # --- body shapes the API rejects -------------------------------------------------------
    Case(
        "chat without messages",
        {"in.jsonl": jl(req(CHAT, prompt="Hi"))},
        'in.jsonl:1: body.messages is missing: add the conversation, e.g. "messages": [',
        spec_ok=True,
    ),
    Case(
        "chat with empty messages",
        {"in.jsonl": jl(req(CHAT, messages=[]))},
        "in.jsonl:1: body.messages is empty: the API needs at least one message",
        spec_ok=True,
    ),
    Case(
        "chat message without role",
        {"in.jsonl": jl(req(CHAT, messages=[{"content": "Hi"}]))},
        'in.jsonl:1: body.messages[0].role is missing: give each message a role, e.g. "role"',
        spec_ok=True,
    ),
    Case(
        "responses input an object",
        {"in.jsonl": jl(req("/v1/responses", input={"text": "Hi"}))},
        "in.jsonl:1: body.input must be a string or a list, got an object: give the prompt",
        spec_ok=True,
    ),
    Case(
        "embeddings input of objects",
        {"in.jsonl": jl(req("/v1/embeddings", input=[{"text": "Hi"}]))},
        "in.jsonl:1: body.input is a list of the wrong form: give a string, a list of strings",
        spec_ok=True,
    ),
    Case(
        "too many embedding inputs",
        {"in.jsonl": jl(req("/v1/embeddings", input=["x"] * 2049))},
        "in.jsonl:1: body.input has 2,049 items, over the API's 2048 per request: split it",
        spec_ok=True,
    ),
    Case(
        "completions without prompt",
        {"in.jsonl": jl(req("/v1/completions", input="Hi"))},
        'in.jsonl:1: body.prompt is missing: add the text to complete, e.g. "prompt": "..."',
        spec_ok=True,
    ),
    Case(
        "moderations input a number",
        {"in.jsonl": jl(req("/v1/moderations", input=5))},
        "in.jsonl:1: body.input is a number of the wrong form: give a string, a list of strings",
        spec_ok=True,
    ),
    # --- caught by validate; build records them as failed for good instead -----------------
    Case(
        "line over the byte cap",
        {
            "in.jsonl": jl(
                chat("ok"), chat("big", messages=[{"role": "user", "content": "x" * 600}])
            )
        },
        "in.jsonl:2: line is ",
        also=" bytes, over the 500-byte per-batch cap: no batch file can hold it; shrink the "
        "request",
        config="inputs: [in.jsonl]\nlimits: {max_bytes_per_batch: 500}\n",
        build=False,
    ),
    Case(
        "request over the token limit",
        {
            "in.jsonl": jl(
                chat("ok"), chat("big", messages=[{"role": "user", "content": "a " * 50}])
            )
        },
        "in.jsonl:2: request 'big': ~",
        also=" tokens, over the enqueued-token limit of 20 for gpt-4o-mini: it can never be "
        "queued; split it into smaller requests or raise limits.enqueued_tokens",
        config="inputs: [in.jsonl]\nlimits: {enqueued_tokens: {gpt-4o-mini: 20}}\n",
        build=False,
    ),
    # --- the inputs list -------------------------------------------------------------------
    Case(
        "missing file",
        {"in.jsonl": GOOD},
        "batch.yaml:1: inputs[1]: no such file 'gone.jsonl': paths are relative to the config's",
        config="inputs: [in.jsonl, gone.jsonl]\n",
    ),
    Case(
        "glob matching nothing",
        {"in.jsonl": GOOD},
        "batch.yaml:1: inputs[1]: 'data/*.jsonl' matches no files: globs are relative to the",
        config="inputs: [in.jsonl, 'data/*.jsonl']\n",
    ),
    Case(
        "glob matching only results",
        {"out/in.jsonl": GOOD, "out-simulated/in.jsonl": GOOD},
        "batch.yaml:1: inputs[0]: '**/*.jsonl' matches no files outside output_dir out/ and "
        "out-simulated/ (build --simulate's output), which hold results and build state, "
        "not inputs: globs are relative to the config's directory",
        config="inputs: ['**/*.jsonl']\n",
    ),
    Case(
        "literal input inside output_dir",
        {"out/in.jsonl": GOOD},
        "batch.yaml:1: inputs[0]: 'out/in.jsonl' is under output_dir out/, which holds results "
        "and build state, not inputs: move the input elsewhere",
        config="inputs: [out/in.jsonl]\n",
    ),
    Case(
        "output_dir is the inputs' directory",
        {"in.jsonl": GOOD},
        "batch.yaml:2: inputs[0]: 'in.jsonl' is under output_dir ./, which holds results",
        config="output_dir: .\ninputs: [in.jsonl]\n",
    ),
    Case(
        "two inputs with the same name",
        {"a/x.jsonl": jl(chat("a")), "b/x.jsonl": jl(chat("b"))},
        "b/x.jsonl would write the same output x.jsonl: rename one of them",
        config="inputs: [a/x.jsonl, b/x.jsonl]\n",
        spec_ok=True,
    ),
    Case(
        "an input named like another's errors file",
        {"x.jsonl": jl(chat("a")), "x.errors.jsonl": jl(chat("b"))},
        "x.errors.jsonl would both write ",
        also="out/x.errors.jsonl: rename one of them",
        config="inputs: [x.jsonl, x.errors.jsonl]\n",
        spec_ok=True,
    ),
    Case(
        "a directory as input",
        {"data": DIRECTORY},
        "batch.yaml:1: inputs[0]: 'data' is a directory: use a glob such as data/*.jsonl",
        config="inputs: [data]\n",
    ),
    Case(
        "a symlink loop",
        {"a.jsonl": symlink("b.jsonl"), "b.jsonl": symlink("a.jsonl")},
        "batch.yaml:1: inputs[0]: 'a.jsonl' is a symlink loop: point the symlink at a real file",
        config="inputs: [a.jsonl]\n",
    ),
    Case(
        "a dangling symlink matched by a glob",
        {"in.jsonl": GOOD, "old.jsonl": symlink("gone.jsonl")},
        "batch.yaml:1: inputs[0]: '*.jsonl' matches old.jsonl, which is a symlink to a missing "
        "file: fix or remove the symlink",
        config="inputs: ['*.jsonl']\n",
    ),
    Case(
        "a FIFO",
        {"pipe.jsonl": FIFO},
        "batch.yaml:1: inputs[0]: 'pipe.jsonl' is not a regular file (a FIFO): inputs are JSONL "
        "files",
        config="inputs: [pipe.jsonl]\n",
    ),
    # --- the config file -------------------------------------------------------------------
    Case(
        "config file missing",
        {"in.jsonl": GOOD},
        "nope.yaml: config file not found: check the path",
        args=("nope.yaml",),
    ),
    Case(
        "config not utf-8",
        {"in.jsonl": GOOD},
        "batch.yaml: not UTF-8 (byte 25): save it as UTF-8",
        config=b"inputs: [in.jsonl]\n# caf\xe9\n",
    ),
    Case(
        "config empty", {"in.jsonl": GOOD}, "batch.yaml:1: the config is empty: it needs", config=""
    ),
    Case(
        "invalid yaml",
        {"in.jsonl": GOOD},
        "batch.yaml:3: YAML syntax error: expected ',' or '}', but got '<stream end>' (column 1): "
        "check indentation and quoting",
        config="inputs: [in.jsonl]\nlimits: {safety_margin: 0.1\n",
    ),
    Case(
        "python tag",
        {"in.jsonl": GOOD},
        "batch.yaml:2: YAML tag '!!python/object/apply:os.system' is not allowed: batch.yaml "
        "holds plain values",
        config="inputs: [in.jsonl]\nx: !!python/object/apply:os.system ['touch pwned']\n",
    ),
    Case(
        "alias bomb",
        {"in.jsonl": GOOD},
        "batch.yaml:12: YAML aliases expand the config to ",
        also="aliases may repeat at most 10,000 values; write the values out instead of nesting "
        "aliases",
        config=alias_bomb() + "  boom: [*l8, *l8, *l8, *l8, *l8, *l8, *l8, *l8, *l8]\n",
    ),
    Case(
        "recursive alias",
        {"in.jsonl": GOOD},
        "batch.yaml:1: YAML alias *i refers to a value that contains it (anchor &i at line 1): "
        "a config cannot be recursive",
        config="inputs: &i [in.jsonl, *i]\n",
    ),
    Case(
        "nesting too deep",
        {"in.jsonl": GOOD},
        "batch.yaml: nested too deeply: flatten the lists and mappings",
        config="inputs: [in.jsonl]\nmetadata: {a: " + "[" * 5000 + "]" * 5000 + "}\n",
    ),
    Case(
        "not a mapping",
        {"in.jsonl": GOOD},
        "batch.yaml:1: the config must be a mapping of keys to values, not a list",
        config="- in.jsonl\n",
    ),
    Case(
        "duplicate yaml key",
        {"in.jsonl": GOOD},
        "batch.yaml:3: duplicate key 'retries' (first at line 2): YAML keeps only the last one",
        config="inputs: [in.jsonl]\nretries: 2\nretries: 3\n",
    ),
    Case(
        "no inputs key",
        {"in.jsonl": GOOD},
        "batch.yaml:1: missing required key 'inputs': a list of JSONL request files",
        config="output_dir: out\n",
    ),
    Case(
        "NaN safety margin",
        {"in.jsonl": GOOD},
        "batch.yaml:3: limits.safety_margin: .nan is not a finite number: use a finite number",
        config="inputs: [in.jsonl]\nlimits:\n  safety_margin: .nan\n",
    ),
    Case(
        "infinite polling",
        {"in.jsonl": GOOD},
        "batch.yaml:2: polling.initial_seconds: .inf is not a finite number: use a finite number",
        config="inputs: [in.jsonl]\npolling: {initial_seconds: .inf}\n",
    ),
    Case(
        "NaN spend cap",
        {"in.jsonl": GOOD},
        "batch.yaml:2: limits.max_cost: .nan is not a finite number: use a finite number",
        config="inputs: [in.jsonl]\nlimits: {max_cost: .nan}\n",
    ),
    Case(
        "unknown key",
        {"in.jsonl": GOOD},
        "batch.yaml:3: limits: unknown key 'safety_margn' (did you mean 'safety_margin'?): "
        "allowed keys under limits:",
        config="inputs: [in.jsonl]\nlimits:\n  safety_margn: 0.2\n",
    ),
    Case(
        "wrong type",
        {"in.jsonl": GOOD},
        "batch.yaml:2: retries: 'many' is a string, expected an integer: how many times",
        config="inputs: [in.jsonl]\nretries: many\n",
    ),
    Case(
        "out of range",
        {"in.jsonl": GOOD},
        "batch.yaml:2: limits.safety_margin: 1.5 is greater than the maximum of 0.9: a fraction",
        config="inputs: [in.jsonl]\nlimits: {safety_margin: 1.5}\n",
    ),
    Case(
        "unknown endpoint",
        {"in.jsonl": GOOD},
        "batch.yaml:2: endpoint: '/v1/images' is not allowed: the endpoint for every request",
        config="inputs: [in.jsonl]\nendpoint: /v1/images\n",
    ),
    Case(
        "polling starts above its maximum",
        {"in.jsonl": GOOD},
        "batch.yaml:2: polling.initial_seconds (600) is greater than polling.max_seconds (300)",
        config="inputs: [in.jsonl]\npolling: {initial_seconds: 600}\n",
    ),
    Case(
        "api key in api_key_env",
        {"in.jsonl": GOOD},
        "batch.yaml:2: api.api_key_env: 'sk-...7Zq7' looks like an API key: api_key_env names an "
        "environment variable, not the key itself: put the key in OPENAI_API_KEY or .env",
        config=f"inputs: [in.jsonl]\napi: {{api_key_env: {SECRET}}}\n",
    ),
    Case(
        "api key as an input",
        {"in.jsonl": GOOD},
        "batch.yaml:1: inputs[1]: no such file 'sk-...7Zq7': paths are relative to the config's",
        config=f"inputs: [in.jsonl, {SECRET}]\n",
    ),
    Case(
        "reserved metadata key",
        {"in.jsonl": GOOD},
        "batch.yaml:3: metadata: key 'gptbatch_shard' is reserved: keys starting with gptbatch_ "
        "are gptbatch's own; rename it",
        config="inputs: [in.jsonl]\nmetadata:\n  gptbatch_shard: x\n",
    ),
]

BUILD_CASES = [c for c in CASES if c.build]


def ids(cases: list[Case]) -> list[str]:
    return [c.name for c in cases]


def snapshot(root: Path) -> dict[str, Any]:
    """Every path under root: its bytes, link target or kind. Equal: nothing was written."""
    found: dict[str, Any] = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory, name)
            key = str(path.relative_to(root))
            if path.is_symlink():
                found[key] = ("symlink", os.readlink(path))
            elif path.is_dir():
                found[key] = "dir"
            elif path.is_file():
                found[key] = path.read_bytes()
            else:
                found[key] = "special"
    return found


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A key that is only a placeholder, an API address where nothing listens, no state dir."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("OPENAI_BASE_URL", NOWHERE)
    monkeypatch.delenv("GPTBATCH_STATE_DIR", raising=False)
    saved = dict(os.environ)
    yield
    for name in set(os.environ) - set(saved):  # load_spec loads .env files into os.environ
        del os.environ[name]


def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: Case) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    config = case.config.encode() if isinstance(case.config, str) else case.config
    (root / "batch.yaml").write_bytes(config)
    for name, content in case.files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if content == FIFO:
            os.mkfifo(path)
        elif content == DIRECTORY:
            path.mkdir()
        elif isinstance(content, tuple):
            path.symlink_to(content[1])
        else:
            path.write_bytes(content)
    monkeypatch.chdir(root)
    return root


def run(
    command: str, case: Case, root: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str, bool]:
    """Run `gptbatch COMMAND` on the case: exit code, stdout, stderr, and was nothing written."""
    before = snapshot(root)
    code = main([command, *case.args])
    captured = capsys.readouterr()
    assert SECRET not in captured.out + captured.err
    assert SECRET[8:20] not in captured.out + captured.err
    assert not (root / "pwned").exists()
    return code, captured.out, captured.err, snapshot(root) == before


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_validate_refuses_says_where_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], case: Case
) -> None:
    root = project(tmp_path, monkeypatch, case)
    code, out, err, unchanged = run("validate", case, root, capsys)
    assert (code, out) == (2, "")
    assert case.expect in err and case.also in err, err
    assert err.splitlines()[-1].endswith("found; nothing was written")
    assert unchanged


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", BUILD_CASES, ids=ids(BUILD_CASES))
def test_build_refuses_before_submitting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], case: Case
) -> None:
    root = project(tmp_path, monkeypatch, case)
    code, _, err, _ = run("build", case, root, capsys)
    assert code == 2, err
    assert case.expect in err and case.also in err, err


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "case",
    BUILD_CASES,
    ids=ids(BUILD_CASES),
)
def test_build_refusing_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], case: Case
) -> None:
    root = project(tmp_path, monkeypatch, case)
    code, _, _, unchanged = run("build", case, root, capsys)
    assert code == 2
    assert unchanged


# --- input that looks odd but is fine: accepted, as the API accepts it --------------------------

ACCEPTED = [
    Case(
        "bom on line 1",  # OpenAI accepts a BOM (Azure does not); gptbatch keeps accepting it
        {"in.jsonl": b"\xef\xbb\xbf" + jl(chat("a"), chat("b"))},
        "ok: 2 requests in 1 file (gpt-4o-mini /v1/chat/completions: 2)",
    ),
    Case(
        "crlf lines and blank lines",
        {"in.jsonl": jl(chat("a")).replace(b"\n", b"\r\n") + b"\r\n  \n" + jl(chat("b"))},
        "ok: 2 requests in 1 file (gpt-4o-mini /v1/chat/completions: 2)",
    ),
    Case(
        "empty file",  # nothing to build yet is not a mistake: a generated input may be empty
        {"in.jsonl": b""},
        "ok: 0 requests in 1 file (no requests)",
    ),
    Case(
        "literal name with glob characters",
        {"in/a[1].jsonl": jl(chat("a")), "in/a1.jsonl": b"not json\n"},
        "ok: 1 request in 1 file (gpt-4o-mini /v1/chat/completions: 1)",
        config="inputs: ['in/a[1].jsonl']\n",
    ),
    Case(
        "anchors and aliases",
        {"in.jsonl": GOOD},
        "ok: 1 request in 1 file (gpt-4o-mini /v1/chat/completions: 1)",
        config="inputs: &files [in.jsonl]\nlimits:\n  enqueued_tokens: &t {gpt-4o-mini: 9000}\n"
        "  enqueued_requests: *t\n",
    ),
    Case(
        "a request just under the token limit",
        {"in.jsonl": GOOD},
        "ok: 1 request in 1 file (gpt-4o-mini /v1/chat/completions: 1)",
        config="inputs: [in.jsonl]\nlimits:\n  enqueued_tokens: "
        f"{estimate_request(CHAT, chat('ok')['body']).tokens}\n",
    ),
]


@pytest.mark.parametrize("case", ACCEPTED, ids=ids(ACCEPTED))
def test_accepted_input_validates_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], case: Case
) -> None:
    root = project(tmp_path, monkeypatch, case)
    code, out, err, unchanged = run("validate", case, root, capsys)
    assert (code, out, err) == (0, case.expect + "\n", "")
    assert unchanged


def test_a_literal_name_with_glob_characters_is_what_build_builds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    case = next(c for c in ACCEPTED if c.name == "literal name with glob characters")
    root = project(tmp_path, monkeypatch, case)
    assert main(["build", "--simulate", "batch.yaml"]) == 0
    capsys.readouterr()
    [result] = [json.loads(line) for line in (root / "out-simulated" / "a[1].jsonl").open()]
    assert result["custom_id"] == "a"
    assert not (root / "out-simulated" / "a1.jsonl").exists()
