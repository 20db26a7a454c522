"""Prompt-token estimates: expected counts are computed here from the published rules."""

from __future__ import annotations

import base64
import json
import math
import struct
import zlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gptbatch.inputs.encodings import get_encoding
from gptbatch.inputs.tokens import (
    TOKENS_PER_TOOL_CALL,
    Estimate,
    count_text,
    encoding_name_for_model,
    estimate_request,
    image_size,
    image_tokens,
    max_image_tokens,
)

CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"


def n(text: str, encoding: str = "o200k_base") -> int:
    """Token count straight from tiktoken, special tokens treated as text."""
    return len(get_encoding(encoding).encode(text, disallowed_special=()))


def cookbook_messages(messages: list[dict[str, str]], encoding: str) -> int:
    """num_tokens_from_messages, as published in the OpenAI cookbook."""
    total = 0
    for message in messages:
        total += 3
        for key, value in message.items():
            total += n(value, encoding)
            if key == "name":
                total += 1
    return total + 3


# --- the cookbook's own published examples -------------------------------------------------

COOKBOOK_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate "
        "jargon into plain English.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "New synergies will help drive top-line growth.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on "
        "opportunities for increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client "
        "deliverable.",
    },
]

COOKBOOK_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_current_weather",
            "description": "Get the current weather in a given location",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {
                        "type": "string",
                        "description": "The city and state, e.g. San Francisco, CA",
                    },
                    "unit": {
                        "type": "string",
                        "description": "The unit of temperature to return",
                        "enum": ["celsius", "fahrenheit"],
                    },
                },
                "required": ["location"],
            },
        },
    }
]
COOKBOOK_TOOL_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful assistant that can answer to questions about the weather.",
    },
    {"role": "user", "content": "What's the weather like in San Francisco?"},
]


# Published in "How to count tokens with tiktoken", each verified there against the API.
@pytest.mark.parametrize(
    ("model", "published"),
    [
        ("gpt-3.5-turbo", 129),
        ("gpt-4-0613", 129),
        ("gpt-4", 129),
        ("gpt-4o", 124),
        ("gpt-4o-mini", 124),
    ],
)
def test_cookbook_example_messages(model: str, published: int) -> None:
    estimate = estimate_request(CHAT, {"model": model, "messages": COOKBOOK_MESSAGES})
    assert estimate.tokens == published
    assert estimate.caveats == ()


@pytest.mark.parametrize(
    ("model", "published"),
    [("gpt-3.5-turbo", 105), ("gpt-4", 105), ("gpt-4o", 101), ("gpt-4o-mini", 101)],
)
def test_cookbook_tools_example(model: str, published: int) -> None:
    body = {"model": model, "messages": COOKBOOK_TOOL_MESSAGES, "tools": COOKBOOK_TOOLS}
    assert estimate_request(CHAT, body).tokens == published


# --- chat completions ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o-mini", "o200k_base"),
        ("gpt-4.1", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("gpt-4-turbo", "cl100k_base"),
        ("gpt-3.5-turbo-0125", "cl100k_base"),
    ],
)
def test_plain_messages_follow_the_cookbook(model: str, encoding: str) -> None:
    messages = [
        {"role": "developer", "content": "Answer in French.\n\nBe brief."},
        {"role": "user", "name": "alice", "content": "What's 2+2? Explain step by step."},
        {"role": "assistant", "content": "Quatre."},
        {"role": "user", "content": "Ünïcödé façade — 東京タワー 🗼"},
    ]
    estimate = estimate_request(CHAT, {"model": model, "messages": messages, "temperature": 0})
    assert estimate == Estimate(cookbook_messages(messages, encoding), encoding)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "role": st.one_of(
                    st.sampled_from(["system", "user", ""]), st.none(), st.integers()
                ),
                "content": st.one_of(st.text(max_size=40), st.none(), st.just([])),
            },
            optional={"name": st.text(max_size=5)},
        ),
        max_size=4,
    ),
    st.sampled_from(["gpt-4o-mini", "gpt-4", "no-such-model"]),
)
def test_role_and_text_messages_count_as_the_general_walk_counts_them(
    messages: list[dict[str, Any]], model: str
) -> None:
    """The shortcut for {role, content} messages with two strings equals the general walk
    (a message type the shortcut does not know, a dict subclass, takes the walk)."""

    class Message(dict):  # type: ignore[type-arg]
        pass

    body = {"model": model, "messages": messages}
    walked = {"model": model, "messages": [Message(m) for m in messages]}
    assert estimate_request("/v1/chat/completions", body) == estimate_request(
        "/v1/chat/completions", walked
    )


