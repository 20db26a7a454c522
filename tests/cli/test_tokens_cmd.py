"""`gptbatch tokens`: per-request lines, per-file and overall totals, caveats, bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gptbatch.cli import main
from gptbatch.inputs.encodings import get_encoding


def n(text: str, encoding: str = "o200k_base") -> int:
    return len(get_encoding(encoding).encode(text, disallowed_special=()))


def chat_tokens(messages: list[dict[str, str]], encoding: str = "o200k_base") -> int:
    """The cookbook's num_tokens_from_messages."""
    total = 3
    for message in messages:
        total += 3 + sum(n(v, encoding) for v in message.values()) + ("name" in message)
    return total


def line(custom_id: str, url: str, body: dict[str, Any]) -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body})


def write(path: Path, lines: list[str]) -> str:
    path.write_text("".join(f"{x}\n" for x in lines), encoding="utf-8")
    return str(path)


CHAT = "/v1/chat/completions"
QUESTIONS = ["What is 2+2?", "Name a colour.", "Say <|endoftext|> twice."]


@pytest.fixture
def files(tmp_path: Path) -> tuple[str, str, list[int], list[int]]:
    """A chat file (gpt-4o) and an embeddings file (cl100k_base), with expected counts."""
    chats, chat_counts = [], []
    for i, question in enumerate(QUESTIONS):
        messages = [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": question},
        ]
        chats.append(line(f"chat-{i}", CHAT, {"model": "gpt-4o", "messages": messages}))
        chat_counts.append(chat_tokens(messages))
    texts = ["first text to embed", "second, longer text to embed here"]
    embeds = [
        line(f"emb-{i}", "/v1/embeddings", {"model": "text-embedding-3-small", "input": t})
        for i, t in enumerate(texts)
    ]
    embed_counts = [n(t, "cl100k_base") for t in texts]
    return (
        write(tmp_path / "chat.jsonl", chats),
        write(tmp_path / "embed.jsonl", embeds),
        chat_counts,
        embed_counts,
    )


def test_totals_per_file_and_overall(files: Any, capsys: pytest.CaptureFixture[str]) -> None:
    chat, embed, chat_counts, embed_counts = files
    assert main(["tokens", chat, embed]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"{chat}: 3 requests, {sum(chat_counts)} tokens, encoding o200k_base",
        f"{embed}: 2 requests, {sum(embed_counts)} tokens, encoding cl100k_base",
        f"total (2 files): 5 requests, {sum(chat_counts) + sum(embed_counts)} tokens, "
        "encoding cl100k_base, o200k_base",
    ]


def test_per_request_lines_in_input_order(files: Any, capsys: pytest.CaptureFixture[str]) -> None:
    chat, embed, chat_counts, embed_counts = files
    assert main(["tokens", "--per-request", chat, embed]) == 0
    out = capsys.readouterr().out.splitlines()
    data = [x.split("\t") for x in out if not x.startswith("#")]
    assert data == [[f"chat-{i}", str(c)] for i, c in enumerate(chat_counts)] + [
        [f"emb-{i}", str(c)] for i, c in enumerate(embed_counts)
    ]
    assert out[0] == "# encoding: o200k_base"
    assert out[4] == "# encoding: cl100k_base"
    assert out[-1].startswith("# total (2 files): 5 requests,")


def test_caveats_per_request_and_in_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    messages = [{"role": "user", "content": "hello"}]
    path = write(
        tmp_path / "odd.jsonl",
        [
            line("a", CHAT, {"model": "mystery-model", "messages": messages}),
            line("b", CHAT, {"model": "gpt-4o", "messages": messages}),
            line("c", CHAT, {"model": "mystery-model", "messages": messages}),
        ],
    )
    caveat = "unknown model 'mystery-model': counted with o200k_base"
    assert main(["tokens", "--per-request", path]) == 0
    out = capsys.readouterr().out.splitlines()
    expected = chat_tokens(messages)
    assert out[:6] == [
        "# encoding: o200k_base",
        f"a\t{expected}",
        f"# caveat: {caveat}",
        f"b\t{expected}",
        f"c\t{expected}",
        f"# caveat: {caveat}",
    ]
    assert main(["tokens", path]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1] == f"  caveat (2 requests): {caveat}"


def test_model_option_fills_missing_models(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    messages = [{"role": "user", "content": "Count me with cl100k_base, please."}]
    path = write(tmp_path / "nomodel.jsonl", [line("x", CHAT, {"messages": messages})])
    assert main(["tokens", "--model", "gpt-4", path]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{path}: 1 request, {chat_tokens(messages, 'cl100k_base')} tokens, " + (
        "encoding cl100k_base"
    )


def test_bad_lines_fail_after_counting_the_good_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    messages = [{"role": "user", "content": "fine"}]
    path = write(
        tmp_path / "mixed.jsonl",
        [line("ok", CHAT, {"model": "gpt-4o", "messages": messages}), "{not json"],
    )
    assert main(["tokens", path]) == 2
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0] == (
        f"{path}: 1 request, {chat_tokens(messages)} tokens, encoding o200k_base"
    )
    assert f"{path}:2: not valid JSON" in captured.err


def test_missing_file_and_bad_endpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "nope.jsonl")
    assert main(["tokens", missing]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["tokens", "--endpoint", "/v1/images", missing]) == 2
    assert "--endpoint '/v1/images' is not one of" in capsys.readouterr().err


@pytest.mark.parametrize(
    "body",
    [
        '{"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "temperature": 1e400}',
        '{"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "tools": '
        '[{"type": "function", "function": {"name": "f", "parameters": {"type": "object", '
        '"properties": {"n": {"type": "number", "maximum": -1e400}}}}}]}',
    ],
    ids=["in a sampling parameter", "in a tool schema the estimate reads"],
)
def test_a_number_out_of_range_is_reported_at_its_line_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], body: str
) -> None:
    messages = [{"role": "user", "content": "fine"}]
    bad = f'{{"custom_id": "big", "method": "POST", "url": "{CHAT}", "body": {body}}}'
    path = write(
        tmp_path / "big.jsonl", [line("ok", CHAT, {"model": "gpt-4o", "messages": messages}), bad]
    )
    assert main(["tokens", path]) == 2
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0] == (
        f"{path}: 1 request, {chat_tokens(messages)} tokens, encoding o200k_base"
    )
    assert f"{path}:2: number out of range (e.g. 1e400): JSON numbers must be finite" in (
        captured.err
    )
