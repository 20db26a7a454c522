"""A deterministic mixed request corpus for the scan and token-count regression tests.

Chat (with names, tools, tool calls, images as data URLs and http URLs, response formats),
responses, embeddings (text, lists, token arrays), completions and moderations, in several
files, with irregular spacing and key order, unicode, special-token text and numbers.
"""

from __future__ import annotations

import base64
import json
import random
import struct
import zlib
from pathlib import Path
from typing import Any

_WORD_TEXT = (
    "the of and to in is was for on are with as his they at be this from have or one had "
    "by word but not what all were we when your can said there use an each which she do how "
    "their if will up other about out many then them these so some her would make like him "
    "naïve café Zürich 東京 данные ñandú 🙂 <|endoftext|> 3.14 1e-05 2048 -0 \t tab\r\nline"
)
WORDS = _WORD_TEXT.split(" ")
MODELS = ["gpt-4o-mini", "gpt-4o", "gpt-4.1-nano", "gpt-3.5-turbo", "gpt-5-mini", "o3", "x-llm"]


def png(width: int, height: int) -> bytes:
    """A PNG header of the given size (enough for gptbatch's size reader)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
    )


def data_url(width: int, height: int) -> str:
    return "data:image/png;base64," + base64.b64encode(png(width, height)).decode()


def text(rng: random.Random, low: int = 1, high: int = 60) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))


def chat_body(rng: random.Random) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    if rng.random() < 0.7:
        messages.append({"role": "system", "content": "You are terse. " + text(rng, 0, 5)})
    for _ in range(rng.randint(1, 4)):
        roll = rng.random()
        if roll < 0.2:
            parts: list[Any] = [{"type": "text", "text": text(rng)}]
            for _ in range(rng.randint(1, 2)):
                url = (
                    data_url(rng.randint(1, 4000), rng.randint(1, 4000))
                    if rng.random() < 0.7
                    else f"https://example.com/{rng.randint(1, 99)}.png"
                )
                detail = rng.choice(["low", "high", "auto", None])
                image: dict[str, Any] = {"url": url}
                if detail:
                    image["detail"] = detail
                parts.append({"type": "image_url", "image_url": image})
            messages.append({"role": "user", "content": parts})
        elif roll < 0.35:
            call = {"name": "lookup", "arguments": json.dumps({"q": text(rng, 1, 5)})}
            messages.append(
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{"id": "c1", "type": "function", "function": call}],
                }
            )
            messages.append({"role": "tool", "tool_call_id": "c1", "content": text(rng)})
        elif roll < 0.5:
            messages.append(
                {"role": "user", "name": f"user_{rng.randint(1, 9)}", "content": text(rng)}
            )
        else:
            messages.append({"role": "user", "content": text(rng, 1, 300)})
    body: dict[str, Any] = {"model": rng.choice(MODELS), "messages": messages}
    if rng.random() < 0.3:
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": "lookup",
                    "description": "Look a thing up.",
                    "parameters": {
                        "type": "object",
                        "properties": {
                            "q": {"type": "string", "description": "the query"},
                            "kind": {"type": "string", "enum": ["a", "b", "ü"]},
                        },
                    },
                },
            }
        ]
    if rng.random() < 0.2:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "x", "schema": {"type": "object", "temperature": 0.25}},
        }
    if rng.random() < 0.3:
        body["temperature"] = rng.choice([0, 0.7, 1e-05, 1.0])
        body["max_tokens"] = rng.randint(1, 500)
    return body


def responses_body(rng: random.Random) -> dict[str, Any]:
    body: dict[str, Any] = {"model": rng.choice(MODELS[:5])}
    if rng.random() < 0.5:
        body["input"] = text(rng)
    else:
        body["input"] = [
            {"role": "user", "content": [{"type": "input_text", "text": text(rng)}]},
            {"type": "function_call", "name": "f", "arguments": "{}", "call_id": "1"},
            {"type": "function_call_output", "call_id": "1", "output": text(rng, 1, 5)},
        ]
    if rng.random() < 0.5:
        body["instructions"] = text(rng, 1, 10)
    if rng.random() < 0.3:
        body["tools"] = [{"type": "function", "name": "f", "description": "Do f."}]
        body["tools"].append({"type": "web_search"})
    return body


def embeddings_body(rng: random.Random) -> dict[str, Any]:
    roll = rng.random()
    if roll < 0.4:
        value: Any = text(rng)
    elif roll < 0.8:
        value = [text(rng) for _ in range(rng.randint(1, 5))]
    elif roll < 0.9:
        value = [rng.randint(0, 50000) for _ in range(rng.randint(1, 20))]
    else:
        value = [[rng.randint(0, 50000) for _ in range(3)] for _ in range(rng.randint(1, 3))]
    model = rng.choice(["text-embedding-3-small", "text-embedding-ada-002"])
    return {"model": model, "input": value}


def completions_body(rng: random.Random) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "gpt-3.5-turbo-instruct", "prompt": text(rng)}
    if rng.random() < 0.3:
        body["suffix"] = text(rng, 1, 5)
    if rng.random() < 0.3:
        body["prompt"] = [text(rng, 1, 10), text(rng, 1, 10)]
    return body


def moderations_body(rng: random.Random) -> dict[str, Any]:
    if rng.random() < 0.5:
        return {"model": "omni-moderation-latest", "input": text(rng)}
    return {
        "model": "omni-moderation-latest",
        "input": [
            {"type": "text", "text": text(rng)},
            {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
        ],
    }


KINDS = {
    "chat": ("/v1/chat/completions", chat_body),
    "responses": ("/v1/responses", responses_body),
    "embeddings": ("/v1/embeddings", embeddings_body),
    "completions": ("/v1/completions", completions_body),
    "moderations": ("/v1/moderations", moderations_body),
}


def request_line(rng: random.Random, custom_id: str, url: str, body: dict[str, Any]) -> bytes:
    """One request line, with the key order and spacing varied as people's files have them."""
    fields = [("custom_id", custom_id), ("method", "POST"), ("url", url), ("body", body)]
    rng.shuffle(fields)
    seps = rng.choice([(",", ":"), (", ", ": ")])
    return json.dumps(dict(fields), separators=seps, ensure_ascii=rng.random() < 0.5).encode()


def write_mixed_corpus(directory: Path, requests_per_file: int = 60, seed: int = 7) -> list[Path]:
    """One file per endpoint (chat twice: LF and CRLF with blank lines); their paths."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, (url, make) in [*KINDS.items(), ("chat-crlf", KINDS["chat"])]:
        lines = [request_line(rng, f"{name}-{i}", url, make(rng)) for i in range(requests_per_file)]
        path = directory / f"{name}.jsonl"
        if name == "chat-crlf":
            path.write_bytes(b"\xef\xbb\xbf" + b"\r\n\r\n".join(lines))  # BOM, no final EOL
        else:
            path.write_bytes(b"\n".join(lines) + b"\n")
        paths.append(path)
    return paths