def test_content_parts_and_low_detail_image() -> None:
    parts = [
        {"type": "text", "text": "Describe this picture."},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "low"}},
        {"type": "text", "text": "Then list its colours."},
    ]
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": parts}]}
    expected = 3 + n("user") + n("Describe this picture.") + 85 + n("Then list its colours.") + 3
    assert estimate_request(CHAT, body) == Estimate(expected, "o200k_base")


def test_tool_calls_and_tool_results() -> None:
    arguments = json.dumps({"location": "Paris, FR", "unit": "celsius"})
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_abc",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": arguments},
                },
                {
                    "id": "call_def",
                    "type": "function",
                    "function": {"name": "get_time", "arguments": "{}"},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_abc", "content": "18 degrees, cloudy"},
        {"role": "tool", "tool_call_id": "call_def", "content": "14:05"},
    ]
    expected = (
        (3 + n("user") + n("Weather in Paris?"))
        + (3 + n("assistant"))
        + (TOKENS_PER_TOOL_CALL + n("get_weather") + n(arguments))
        + (TOKENS_PER_TOOL_CALL + n("get_time") + n("{}"))
        + (3 + n("tool") + n("call_abc") + n("18 degrees, cloudy"))
        + (3 + n("tool") + n("call_def") + n("14:05"))
        + 3
    )
    estimate = estimate_request(CHAT, {"model": "gpt-4.1-mini", "messages": messages})
    assert estimate == Estimate(expected, "o200k_base")


def function_tokens(functions: list[dict[str, Any]], encoding: str) -> int:
    """The cookbook's num_tokens_for_tools, plus nested properties counted the same way."""
    func_init = 7 if encoding == "o200k_base" else 10
    prop_init, prop_key, enum_init, enum_item, func_end = 3, 3, -3, 3, 12

    def props(properties: dict[str, Any]) -> int:
        if not properties:
            return 0
        total = prop_init
        for key, schema in properties.items():
            total += prop_key
            if "enum" in schema:
                total += enum_init + sum(enum_item + n(str(i), encoding) for i in schema["enum"])
            desc = schema.get("description", "")
            desc = desc[:-1] if desc.endswith(".") else desc
            total += n(f"{key}:{schema.get('type', '')}:{desc}", encoding)
            total += props(schema.get("properties", {}))
            total += props(schema.get("items", {}).get("properties", {}))
        return total

    total = func_end
    for f in functions:
        desc = f.get("description", "")
        desc = desc[:-1] if desc.endswith(".") else desc
        total += func_init + n(f"{f['name']}:{desc}", encoding)
        total += props(f.get("parameters", {}).get("properties", {}))
    return total


NESTED_FUNCTION = {
    "name": "book_trip",
    "description": "Book a trip for a traveller.",
    "parameters": {
        "type": "object",
        "properties": {
            "mode": {"type": "string", "description": "How to travel.", "enum": ["train", "air"]},
            "seats": {"type": "integer", "description": "Seat count", "enum": [1, 2, 3]},
            "traveller": {
                "type": "object",
                "description": "Who travels",
                "properties": {
                    "name": {"type": "string", "description": "Full name"},
                    "age": {"type": "integer", "description": "Age in years."},
                },
            },
            "stops": {
                "type": "array",
                "description": "Stops on the way",
                "items": {
                    "type": "object",
                    "properties": {"city": {"type": "string", "description": "City"}},
                },
            },
        },
    },
}
SIMPLE_FUNCTION = {
    "name": "ping",
    "description": "Check the service.",
    "parameters": {"type": "object", "properties": {}},
}


