"""Tests for gptbatch.inputs.requests: streaming, validation messages, keys, raw line offsets."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from gptbatch.errors import InputError
from gptbatch.inputs.over_limit import over_limit
from gptbatch.inputs.requests import ENDPOINTS, Request, read_raw_line, read_requests

CHAT = "/v1/chat/completions"
EMB = "/v1/embeddings"
SHAPE = 'each line is {"custom_id": ..., "method": "POST", "url": ..., "body": {...}}'
ALL_ENDPOINTS = ", ".join(ENDPOINTS)
HI = [{"role": "user", "content": "Hi"}]  # the smallest valid chat messages


def chat(custom_id: str = "r1", **body: Any) -> dict[str, Any]:
    """A valid chat request; keyword arguments replace body fields."""
    full = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}], **body}
    return {"custom_id": custom_id, "method": "POST", "url": CHAT, "body": full}


def emb(custom_id: str = "e1", items: Any = "hello") -> dict[str, Any]:
    body = {"model": "text-embedding-3-small", "input": items}
    return {"custom_id": custom_id, "method": "POST", "url": EMB, "body": body}


def jl(*objs: Any) -> bytes:
    """JSONL bytes for objects (or raw str/bytes lines)."""
    out = []
    for obj in objs:
        if isinstance(obj, bytes):
            out.append(obj)
        elif isinstance(obj, str):
            out.append(obj.encode())
        else:
            out.append(json.dumps(obj).encode())
    return b"".join(line + b"\n" for line in out)


def problems(paths: list[str], **kwargs: Any) -> list[str]:
    """Read everything; return the rendered problems (empty if none)."""
    try:
        list(read_requests(paths, **kwargs))
    except InputError as exc:
        return [str(p) for p in exc.problems]
    return []


def expected_key(custom_id: str, method: str, url: str, body: dict[str, Any]) -> str:
    """The content key as the spec defines it, computed independently of gptbatch."""
    obj = {"custom_id": custom_id, "method": method, "url": url, "body": body}
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


# --- one bad line each: the exact message (file:line: what: what to do) --------------------------

BIG = json.dumps(chat("b", messages=[{"role": "user", "content": "x" * 5000}]))

BAD_LINES: list[tuple[str, bytes, dict[str, Any], list[str]]] = [
    (
        "not json",
        jl(chat("a"), '{"custom_id" "a"}'),
        {},
        [
            "in.jsonl:2: not valid JSON: Expecting ':' delimiter at column 14: "
            f"{SHAPE}, one per line"
        ],
    ),
    (
        "nan",
        jl('{"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {"x": NaN}}'),
        {},
        ["in.jsonl:1: not valid JSON: NaN is not allowed in JSON: use null or a finite number"],
    ),
    ("not an object", jl("[1, 2]"), {}, [f"in.jsonl:1: not a JSON object (got list): {SHAPE}"]),
    ("null line", jl("null"), {}, [f"in.jsonl:1: not a JSON object (got null): {SHAPE}"]),
    (
        "missing custom_id",
        jl({k: v for k, v in chat().items() if k != "custom_id"}),
        {},
        ["in.jsonl:1: missing custom_id: give every request a unique string id"],
    ),
    (
        "integer custom_id",
        jl({**chat(), "custom_id": 42}),
        {},
        ['in.jsonl:1: custom_id must be a string, got 42: quote it, e.g. "custom_id": "request-1"'],
    ),
    (
        "empty custom_id",
        jl(chat("")),
        {},
        ["in.jsonl:1: custom_id is empty: give every request a unique string id"],
    ),
    (
        "missing method",
        jl({k: v for k, v in chat().items() if k != "method"}),
        {},
        ['in.jsonl:1: missing method: add "method": "POST"'],
    ),
    (
        "GET method",
        jl({**chat(), "method": "GET"}),
        {},
        ['in.jsonl:1: method \'GET\' is not supported: the Batch API only takes "method": "POST"'],
    ),
    (
        "missing url",
        jl({k: v for k, v in chat().items() if k != "url"}),
        {},
        [
            f"in.jsonl:1: missing url: add a url (one of {ALL_ENDPOINTS}) "
            "or set endpoint in batch.yaml"
        ],
    ),
    (
        "unknown endpoint",
        jl({**chat(), "url": "/v1/audio/speech"}),
        {},
        [
            "in.jsonl:1: url '/v1/audio/speech' is not a Batch API endpoint: "
            f"use one of {ALL_ENDPOINTS}"
        ],
    ),
    (
        "mixed endpoints in one file",
        jl(chat("a"), chat("b"), emb("c")),
        {},
        [
            "in.jsonl:3: url '/v1/embeddings' differs from '/v1/chat/completions' set at "
            "in.jsonl:1: the Batch API takes one endpoint per input file; move requests for "
            "other endpoints to their own file"
        ],
    ),
    (
        "missing body",
        jl({k: v for k, v in chat().items() if k != "body"}),
        {},
        ["in.jsonl:1: missing body: add a body object with the request"],
    ),
    (
        "body not an object",
        jl({**chat(), "body": "hello"}),
        {},
        [
            "in.jsonl:1: body must be a JSON object, got 'hello': "
            "put the request parameters in an object"
        ],
    ),
    (
        "missing model",
        jl({**chat(), "body": {"messages": HI}}),
        {},
        ["in.jsonl:1: body.model is missing: add a model to body or set model in batch.yaml"],
    ),
    (
        "model not a string",
        jl(chat(model=4)),
        {},
        [
            "in.jsonl:1: body.model must be a non-empty string, got 4: "
            'name the model, e.g. "model": "gpt-4o-mini"'
        ],
    ),
    (
        "model differs from config",
        jl(chat(model="gpt-4o")),
        {"model": "gpt-4o-mini"},
        [
            "in.jsonl:1: body.model 'gpt-4o' differs from the config's model 'gpt-4o-mini': "
            "remove the model from the request or change model in batch.yaml"
        ],
    ),
    (
        "url differs from config endpoint",
        jl(chat()),
        {"endpoint": "/v1/responses"},
        [
            "in.jsonl:1: url '/v1/chat/completions' differs from the config's endpoint "
            "'/v1/responses': remove the url from the request or change endpoint in batch.yaml"
        ],
    ),
    (
        "stream true",
        jl(chat(stream=True)),
        {},
        ["in.jsonl:1: body.stream is true: the Batch API does not stream; remove stream"],
    ),
    (
        "duplicate custom_id in one file",
        jl(chat("a"), chat("b"), chat("a")),
        {},
        [
            "in.jsonl:3: duplicate custom_id 'a' (first seen at in.jsonl:1): "
            "custom_ids must be unique across all inputs"
        ],
    ),
    (
        "invalid utf-8",
        jl(b'{"custom_id": "a\xff"}'),
        {},
        ["in.jsonl:1: invalid UTF-8 at byte 17 of the line: save the file as UTF-8"],
    ),
    (
        "too many embedding inputs",
        jl(emb("e", ["x"] * 2049)),
        {},
        [
            "in.jsonl:1: body.input has 2,049 items, over the API's 2048 per request: "
            "split it into requests of at most 2048 inputs"
        ],
    ),
    (
        "empty embedding input",
        jl(emb("e", "")),
        {},
        ["in.jsonl:1: body.input is empty: the embeddings API rejects empty input"],
    ),
    (
        "unknown top-level key",
        jl({**chat(), "temperature": 0}),
        {},
        [
            "in.jsonl:1: unknown key 'temperature': the Batch API accepts only custom_id, "
            "method, url and body; request parameters go inside body"
        ],
    ),
    (
        "line over the byte cap",
        jl(chat("a"), BIG, chat("c")),
        {"max_line_bytes": 1000},
        [
            f"in.jsonl:2: line is {len(BIG):,} bytes, over the 1,000-byte per-batch cap: "
            "no batch file can hold it; shrink the request"
        ],
    ),
    (
        "unpaired surrogate",
        jl(
            '{"custom_id": "a", "method": "POST", "url": "/v1/moderations", '
            '"body": {"input": "\\ud800"}}'
        ),
        {},
        [
            "in.jsonl:1: contains an unpaired surrogate escape (e.g. \\ud800): the API cannot "
            "encode it as UTF-8; fix or remove the broken character"
        ],
    ),
]


@pytest.mark.parametrize(
    ("content", "kwargs", "expected"),
    [case[1:] for case in BAD_LINES],
    ids=[case[0] for case in BAD_LINES],
)
def test_bad_line_is_reported_with_file_line_and_hint(
    work: Path, content: bytes, kwargs: dict[str, Any], expected: list[str]
) -> None:
    (work / "in.jsonl").write_bytes(content)
    before = sorted(p.name for p in work.iterdir())
    assert problems(["in.jsonl"], **kwargs) == expected
    assert sorted(p.name for p in work.iterdir()) == before


def test_the_line_size_in_the_cap_message_is_the_raw_line_length(work: Path) -> None:
    line = json.dumps(chat("b", messages=[{"role": "user", "content": "x" * 5000}])).encode()
    (work / "in.jsonl").write_bytes(b"\r\n".join([line, line.replace(b'"b"', b'"c"'), b""]))
    assert problems(["in.jsonl"], max_line_bytes=1000) == [
        f"in.jsonl:{n}: line is {len(line):,} bytes, over the 1,000-byte per-batch cap: "
        "no batch file can hold it; shrink the request"
        for n in (1, 2)
    ]


def test_duplicate_custom_id_across_files_names_both_places(work: Path) -> None:
    (work / "a.jsonl").write_bytes(jl(chat("x"), chat("y"), chat("z")))
    (work / "b.jsonl").write_bytes(jl(chat("p"), "", chat("q"), chat("y")))
    assert problems(["a.jsonl", "b.jsonl"]) == [
        "b.jsonl:4: duplicate custom_id 'y' (first seen at a.jsonl:2): "
        "custom_ids must be unique across all inputs"
    ]


def test_missing_file_is_a_problem_not_a_crash(work: Path) -> None:
    (work / "a.jsonl").write_bytes(jl(chat("x")))
    assert problems(["a.jsonl", "nope.jsonl"]) == [
        "nope.jsonl: no such file: check the path (and the inputs in batch.yaml)"
    ]


def test_every_problem_of_a_line_is_reported(work: Path) -> None:
    (work / "in.jsonl").write_bytes(jl({"custom_id": 7, "method": "PUT", "body": []}))
    found = problems(["in.jsonl"])
    assert [p.split(":")[2].strip() for p in found] == [
        "custom_id must be a string, got 7",
        "method 'PUT' is not supported",
        "missing url",
        "body must be a JSON object, got []",
    ]


def test_problems_are_capped_but_counted(work: Path) -> None:
    (work / "in.jsonl").write_bytes(jl(*(["[]"] * 60)))
    with pytest.raises(InputError) as info:
        list(read_requests(["in.jsonl"], max_problems=5))
    assert [p.line for p in info.value.problems] == [1, 2, 3, 4, 5]
    assert info.value.truncated == 55
    assert str(info.value).endswith("... and 55 more problems not shown")


def test_valid_requests_stream_before_the_error_is_raised(work: Path) -> None:
    (work / "in.jsonl").write_bytes(jl(chat("a"), "oops", chat("b")))
    seen = []
    with pytest.raises(InputError):
        for request in read_requests(["in.jsonl"]):
            seen.append(request.custom_id)
    assert seen == ["a", "b"]


def test_moderations_needs_no_model(work: Path) -> None:
    line = {"custom_id": "m", "method": "POST", "url": "/v1/moderations", "body": {"input": "x"}}
    (work / "in.jsonl").write_bytes(jl(line))
    [request] = read_requests(["in.jsonl"])
    assert request.model is None
    assert request.key == expected_key("m", "POST", "/v1/moderations", {"input": "x"})


def test_unknown_config_endpoint_is_refused() -> None:
    with pytest.raises(ValueError, match="/v1/nope"):
        list(read_requests([], endpoint="/v1/nope"))


# --- config defaults -----------------------------------------------------------------------------


def test_config_model_and_endpoint_fill_missing_fields_before_the_key(work: Path) -> None:
    bare = {"custom_id": "a", "method": "POST", "body": {"messages": HI}}
    (work / "bare.jsonl").write_bytes(jl(bare))
    full = {**bare, "url": CHAT, "body": {"messages": HI, "model": "gpt-4o-mini"}}
    (work / "full.jsonl").write_bytes(jl(full))
    [filled] = read_requests(["bare.jsonl"], model="gpt-4o-mini", endpoint=CHAT)
    [given] = read_requests(["full.jsonl"])
    assert filled.url == CHAT and filled.model == "gpt-4o-mini"
    assert filled.key == given.key == expected_key("a", "POST", CHAT, full["body"])


def test_each_request_knows_the_size_of_the_line_it_uploads(work: Path) -> None:
    """The scanner's nbytes comes from size, never from serialising the request again."""
    bare = {"custom_id": "a", "method": "POST", "body": {"messages": HI}}
    wide = chat("b", messages=[{"role": "user", "content": "Héllo 東京 👩‍👩‍👧"}], n=1)
    (work / "in.jsonl").write_bytes(jl(bare, wide))
    (work / "emb.jsonl").write_bytes(jl(emb("c", ["x", "y"])))
    found = list(read_requests(["in.jsonl"], model="gpt-4o-mini", endpoint=CHAT))
    found += read_requests(["emb.jsonl"])
    assert [r.size for r in found] == [len(r.canonical_line()) for r in found]
    assert all(r.size > 0 for r in found)
    unknown = Request(**{**{f: getattr(found[0], f) for f in Request.__slots__}, "size": -1})
    assert unknown.canonical_size() == found[0].size