@pytest.mark.parametrize(
    ("model", "encoding"), [("gpt-4o", "o200k_base"), ("gpt-4", "cl100k_base")]
)
def test_tool_definitions_with_enums_and_nested_properties(model: str, encoding: str) -> None:
    messages = [{"role": "user", "content": "Book me a train to Lyon."}]
    tools = [{"type": "function", "function": f} for f in (NESTED_FUNCTION, SIMPLE_FUNCTION)]
    expected = cookbook_messages(messages, encoding) + function_tokens(
        [NESTED_FUNCTION, SIMPLE_FUNCTION], encoding
    )
    body = {"model": model, "messages": messages, "tools": tools}
    assert estimate_request(CHAT, body) == Estimate(expected, encoding)
    legacy = {"model": model, "messages": messages, "functions": [NESTED_FUNCTION, SIMPLE_FUNCTION]}
    assert estimate_request(CHAT, legacy).tokens == expected


def test_json_schema_response_format_counts_the_schema_text() -> None:
    schema = {
        "name": "answer",
        "strict": True,
        "schema": {"type": "object", "properties": {"value": {"type": "number"}}},
    }
    messages = [{"role": "user", "content": "Give me a number."}]
    body = {
        "model": "gpt-4o-2024-08-06",
        "messages": messages,
        "response_format": {"type": "json_schema", "json_schema": schema},
    }
    canonical = json.dumps(schema, sort_keys=True, separators=(",", ":"))
    assert estimate_request(CHAT, body).tokens == cookbook_messages(messages, "o200k_base") + n(
        canonical
    )


def test_special_token_text_is_counted_as_ordinary_text() -> None:
    text = "before <|endoftext|> middle <|endofprompt|> after <|fim_prefix|>"
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": text}]}
    assert estimate_request(CHAT, body).tokens == 3 + n("user") + n(text) + 3
    assert count_text(text, "cl100k_base") == n(text, "cl100k_base")
    assert count_text("", "o200k_base") == 0


def test_huge_whitespace_run_does_not_crash_tiktoken() -> None:
    # tiktoken's regex gives up on a million spaces (tiktoken issue #15); we count in pieces.
    text = "start" + " " * 1_000_000 + "end"
    assert 0 < count_text(text, "o200k_base") <= len(text)
    estimate = estimate_request(
        CHAT, {"model": "gpt-4o", "messages": [{"role": "user", "content": text}]}
    )
    assert estimate.tokens > 3 + n("user") + 3
    assert estimate.caveats == ("a text too repetitive for tiktoken was counted in pieces",)
    shorter = " " * 100_000  # still within tiktoken's reach: exact
    assert count_text(shorter, "o200k_base") == n(shorter)


def test_unknown_model_is_counted_with_o200k_and_says_so() -> None:
    messages = [{"role": "user", "content": "hi there"}]
    estimate = estimate_request(CHAT, {"model": "my-local-llm", "messages": messages})
    assert estimate.tokens == cookbook_messages(messages, "o200k_base")
    assert estimate.encoding == "o200k_base"
    assert estimate.caveats == ("unknown model 'my-local-llm': counted with o200k_base",)


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-4o", ("o200k_base", None)),
        ("gpt-4o-mini-2024-07-18", ("o200k_base", None)),
        ("gpt-4.1-nano", ("o200k_base", None)),
        ("gpt-5-mini", ("o200k_base", None)),
        ("o1", ("o200k_base", None)),
        ("o4-mini-2025-04-16", ("o200k_base", None)),
        ("ft:gpt-4o-mini-2024-07-18:acme::abc123", ("o200k_base", None)),
        ("gpt-4-0613", ("cl100k_base", None)),
        ("gpt-3.5-turbo-instruct", ("cl100k_base", None)),
        ("text-embedding-3-small", ("cl100k_base", None)),
        ("omni-moderation-latest", ("o200k_base", None)),
        (None, ("o200k_base", None)),
    ],
)
def test_encoding_for_model(model: str | None, expected: tuple[str, str | None]) -> None:
    assert encoding_name_for_model(model) == expected


def test_model_with_a_legacy_encoding_falls_back_with_a_caveat() -> None:
    encoding, caveat = encoding_name_for_model("davinci")
    assert encoding == "o200k_base"
    assert caveat is not None and "r50k_base" in caveat and "davinci" in caveat


# --- images ----------------------------------------------------------------------------------


def png(width: int, height: int, *, pixels: bool = False) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", ihdr)
    if pixels:  # a complete RGB image: filter byte + 3 bytes per pixel per row
        body += chunk(b"IDAT", zlib.compress((b"\x00" + b"\xff\x00\x00" * width) * height))
    return b"\x89PNG\r\n\x1a\n" + body + chunk(b"IEND", b"")


def jpeg(width: int, height: int, *, exif_bytes: int = 0, progressive: bool = False) -> bytes:
    def segment(marker: int, data: bytes) -> bytes:
        return bytes([0xFF, marker]) + struct.pack(">H", len(data) + 2) + data

    out = b"\xff\xd8" + segment(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")
    remaining = exif_bytes
    while remaining > 0:  # APP1 segments of at most 65533 bytes each
        size = min(remaining, 65533)
        out += segment(0xE1, b"Exif\x00\x00" + b"\xab" * (size - 6))
        remaining -= size
    out += segment(0xDB, bytes(65))  # a quantisation table before the frame header
    sof = struct.pack(">BHHB", 8, height, width, 3) + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    out += segment(0xC2 if progressive else 0xC0, sof)
    return out + b"\xff\xd9"


def gif(width: int, height: int) -> bytes:
    return b"GIF89a" + struct.pack("<HH", width, height) + b"\x00\x00\x00;"


def _riff(chunk: bytes, data: bytes) -> bytes:
    payload = b"WEBP" + chunk + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(payload)) + payload


def webp_lossy(width: int, height: int) -> bytes:
    frame = b"\x10\x02\x00" + b"\x9d\x01\x2a" + struct.pack("<HH", width, height) + bytes(10)
    return _riff(b"VP8 ", frame)


def webp_lossless(width: int, height: int) -> bytes:
    bits = (width - 1) | ((height - 1) << 14)
    return _riff(b"VP8L", b"\x2f" + struct.pack("<I", bits) + bytes(8))


def webp_extended(width: int, height: int) -> bytes:
    w, h = (width - 1).to_bytes(3, "little"), (height - 1).to_bytes(3, "little")
    return _riff(b"VP8X", b"\x00\x00\x00\x00" + w + h)


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


ENCODERS = [png, jpeg, gif, webp_lossy, webp_lossless, webp_extended]


@pytest.mark.parametrize("encode", ENCODERS)
@pytest.mark.parametrize("size", [(1, 1), (512, 512), (1800, 2400), (4000, 3), (16383, 2)])
def test_image_size_reads_headers(encode: Any, size: tuple[int, int]) -> None:
    data = encode(*size)
    assert image_size(data) == size
    assert image_size(data_url(data)) == size


def test_real_one_pixel_png_and_truncated_or_foreign_data() -> None:
    one = png(1, 1, pixels=True)
    assert zlib.decompress(one[one.index(b"IDAT") + 4 : -16]) == b"\x00\xff\x00\x00"
    assert image_size(one) == (1, 1)
    assert image_size(png(300, 200)[:20]) is None  # cut inside IHDR
    assert image_size(b"BM6\x00\x00\x00") is None  # BMP: not an accepted format
    assert image_size(b"") is None
    assert image_size("https://example.com/a.png") is None
    assert image_size("data:image/png;base64,!!!not base64!!!") is None
    assert image_size("data:text/plain,hello") is None


def test_data_url_with_line_breaks() -> None:
    encoded = base64.encodebytes(jpeg(640, 480, exif_bytes=5000)).decode()  # 76-char lines
    assert "\n" in encoded
    assert image_size("data:image/jpeg;BASE64," + encoded) == (640, 480)


def test_jpeg_frame_header_after_large_exif_is_found() -> None:
    data = jpeg(3024, 4032, exif_bytes=150_000, progressive=True)
    assert image_size(data) == (3024, 4032)
    assert image_size(data_url(data, "image/jpeg")) == (3024, 4032)


def tile_tokens(width: int, height: int, base: int, tile: int) -> int:
    """The vision guide's high-detail steps, in exact arithmetic."""
    from fractions import Fraction

    w, h = Fraction(width), Fraction(height)
    if max(w, h) > 2048:
        w, h = w * 2048 / max(w, h), h * 2048 / max(w, h)
    if min(w, h) > 768:
        w, h = w * 768 / min(w, h), h * 768 / min(w, h)
    return base + tile * math.ceil(w / 512) * math.ceil(h / 512)