def test_the_uploaded_line_hashes_to_the_key_whatever_the_numbers(work: Path) -> None:
    """upload_line parses with orjson where it can: big integers, floats, BOM, escapes and
    config defaults still give the very line the key hashes."""
    from gptbatch.inputs.upload import upload_line

    M = json.dumps(HI).encode()
    lines = [
        b'\xef\xbb\xbf{"custom_id": "a", "method": "POST", "body": {"messages": ' + M + b"}}",
        jl(chat("b", seed=123456789012345678901234567890, temperature=1e-05)).strip(),
        jl(chat("c", n=-(2**63) - 1, top_p=0.1, stop=["\u00e9\ud83d\ude00"])).strip(),
        b'{"custom_id": "d", "method": "POST", "url": "/v1/chat/completions",'
        b' "body": {"model": "gpt-4o-mini", "messages": ' + M + b', "x": 1.0,'
        b' "y": 12345678901234567890}}',
    ]
    (work / "in.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    found = list(read_requests(["in.jsonl"], model="gpt-4o-mini", endpoint=CHAT))
    assert len(found) == len(lines)
    for raw, req in zip(lines, found, strict=True):
        line = upload_line(raw, "gpt-4o-mini", CHAT)
        assert line == req.canonical_line()
        assert hashlib.sha256(line).hexdigest() == req.key


def test_matching_config_model_and_endpoint_are_accepted(work: Path) -> None:
    (work / "in.jsonl").write_bytes(jl(chat("a"), chat("b")))
    found = list(read_requests(["in.jsonl"], model="gpt-4o-mini", endpoint=CHAT))
    assert [r.custom_id for r in found] == ["a", "b"]


# --- content keys --------------------------------------------------------------------------------


def test_key_is_sha256_of_canonical_json_and_ignores_key_order_and_whitespace(work: Path) -> None:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Héllo"}], "n": 1}
    compact = json.dumps({"custom_id": "a", "method": "POST", "url": CHAT, "body": body})
    messy = (
        '  {"body": {"n": 1, "messages": [ {"content": "H\\u00e9llo", "role": "user"} ],\t'
        '"model": "gpt-4o-mini"},   "url": "/v1/chat/completions", "method": "POST", '
        '"custom_id": "a"}  '
    )
    (work / "a.jsonl").write_text(compact + "\n")
    (work / "b.jsonl").write_text(messy + "\n")
    [first] = read_requests(["a.jsonl"])
    [second] = read_requests(["b.jsonl"])
    assert first.key == second.key == expected_key("a", "POST", CHAT, body)
    assert hashlib.sha256(first.canonical_line()).hexdigest() == first.key
    assert json.loads(first.canonical_line()) == {
        "custom_id": "a",
        "method": "POST",
        "url": CHAT,
        "body": body,
    }


@pytest.mark.parametrize(
    "changed",
    [
        {**chat(), "custom_id": "r2"},
        {**chat(), "url": "/v1/responses"},
        chat(model="gpt-4o"),
        chat(messages=[{"role": "user", "content": "Hi!"}]),
        chat(temperature=0),
        chat(messages=[{"role": "user", "content": "Hi", "name": "x"}]),
        chat(max_tokens=1.0),  # 1.0 is not 1 on the wire
    ],
)
def test_any_change_changes_the_key(work: Path, changed: dict[str, Any]) -> None:
    (work / "a.jsonl").write_bytes(jl(chat()))
    (work / "b.jsonl").write_bytes(jl(changed))
    [base] = read_requests(["a.jsonl"])
    [other] = read_requests(["b.jsonl"])
    assert base.key != other.key


def test_key_does_not_depend_on_file_or_position(work: Path) -> None:
    (work / "a.jsonl").write_bytes(jl(chat("x"), chat("y")))
    (work / "b.jsonl").write_bytes(b"\n\n" + jl(chat("y"), chat("x")))
    first = {r.custom_id: r for r in read_requests(["a.jsonl"])}
    second = {r.custom_id: r for r in read_requests(["b.jsonl"])}
    assert {k: r.key for k, r in first.items()} == {k: r.key for k, r in second.items()}
    assert first["x"].line == 1 and second["x"].line == 4


# --- line handling: BOM, CRLF, blank lines, long lines, offsets ----------------------------------


def test_bom_crlf_blank_lines_and_offsets(work: Path) -> None:
    lines = [json.dumps(chat(c)).encode() for c in ("a", "b", "c")]
    data = (
        b"\xef\xbb\xbf" + lines[0] + b"\r\n"
        + b"   \t\r\n"
        + b"\n"
        + lines[1] + b"\n"
        + lines[2]  # no final newline
    )  # fmt: skip
    (work / "in.jsonl").write_bytes(data)
    found = list(read_requests(["in.jsonl"]))
    assert [(r.custom_id, r.line) for r in found] == [("a", 1), ("b", 4), ("c", 5)]
    assert [r.offset for r in found] == [3, data.index(lines[1]), data.index(lines[2])]
    for request, line in zip(found, lines, strict=True):
        assert request.length == len(line)
        assert read_raw_line("in.jsonl", request.offset, request.length) == line
        assert request.path == "in.jsonl"


def test_bom_only_counts_at_the_start_of_the_file(work: Path) -> None:
    (work / "in.jsonl").write_bytes(jl(chat("a")) + b"\xef\xbb\xbf" + jl(chat("b")))
    found = problems(["in.jsonl"])
    assert len(found) == 1 and found[0].startswith("in.jsonl:2: not valid JSON")


def test_a_line_of_several_megabytes_is_read_whole(work: Path) -> None:
    text = "word " * 800_000  # 4 MB
    line = json.dumps(chat("big", messages=[{"role": "user", "content": text}])).encode()
    (work / "in.jsonl").write_bytes(jl(chat("a")) + line + b"\r\n" + jl(chat("z")))
    found = list(read_requests(["in.jsonl"]))
    assert [r.custom_id for r in found] == ["a", "big", "z"]
    big = found[1]
    assert big.body["messages"][0]["content"] == text
    assert big.length == len(line)
    assert read_raw_line("in.jsonl", big.offset, big.length) == line


@pytest.mark.parametrize("terminator", [b"\n", b"\r\n", b""])
def test_byte_cap_boundary(work: Path, terminator: bytes) -> None:
    line = json.dumps(chat("a")).encode()
    (work / "in.jsonl").write_bytes(line + terminator)
    assert [r.length for r in read_requests(["in.jsonl"], max_line_bytes=len(line))] == [len(line)]
    assert problems(["in.jsonl"], max_line_bytes=len(line) - 1) == [
        f"in.jsonl:1: line is {len(line):,} bytes, over the {len(line) - 1:,}-byte per-batch "
        "cap: no batch file can hold it; shrink the request"
    ]


def test_reading_resumes_after_an_oversized_line(work: Path) -> None:
    huge = b'{"custom_id": "h", "pad": "' + b"y" * 300_000 + b'"}'
    (work / "in.jsonl").write_bytes(jl(chat("a")) + huge + b"\r\n" + jl(chat("b")))
    found: list[Request] = []
    with pytest.raises(InputError) as info:
        found.extend(read_requests(["in.jsonl"], max_line_bytes=100_000))
    assert [r.custom_id for r in found] == ["a", "b"]
    assert [r.line for r in found] == [1, 3]
    assert str(info.value) == (
        f"in.jsonl:2: line is {len(huge):,} bytes, over the 100,000-byte per-batch cap: "
        "no batch file can hold it; shrink the request"
    )
    assert (
        read_raw_line("in.jsonl", found[1].offset, found[1].length)
        == json.dumps(chat("b")).encode()
    )


def test_token_array_embedding_input_is_one_input(work: Path) -> None:
    (work / "in.jsonl").write_bytes(jl(emb("t", list(range(3000))), emb("u", [[1, 2]] * 2048)))
    assert [r.custom_id for r in read_requests(["in.jsonl"])] == ["t", "u"]


def test_request_fields(work: Path) -> None:
    (work / "in.jsonl").write_bytes(jl(emb("e1", ["a", "b"])))
    [request] = read_requests([work / "in.jsonl"])
    assert (request.custom_id, request.method, request.url) == ("e1", "POST", EMB)
    assert request.model == "text-embedding-3-small"
    assert request.body["input"] == ["a", "b"]
    assert request.path == str(work / "in.jsonl")
    with pytest.raises(AttributeError):
        request.custom_id = "other"  # type: ignore[misc]


# --- body shapes per endpoint: what the API surely rejects is caught offline ---------------------

COMP = "/v1/completions"
MOD = "/v1/moderations"
RESP = "/v1/responses"
TEXT_OR_TOKENS = "a string, a list of strings, a list of token ids or a list of token-id lists"


def line(url: str, **body: Any) -> dict[str, Any]:
    """A request to url whose body is model plus the given fields."""
    return {"custom_id": "s", "method": "POST", "url": url, "body": {"model": "m", **body}}


BAD_SHAPES: list[tuple[str, dict[str, Any], str]] = [
    (
        "chat without messages",
        line(CHAT, prompt="Hi"),
        "body.messages is missing: add the conversation, e.g. "
        '"messages": [{"role": "user", "content": "..."}]',
    ),
    (
        "chat messages a string",
        line(CHAT, messages="Hi"),
        'body.messages must be a list, got a string: e.g. "messages": '
        '[{"role": "user", "content": "..."}]',
    ),
    (
        "chat messages empty",
        line(CHAT, messages=[]),
        "body.messages is empty: the API needs at least one message, e.g. "
        '"messages": [{"role": "user", "content": "..."}]',
    ),
    (
        "chat message not an object",
        line(CHAT, messages=[{"role": "user", "content": "a"}, "b"]),
        'body.messages[1] must be an object, got a string: each message is {"role": ..., '
        '"content": ...}',
    ),
    (
        "chat message without role",
        line(CHAT, messages=[{"content": "a"}]),
        'body.messages[0].role is missing: give each message a role, e.g. "role": "user"',
    ),
    (
        "chat role not a string",
        line(CHAT, messages=[{"role": 1, "content": "a"}]),
        'body.messages[0].role must be a string: give each message a role, e.g. "role": "user"',
    ),
    (
        "responses input an object",
        line(RESP, input={"text": "Hi"}),
        "body.input must be a string or a list, got an object: give the prompt as text, e.g. "
        '"input": "...", or as a list of input items',
    ),
    (
        "embeddings input a number",
        line(EMB, input=3),
        f"body.input is a number of the wrong form: give {TEXT_OR_TOKENS}",
    ),
    (
        "embeddings input mixes strings and ids",
        line(EMB, input=["a", 1]),
        f"body.input is a list of the wrong form: give {TEXT_OR_TOKENS}",
    ),
    (
        "embeddings input a list of objects",
        line(EMB, input=[{"text": "a"}]),
        f"body.input is a list of the wrong form: give {TEXT_OR_TOKENS}",
    ),
    (
        "embeddings token ids as booleans",
        line(EMB, input=[True, False]),
        f"body.input is a list of the wrong form: give {TEXT_OR_TOKENS}",
    ),
    (
        "embeddings token arrays with a string",
        line(EMB, input=[[1, 2], [3, "4"]]),
        f"body.input is a list of the wrong form: give {TEXT_OR_TOKENS}",
    ),
    (
        "completions without prompt",
        line(COMP, messages=[{"role": "user", "content": "Hi"}]),
        'body.prompt is missing: add the text to complete, e.g. "prompt": "..."',
    ),
    (
        "completions prompt an object",
        line(COMP, prompt={"text": "Hi"}),
        f"body.prompt is an object of the wrong form: give {TEXT_OR_TOKENS}",
    ),
    (
        "moderations without input",
        {"custom_id": "s", "method": "POST", "url": MOD, "body": {"text": "x"}},
        'body.input is missing: add the text to classify, e.g. "input": "..."',
    ),
    (
        "moderations input a number",
        line(MOD, input=7),
        "body.input is a number of the wrong form: give a string, a list of strings, or a "
        'list of content objects such as {"type": "text", "text": "..."}',
    ),
]


@pytest.mark.parametrize(
    ("request_line", "expected"), [c[1:] for c in BAD_SHAPES], ids=[c[0] for c in BAD_SHAPES]
)
def test_body_of_the_wrong_shape_is_a_problem(
    work: Path, request_line: dict[str, Any], expected: str
) -> None:
    (work / "in.jsonl").write_bytes(b"\n" + jl(request_line))
    assert problems(["in.jsonl"]) == [f"in.jsonl:2: {expected}"]


GOOD_SHAPES: list[tuple[str, dict[str, Any]]] = [
    ("chat with extra fields", line(CHAT, messages=HI, seed=1, x_future_field=True)),
    ("chat message with tool calls", line(CHAT, messages=[{"role": "tool", "content": None}])),
    ("responses text", line(RESP, input="Hi")),
    ("responses items", line(RESP, input=[{"role": "user", "content": "Hi"}])),
    ("responses from a stored prompt", line(RESP, prompt={"id": "pmpt_1"})),
    ("responses continuing a response", line(RESP, previous_response_id="resp_1")),
    ("embeddings list of strings", line(EMB, input=["a", "b"])),
    ("embeddings token ids", line(EMB, input=[1, 2, 3])),
    ("embeddings token arrays", line(EMB, input=[[1, 2], [3]])),
    ("completions text", line(COMP, prompt="Once")),
    ("completions strings", line(COMP, prompt=["a", "b"])),
    ("completions token arrays", line(COMP, prompt=[[1, 2]])),
    ("completions null prompt", line(COMP, prompt=None)),
    ("moderations text", line(MOD, input="x")),
    ("moderations strings", line(MOD, input=["x", "y"])),
    (
        "moderations content objects",
        line(MOD, input=[{"type": "image_url", "image_url": {"url": "https://e/x.png"}}]),
    ),
]


@pytest.mark.parametrize(
    "request_line", [c[1] for c in GOOD_SHAPES], ids=[c[0] for c in GOOD_SHAPES]
)
def test_bodies_the_api_accepts_are_accepted(work: Path, request_line: dict[str, Any]) -> None:
    (work / "in.jsonl").write_bytes(jl(request_line))
    assert [r.custom_id for r in read_requests(["in.jsonl"])] == ["s"]


# --- values canonical JSON cannot carry ----------------------------------------------------------


@pytest.mark.parametrize("number", ["1e400", "-1e400", "1E+999"])
def test_a_number_out_of_range_is_a_problem_not_a_crash(work: Path, number: str) -> None:
    bad = json.dumps(chat("b", temperature=0)).replace('"temperature": 0', f'"t": {number}')
    (work / "in.jsonl").write_bytes(jl(chat("a"), bad, chat("c")))
    seen: list[str] = []
    with pytest.raises(InputError) as info:
        seen.extend(r.custom_id for r in read_requests(["in.jsonl"]))
    assert seen == ["a", "c"]
    assert [str(p) for p in info.value.problems] == [
        "in.jsonl:2: number out of range (e.g. 1e400): JSON numbers must be finite; use a "
        "smaller number or a string"
    ]


def test_a_dangling_symlink_is_named_as_such(work: Path) -> None:
    (work / "link.jsonl").symlink_to(work / "gone.jsonl")
    assert problems(["link.jsonl"]) == [
        "link.jsonl: is a symlink to a missing file: fix or remove the symlink"
    ]


# --- a request over the enqueued-token limit -----------------------------------------------------


def test_over_limit_names_the_request_its_tokens_and_what_to_do(work: Path) -> None:
    (work / "in.jsonl").write_bytes(jl(chat("a"), chat("b")))
    first, second = read_requests(["in.jsonl"])
    assert over_limit(first, 100, None) is None
    assert over_limit(first, 100, 100) is None
    problem = over_limit(second, 1234, 1000)
    assert problem is not None and (problem.path, problem.line) == ("in.jsonl", 2)
    assert str(problem) == (
        "in.jsonl:2: request 'b': ~1,234 tokens, over the enqueued-token limit of 1,000 for "
        "gpt-4o-mini: it can never be queued; split it into smaller requests or raise "
        "limits.enqueued_tokens"
    )