def patch_tokens(width: int, height: int, multiplier: float) -> int:
    """The vision guide's patch steps A-D; the multiplied count rounded up."""
    patches = math.ceil(width / 32) * math.ceil(height / 32)
    if patches > 1536:
        r = math.sqrt(32**2 * 1536 / (width * height))
        r *= min(
            math.floor(width * r / 32) / (width * r / 32),
            math.floor(height * r / 32) / (height * r / 32),
        )
        patches = min(1536, round_up(width * r / 32) * round_up(height * r / 32))
    return math.ceil(round(patches * multiplier, 6))


def round_up(x: float) -> int:
    """ceil, ignoring float noise just above a whole number."""
    return math.ceil(round(x, 6))


@pytest.mark.parametrize(
    ("width", "height", "published"),
    [(1024, 1024, 765), (2048, 4096, 1105)],  # the guide's gpt-4o examples
)
def test_published_gpt4o_examples(width: int, height: int, published: int) -> None:
    assert image_tokens(width, height, "high", "gpt-4o") == published
    assert image_tokens(width, height, "auto", "gpt-4o") == published
    assert image_tokens(4096, 8192, "low", "gpt-4o") == 85  # guide: low detail is fixed


@pytest.mark.parametrize(
    ("model", "base", "tile"),
    [
        ("gpt-4o-2024-11-20", 85, 170),
        ("gpt-4.1", 85, 170),
        ("gpt-4o-mini", 2833, 5667),
        ("gpt-5", 70, 140),
        ("gpt-5-chat-latest", 70, 140),
        ("o1", 75, 150),
        ("o3", 75, 150),
        ("computer-use-preview", 65, 129),
    ],
)
@pytest.mark.parametrize("size", [(100, 60), (513, 400), (1920, 1080), (5000, 700), (640, 4000)])
def test_tile_models(model: str, base: int, tile: int, size: tuple[int, int]) -> None:
    assert image_tokens(*size, "high", model) == tile_tokens(*size, base, tile)
    assert image_tokens(*size, "low", model) == base


@pytest.mark.parametrize(
    ("model", "multiplier"),
    [
        ("gpt-4.1-mini", 1.62),
        ("gpt-4.1-nano", 2.46),
        ("o4-mini", 1.72),
        ("gpt-5-mini", 1.62),
        ("gpt-5-nano-2025-08-07", 2.46),
    ],
)
def test_patch_models_use_the_published_examples(model: str, multiplier: float) -> None:
    # The guide: 1024x1024 is 1024 patches; 1800x2400 is 1452 patches; then the multiplier,
    # rounded up.
    pct = round(multiplier * 100)
    assert image_tokens(1024, 1024, "high", model) == -(-1024 * pct // 100)
    assert image_tokens(1800, 2400, "auto", model) == -(-1452 * pct // 100)
    assert image_tokens(100, 100, "low", model) == -(-16 * pct // 100)  # 4x4 patches
    assert image_tokens(20000, 20000, "high", model) <= -(-1536 * pct // 100)
    for size in [(1920, 1080), (4000, 1474), (3, 9000), (2400, 1800)]:
        assert image_tokens(*size, "high", model) == patch_tokens(*size, multiplier)
    # A strip one patch thick: the guide's formula would floor its height to 0 patches; we
    # keep at least one, so it costs the 1536-patch cap.
    assert image_tokens(1537 * 32, 32, "high", model) == -(-1536 * pct // 100)


@given(
    st.integers(1, 30000),
    st.integers(1, 30000),
    st.sampled_from(["low", "high", "auto"]),
    st.sampled_from(["gpt-4o", "gpt-4o-mini", "gpt-5", "o3", "gpt-4.1-mini", "o4-mini", "x"]),
)
def test_image_tokens_are_symmetric_and_never_above_the_maximum(
    width: int, height: int, detail: str, model: str
) -> None:
    tokens = image_tokens(width, height, detail, model)
    assert tokens == image_tokens(height, width, detail, model)
    assert 0 < tokens <= max_image_tokens(detail, model)


def _chat_image(url: str, detail: str, model: str) -> Estimate:
    part = {"type": "image_url", "image_url": {"url": url, "detail": detail}}
    return estimate_request(
        CHAT, {"model": model, "messages": [{"role": "user", "content": [part]}]}
    )


@pytest.mark.parametrize("encode", ENCODERS)
def test_data_url_images_in_requests(encode: Any) -> None:
    url = data_url(encode(1920, 1080))
    overhead = 3 + n("user") + 3
    assert _chat_image(url, "high", "gpt-4o").tokens == overhead + tile_tokens(1920, 1080, 85, 170)
    assert _chat_image(url, "low", "gpt-4o").tokens == overhead + 85
    assert _chat_image(url, "auto", "gpt-4.1-mini").tokens == overhead + patch_tokens(
        1920, 1080, 1.62
    )
    assert _chat_image(url, "high", "gpt-4o").caveats == ()


def test_http_image_counts_the_maximum_with_a_caveat() -> None:
    url = "https://example.com/photos/cat.jpg"
    overhead = 3 + n("user") + 3
    high = _chat_image(url, "high", "gpt-4o")
    assert high.tokens == overhead + 85 + 8 * 170
    assert high.caveats == (
        f"image of unknown size at {url}: counted as the high-detail maximum {85 + 8 * 170}",
    )
    assert _chat_image(url, "auto", "gpt-4o-mini").tokens == overhead + 2833 + 8 * 5667
    low = _chat_image(url, "low", "gpt-4o")
    assert (low.tokens, low.caveats) == (overhead + 85, ())
    patch = _chat_image(url, "low", "gpt-4.1-nano")
    assert patch.tokens == overhead + -(-1536 * 246 // 100)
    assert "counted as the maximum" in patch.caveats[0]


def test_unknown_model_images_use_gpt4o_rule_with_caveat() -> None:
    estimate = _chat_image(data_url(png(1024, 1024)), "high", "my-vision-model")
    assert estimate.tokens == 3 + n("user") + 3 + 765
    assert len(estimate.caveats) == 2
    assert "no published image rule" in estimate.caveats[1]


def test_audio_and_file_parts_are_caveats() -> None:
    parts = [
        {"type": "text", "text": "Transcribe and summarise."},
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
        {"type": "file", "file": {"file_id": "file-abc"}},
    ]
    estimate = estimate_request(
        CHAT, {"model": "gpt-4o-audio-preview", "messages": [{"role": "user", "content": parts}]}
    )
    assert estimate.tokens == 3 + n("user") + n("Transcribe and summarise.") + 3
    assert any("audio" in c for c in estimate.caveats)
    assert any("file input" in c for c in estimate.caveats)


# --- responses -------------------------------------------------------------------------------


def test_responses_string_input_and_instructions() -> None:
    body = {"model": "gpt-4.1", "instructions": "Be terse.", "input": "Name three rivers."}
    expected = (3 + n("developer") + n("Be terse.")) + (3 + n("user") + n("Name three rivers.")) + 3
    assert estimate_request(RESPONSES, body) == Estimate(expected, "o200k_base")


def test_responses_items_tools_and_images() -> None:
    image = data_url(jpeg(800, 600), "image/jpeg")
    body = {
        "model": "gpt-4o",
        "input": [
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "What is in the image?"},
                    {"type": "input_image", "image_url": image, "detail": "high"},
                ],
            },
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "A bridge."}],
            },
            {"type": "function_call", "call_id": "c1", "name": "lookup", "arguments": '{"q":"x"}'},
            {"type": "function_call_output", "call_id": "c1", "output": "Golden Gate"},
        ],
        "tools": [{"type": "function", **NESTED_FUNCTION}, {"type": "web_search_preview"}],
    }
    expected = (
        (3 + n("user") + n("What is in the image?") + tile_tokens(800, 600, 85, 170))
        + (3 + n("assistant") + n("A bridge."))
        + (3 + TOKENS_PER_TOOL_CALL + n("lookup") + n('{"q":"x"}'))
        + (3 + n("c1") + n("Golden Gate"))
        + 3
        + function_tokens([NESTED_FUNCTION], "o200k_base")
    )
    estimate = estimate_request(RESPONSES, body)
    assert estimate.tokens == expected
    assert estimate.caveats == (
        "built-in tool 'web_search_preview': its prompt overhead is not counted",
    )


def test_responses_previous_response_is_a_caveat() -> None:
    body = {"model": "gpt-5", "input": "and then?", "previous_response_id": "resp_123"}
    estimate = estimate_request(RESPONSES, body)
    assert estimate.tokens == 3 + n("user") + n("and then?") + 3
    assert any("previous_response_id" in c for c in estimate.caveats)


# --- embeddings, completions, moderations, unknown endpoints ---------------------------------


def test_embeddings_text_and_token_arrays() -> None:
    url, model, enc = "/v1/embeddings", "text-embedding-3-small", "cl100k_base"
    texts = ["The food was delicious.", "<|endoftext|> is just text here", "数据"]
    assert estimate_request(url, {"model": model, "input": texts[0]}) == Estimate(
        n(texts[0], enc), enc
    )
    assert estimate_request(url, {"model": model, "input": texts}).tokens == sum(
        n(t, enc) for t in texts
    )
    assert estimate_request(url, {"model": model, "input": [1, 2, 3, 4, 5]}).tokens == 5
    arrays = [[1, 2, 3], [9] * 40, []]
    assert estimate_request(url, {"model": model, "input": arrays}).tokens == 43


def test_completions_prompt_forms() -> None:
    url, model, enc = "/v1/completions", "gpt-3.5-turbo-instruct", "cl100k_base"
    prompts = ["Once upon a time", "Write a haiku about rain:"]
    assert estimate_request(url, {"model": model, "prompt": prompts[0]}).tokens == n(
        prompts[0], enc
    )
    assert estimate_request(url, {"model": model, "prompt": prompts}).tokens == sum(
        n(p, enc) for p in prompts
    )
    assert estimate_request(url, {"model": model, "prompt": [[5, 6], [7]]}).tokens == 3


def test_moderations_without_model_and_multimodal() -> None:
    url = "/v1/moderations"
    assert estimate_request(url, {"input": "I want to hurt them."}) == Estimate(
        n("I want to hurt them."), "o200k_base"
    )
    assert estimate_request(url, {"input": ["a b", "c d e"]}).tokens == n("a b") + n("c d e")
    parts = [
        {"type": "text", "text": "Is this fine?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/x.png"}},
    ]
    estimate = estimate_request(url, {"model": "omni-moderation-latest", "input": parts})
    assert estimate.tokens == n("Is this fine?") + 85
    assert estimate.encoding == "o200k_base"
    assert len(estimate.caveats) == 1 and "moderation image" in estimate.caveats[0]


def test_unknown_endpoint_counts_the_body_json_with_a_caveat() -> None:
    body = {"model": "gpt-4o", "prompt": "a cat", "size": "1024x1024"}
    estimate = estimate_request("/v1/audio/speech", body)
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    assert estimate.tokens == n(canonical)
    assert estimate.caveats == (
        "unknown endpoint '/v1/audio/speech': the whole body counted as JSON text",
    )


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    *("role", "content", "type", "text", "name", "image_url", "url", "detail"),
                    *("input", "tool_calls", "function", "arguments", "properties", "enum"),
                    *("items", "x"),
                ]
            ),
            children,
            max_size=4,
        )
    ),
    max_leaves=25,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(
        [CHAT, RESPONSES, "/v1/embeddings", "/v1/completions", "/v1/moderations", "/v1/x"]
    ),
    st.sampled_from([None, "gpt-4o", "gpt-4", "gpt-4.1-mini", "nope", 7]),
    st.dictionaries(
        st.sampled_from(["messages", "input", "prompt", "tools", "functions", "instructions"])
        | st.sampled_from(["response_format", "text", "suffix"]),
        JSON,
        max_size=3,
    ),
)
def test_any_json_body_gets_an_estimate(url: str, model: Any, body: dict[str, Any]) -> None:
    if model is not None:
        body["model"] = model
    estimate = estimate_request(url, body)
    assert isinstance(estimate.tokens, int)
    assert estimate.tokens >= 0
    assert estimate.encoding in ("o200k_base", "cl100k_base")
