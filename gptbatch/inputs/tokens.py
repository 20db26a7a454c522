"""Prompt-token estimates for Batch API request bodies, per endpoint and model (pure functions).

Shard packing trusts these numbers against the organisation's enqueued-token budget, so every
rule follows a published source, and wherever the source runs out the estimate errs high and
says so in a caveat:

- Chat messages: OpenAI cookbook "How to count tokens with tiktoken", `num_tokens_from_messages`
  (3 tokens per message, plus the tokens of every string field including the role, +1 when
  `name` is present, +3 to prime the reply). Its example_messages are 129 tokens with
  cl100k_base models and 124 with o200k_base ones, as verified there against the API.
- Function/tool definitions: the same cookbook, `num_tokens_for_tools` (func_init, prop_init,
  prop_key, enum_init, enum_item, func_end), whose example is 105 (cl100k) / 101 (o200k) tokens.
- Images: OpenAI "Images and vision" guide, section "Calculating costs"
  (platform.openai.com/docs/guides/images-vision#calculating-costs): 512px tiles for most
  models, 32px patches times a multiplier for gpt-4.1-mini/-nano, gpt-5-mini/-nano, o4-mini.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import tiktoken
import tiktoken.model

from gptbatch.canonical import canonical_json
from gptbatch.inputs.encodings import get_encoding

__all__ = [
    "Estimate",
    "count_text",
    "encoding_name_for_model",
    "estimate_request",
    "image_size",
    "image_tokens",
    "max_image_tokens",
]

DEFAULT_ENCODING = "o200k_base"

# --- chat formatting constants (cookbook num_tokens_from_messages) ---------------------------
TOKENS_PER_MESSAGE = 3  # <|start|>{role/name}\n{content}<|end|>\n
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3  # every reply is primed with <|start|>assistant<|message|>
# Our own figure (the cookbook publishes none) for each assistant tool call besides its name
# and arguments text: about what the harmony rendering
# `to=functions.NAME<|channel|>commentary json<|message|>ARGS<|call|>` adds.
TOKENS_PER_TOOL_CALL = 7


@dataclass(frozen=True)
class _FunctionConstants:
    """Cookbook num_tokens_for_tools settings for one model family."""

    func_init: int
    prop_init: int
    prop_key: int
    enum_init: int
    enum_item: int
    func_end: int


# Cookbook values: gpt-4o / gpt-4o-mini (o200k_base) and gpt-3.5-turbo / gpt-4 (cl100k_base).
_FUNCTION_CONSTANTS = {
    "o200k_base": _FunctionConstants(7, 3, 3, -3, 3, 12),
    "cl100k_base": _FunctionConstants(10, 3, 3, -3, 3, 12),
}

# --- images (vision guide, "Calculating costs") -----------------------------------------------


@dataclass(frozen=True)
class _TileRule:
    """Fit in 2048x2048, shortest side to 768, then base + tile tokens per 512px square."""

    base: int
    tile: int


@dataclass(frozen=True)
class _PatchRule:
    """32px patches (at most 1536) times a multiplier, kept in hundredths to stay exact."""

    multiplier_pct: int


_GPT4O_TILES = _TileRule(85, 170)
# Checked in order, first prefix wins: the more specific names come first.
_IMAGE_RULES: tuple[tuple[str, _TileRule | _PatchRule], ...] = (
    ("gpt-5-mini", _PatchRule(162)),
    ("gpt-5-nano", _PatchRule(246)),
    ("gpt-4.1-mini", _PatchRule(162)),
    ("gpt-4.1-nano", _PatchRule(246)),
    ("o4-mini", _PatchRule(172)),
    ("gpt-4o-mini", _TileRule(2833, 5667)),
    ("gpt-5", _TileRule(70, 140)),  # gpt-5, gpt-5-chat-latest
    ("gpt-4o", _GPT4O_TILES),
    ("chatgpt-4o", _GPT4O_TILES),
    ("gpt-4.1", _GPT4O_TILES),
    ("gpt-4.5", _GPT4O_TILES),
    ("gpt-4-turbo", _GPT4O_TILES),  # the guide's original rule, before per-model tables
    ("o1", _TileRule(75, 150)),  # o1, o1-pro
    ("o3", _TileRule(75, 150)),
    ("computer-use-preview", _TileRule(65, 129)),
)
_MAX_PATCHES = 1536
_PATCH = 32
# With the long side at most 2048 and the short side at most 768, a high-detail image never
# needs more than 4 x 2 tiles of 512px.
_MAX_TILES = 8
_MODERATION_IMAGE_TOKENS = 85  # our constant: the gpt-4o low-detail image cost

# Models tiktoken does not know. OpenAI publishes no tokenizer for the moderation models;
# omni-moderation is built on GPT-4o, so o200k_base.
_EXTRA_MODEL_PREFIXES = {"omni-moderation": "o200k_base", "text-moderation": "o200k_base"}
_OFFLINE_ENCODINGS = {"o200k_base", "cl100k_base"}
# Same ranks and split pattern as o200k_base, so ordinary text counts the same.
_ENCODING_ALIASES = {"o200k_harmony": "o200k_base"}


@dataclass(frozen=True)
class Estimate:
    """Estimated prompt tokens of one request, with the encoding used and any doubts."""

    tokens: int
    encoding: str
    caveats: tuple[str, ...] = ()


def encoding_name_for_model(model: str | None) -> tuple[str, str | None]:
    """(encoding name, caveat or None) for a model name, falling back to o200k_base."""
    if model is None:
        return DEFAULT_ENCODING, None
    if not isinstance(model, str):
        return DEFAULT_ENCODING, f"model is not a string ({model!r}): counted with o200k_base"
    return _encoding_for_name(model)


@functools.lru_cache(maxsize=1024)  # a batch names few models; tiktoken's lookup is slow-ish
def _encoding_for_name(model: str) -> tuple[str, str | None]:
    try:
        name = tiktoken.model.encoding_name_for_model(model)
    except KeyError:
        for prefix, encoding in _EXTRA_MODEL_PREFIXES.items():
            if model.startswith(prefix):
                return encoding, None
        return DEFAULT_ENCODING, f"unknown model {model!r}: counted with {DEFAULT_ENCODING}"
    name = _ENCODING_ALIASES.get(name, name)
    if name not in _OFFLINE_ENCODINGS:
        return DEFAULT_ENCODING, (
            f"model {model!r} uses {name}, which gptbatch cannot load offline: "
            f"counted with {DEFAULT_ENCODING}"
        )
    return name, None


_PIECE = 10_000  # characters per piece when tiktoken gives up on a whole text


def _pieces_len(enc: tiktoken.Encoding, text: str) -> int:
    """Tokens of text counted in pieces: a little high at the cuts, never fails."""
    total = 0
    for start in range(0, len(text), _PIECE):
        piece = text[start : start + _PIECE]
        try:
            total += len(enc.encode(piece, disallowed_special=()))
        except ValueError:
            total += len(piece.encode("utf-8", "surrogatepass"))  # byte-level BPE: <= bytes
    return total


# encode_ordinary is a quarter faster than encode(..., disallowed_special=()) and gives the
# same tokens, but panics where the regex runs out of stack. That takes a whitespace run of
# most of a million characters (800,000 pass); shorter texts cannot reach it.
_ORDINARY_MAX_CHARS = 100_000
# Counts of short texts (roles, names, shared system prompts) remembered per encoding.
_MEMO_MAX_CHARS = 8192
_MEMO_ENTRIES = 1024
_MEMOS: dict[str, dict[str, int]] = {}


def _text_len(enc: tiktoken.Encoding, text: str) -> tuple[int, bool]:
    """(tokens, whether the text had to be counted in pieces).

    `encode(..., disallowed_special=())` counts special-token strings as text like
    encode_ordinary does, but where tiktoken's regex runs out of backtracking stack (a huge
    run of whitespace, tiktoken issue #15) it raises ValueError instead of panicking.
    """
    if len(text) <= _ORDINARY_MAX_CHARS:
        try:
            return len(enc.encode_ordinary(text)), False
        except BaseException as exc:  # pyo3's PanicException derives from BaseException
            if type(exc).__name__ != "PanicException":
                raise
    try:
        return len(enc.encode(text, disallowed_special=())), False
    except ValueError:
        return _pieces_len(enc, text), True


def count_text(text: str, encoding: str) -> int:
    """Tokens in text; special-token strings such as <|endoftext|> count as ordinary text."""
    return _text_len(get_encoding(encoding), text)[0] if text else 0


# --- images ------------------------------------------------------------------------------------


def _base_model(model: str) -> str:
    """'ft:gpt-4o-mini-2024-07-18:org::id' -> 'gpt-4o-mini-2024-07-18'."""
    if model.startswith("ft:"):
        return model.split(":")[1]
    return model


def _image_rule(model: str | None) -> _TileRule | _PatchRule | None:
    if isinstance(model, str):
        base = _base_model(model)
        for prefix, rule in _IMAGE_RULES:
            if base.startswith(prefix):
                return rule
    return None


def _tile_tokens(width: int, height: int, rule: _TileRule) -> int:
    w, h = Fraction(width), Fraction(height)
    if max(w, h) > 2048:
        scale = 2048 / max(w, h)
        w, h = w * scale, h * scale
    if min(w, h) > 768:  # only ever scaled down
        scale = 768 / min(w, h)
        w, h = w * scale, h * scale
    return rule.base + rule.tile * math.ceil(w / 512) * math.ceil(h / 512)


def _patch_tokens(width: int, height: int, rule: _PatchRule) -> int:
    patches = math.ceil(width / _PATCH) * math.ceil(height / _PATCH)
    if patches > _MAX_PATCHES:
        r = math.sqrt(_PATCH * _PATCH * _MAX_PATCHES / (width * height))
        pw, ph = width * r / _PATCH, height * r / _PATCH
        r *= min(max(1, math.floor(pw)) / pw, max(1, math.floor(ph)) / ph)
        # the guide's arithmetic is exact; step back from float noise above whole patches
        pw, ph = width * r / _PATCH, height * r / _PATCH
        patches = min(_MAX_PATCHES, math.ceil(pw - 1e-9) * math.ceil(ph - 1e-9))
    return -(-patches * rule.multiplier_pct // 100)


def image_tokens(width: int, height: int, detail: str, model: str) -> int:
    """Tokens for an image of known size; unknown models get gpt-4o's rule."""
    rule = _image_rule(model) or _GPT4O_TILES
    width, height = max(1, int(width)), max(1, int(height))
    if isinstance(rule, _PatchRule):  # the guide gives these models no detail levels
        return _patch_tokens(width, height, rule)
    if detail == "low":
        return rule.base
    return _tile_tokens(width, height, rule)


def max_image_tokens(detail: str, model: str) -> int:
    """The most an image of any size can cost at this detail level for this model."""
    rule = _image_rule(model) or _GPT4O_TILES
    if isinstance(rule, _PatchRule):
        return -(-_MAX_PATCHES * rule.multiplier_pct // 100)
    if detail == "low":
        return rule.base
    return rule.base + _MAX_TILES * rule.tile


_TRUNCATED = "truncated"

_JPEG_SOF = frozenset(
    {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
)


def _jpeg_size(data: bytes) -> tuple[int, int] | str | None:
    i, n = 2, len(data)
    while True:
        while i < n and data[i] != 0xFF:  # tolerate garbage between segments
            i += 1
        while i < n and data[i] == 0xFF:  # fill bytes
            i += 1
        if i >= n:
            return _TRUNCATED
        marker = data[i]
        i += 1
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            return None
        if i + 2 > n:
            return _TRUNCATED
        if marker in _JPEG_SOF:
            if i + 7 > n:
                return _TRUNCATED
            height = int.from_bytes(data[i + 3 : i + 5], "big")
            width = int.from_bytes(data[i + 5 : i + 7], "big")
            return width, height
        i += int.from_bytes(data[i : i + 2], "big")


def _webp_size(data: bytes) -> tuple[int, int] | str | None:
    if len(data) < 30:
        return _TRUNCATED
    chunk = data[12:16]
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":  # lossy key frame
        width = int.from_bytes(data[26:28], "little") & 0x3FFF
        height = int.from_bytes(data[28:30], "little") & 0x3FFF
        return width, height
    if chunk == b"VP8L" and data[20] == 0x2F:  # lossless: 14-bit width-1, height-1
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":  # extended: 24-bit canvas width-1, height-1
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    return None


def _header_size(data: bytes) -> tuple[int, int] | str | None:
    """(width, height) from a PNG/JPEG/GIF/WebP header; _TRUNCATED if more bytes are needed."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        if len(data) < 24:
            return _TRUNCATED
        if data[12:16] != b"IHDR":
            return None
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data.startswith(b"\xff\xd8"):
        return _jpeg_size(data)
    if data[:6] in (b"GIF87a", b"GIF89a"):
        if len(data) < 10:
            return _TRUNCATED
        return int.from_bytes(data[6:8], "little"), int.from_bytes(data[8:10], "little")
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_size(data)
    if len(data) < 12 and any(
        sig.startswith(data) for sig in (b"\x89PNG\r\n\x1a\n", b"\xff\xd8", b"GIF8", b"RIFF")
    ):
        return _TRUNCATED
    return None


def _data_url_size(url: str) -> tuple[int, int] | None:
    """Decode only as much of a base64 data URL as the header needs (JPEG EXIF may need more)."""
    comma = url.find(",")
    if comma < 0 or not url[:comma].lower().endswith(";base64"):
        return None
    payload_start, chars = comma + 1, 4096
    while True:
        chunk = "".join(url[payload_start : payload_start + chars].split())  # MIME line breaks
        chunk = chunk[: len(chunk) - len(chunk) % 4]
        try:
            data = base64.b64decode(chunk)
        except (binascii.Error, ValueError):
            return None
        found = _header_size(data)
        if found != _TRUNCATED:
            return found if isinstance(found, tuple) else None
        if payload_start + chars >= len(url):
            return None
        chars *= 8


def image_size(data_url_or_bytes: str | bytes) -> tuple[int, int] | None:
    """(width, height) of a PNG, JPEG, GIF or WebP image given as bytes or a base64 data URL."""
    if isinstance(data_url_or_bytes, str):
        if not data_url_or_bytes.startswith("data:"):
            return None
        return _data_url_size(data_url_or_bytes)
    found = _header_size(bytes(data_url_or_bytes[:65536]))
    if found == _TRUNCATED and len(data_url_or_bytes) > 65536:
        found = _header_size(bytes(data_url_or_bytes))
    return found if isinstance(found, tuple) else None


# --- counting one request ----------------------------------------------------------------------


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Tally:
    """Counting context for one request: its model, encoder and caveats so far."""

    __slots__ = ("caveats", "enc", "encoding", "functions", "memo", "model")

    def __init__(self, model: Any) -> None:
        self.encoding, caveat = encoding_name_for_model(model)
        self.model: str | None = model if isinstance(model, str) else None
        self.enc = get_encoding(self.encoding)
        self.functions = _FUNCTION_CONSTANTS[self.encoding]
        self.caveats: list[str] = [caveat] if caveat else []
        self.memo = _MEMOS.setdefault(self.encoding, {})

    def note(self, caveat: str) -> None:
        if caveat not in self.caveats:
            self.caveats.append(caveat)

    def count(self, text: str) -> int:
        memo = self.memo
        tokens = memo.get(text)
        if tokens is not None:
            return tokens
        tokens, in_pieces = _text_len(self.enc, text)
        if in_pieces:
            self.note("a text too repetitive for tiktoken was counted in pieces")
        elif len(text) <= _MEMO_MAX_CHARS:
            if len(memo) >= _MEMO_ENTRIES:
                memo.clear()
            memo[text] = tokens
        return tokens

    def text(self, value: Any) -> int:
        """Tokens of a string; anything else is counted as its JSON text, with a caveat."""
        if isinstance(value, str):
            return self.count(value) if value else 0
        if value is None:
            return 0
        return self.json(value, f"unexpected {type(value).__name__} where text was expected")

    def json(self, value: Any, why: str) -> int:
        self.note(f"{why}: counted as JSON text")
        return self.json_text(value)

    def json_text(self, value: Any) -> int:
        """Tokens of value's canonical JSON text."""
        try:
            text = canonical_json(value).decode()
        except (TypeError, ValueError):  # NaN or a non-JSON object: still count something
            text = json.dumps(value, default=str)
        return self.count(text)

    def estimate(self, tokens: int) -> Estimate:
        return Estimate(tokens, self.encoding, tuple(self.caveats))

    # images ---------------------------------------------------------------------------------

    def image(self, url: Any, detail: Any) -> int:
        detail = detail if detail in ("low", "high", "auto") else "auto"
        model = self.model or ""
        if _image_rule(self.model) is None:
            self.note(
                f"no published image rule for model {self.model!r}: images counted with "
                "gpt-4o's (85 + 170 per tile)"
            )
        rule = _image_rule(self.model) or _GPT4O_TILES
        if isinstance(rule, _TileRule) and detail == "low":
            return rule.base
        size = image_size(url) if isinstance(url, str) else None
        if size is not None:
            return image_tokens(size[0], size[1], detail, model)
        maximum = max_image_tokens(detail, model)
        if not isinstance(url, str):
            where = "a file id" if url is None else f"an unexpected {type(url).__name__}"
        elif url.startswith("data:"):
            where = "a data URL of an unrecognised format"
        else:
            where = _short(url)
        which = "the maximum" if isinstance(rule, _PatchRule) else "the high-detail maximum"
        self.note(f"image of unknown size at {where}: counted as {which} {maximum}")
        return maximum

    # function definitions (cookbook num_tokens_for_tools) -----------------------------------

    def function_definitions(self, functions: list[Mapping[str, Any]]) -> int:
        """Tokens of function definitions: name, description and parameters, per the cookbook."""
        if not functions:
            return 0
        c = self.functions
        total = c.func_end
        for function in functions:
            name = function.get("name")
            desc = function.get("description") or ""
            total += c.func_init + self.text(f"{_str(name)}:{_strip_period(_str(desc))}")
            params = function.get("parameters")
            if isinstance(params, Mapping):
                total += self.properties(params.get("properties"))
            elif params is not None:
                total += self.json(params, "function parameters that are not an object")
        return total

    def properties(self, props: Any) -> int:
        """Cookbook property lines, recursing into nested objects and array items.

        Recursion is our extension (the cookbook's example is flat): a nested object's
        properties count exactly like top-level ones; anyOf/oneOf/allOf count as JSON text.
        """
        if not isinstance(props, Mapping) or not props:
            return 0
        c = self.functions
        total = c.prop_init
        for key, schema in props.items():
            total += c.prop_key
            if not isinstance(schema, Mapping):
                total += self.text(f"{key}:")
                continue
            enum = schema.get("enum")
            if isinstance(enum, list):
                total += c.enum_init
                for item in enum:
                    total += c.enum_item + self.text(_str(item))
            desc = _strip_period(_str(schema.get("description") or ""))
            total += self.text(f"{key}:{_type_name(schema.get('type'))}:{desc}")
            total += self.properties(schema.get("properties"))
            items = schema.get("items")
            if isinstance(items, Mapping):
                total += self.properties(items.get("properties"))
                if isinstance(items.get("enum"), list):
                    for item in items["enum"]:
                        total += c.enum_item + self.text(_str(item))
            for combinator in ("anyOf", "oneOf", "allOf"):
                if combinator in schema:
                    self.note(f"'{combinator}' in a function parameter: counted as JSON text")
                    total += self.json_text(schema[combinator])
        return total

    def tool_definitions(self, tools: Any, *, flat: bool) -> int:
        """Chat `tools` ({type, function: {...}}) or Responses `tools` (flat: {type, name, ...})."""
        if not isinstance(tools, list):
            return 0 if tools is None else self.json(tools, "'tools' that is not a list")
        functions: list[Mapping[str, Any]] = []
        for tool in tools:
            if not isinstance(tool, Mapping):
                continue
            kind = tool.get("type", "function")
            if kind == "function":
                function = tool if flat else tool.get("function")
                if isinstance(function, Mapping):
                    functions.append(function)
            elif kind == "custom":
                functions.append({"name": tool.get("name"), "description": tool.get("description")})
                self.note("custom tool: its grammar/format is not counted")
            else:
                self.note(f"built-in tool {_str(kind)!r}: its prompt overhead is not counted")
        return self.function_definitions(functions)

    def tool_call(self, name: Any, arguments: Any) -> int:
        return TOKENS_PER_TOOL_CALL + self.text(name) + self.text(arguments)


def _str(value: Any) -> str:
    return value if isinstance(value, str) else "" if value is None else str(value)


def _strip_period(text: str) -> str:
    return text[:-1] if text.endswith(".") else text


def _type_name(value: Any) -> str:
    if isinstance(value, list):
        return " | ".join(_str(v) for v in value)
    return _str(value)


# --- chat completions --------------------------------------------------------------------------


def _chat_part(t: _Tally, part: Any) -> int:
    if isinstance(part, str):
        return t.text(part)
    if not isinstance(part, Mapping):
        return t.text(part)
    kind = part.get("type")
    if kind == "text":
        return t.text(part.get("text"))
    if kind == "refusal":
        return t.text(part.get("refusal"))
    if kind == "image_url":
        image = part.get("image_url")
        if isinstance(image, Mapping):
            return t.image(image.get("url"), image.get("detail"))
        return t.image(image, None)
    if kind == "input_audio":
        t.note("audio input is not counted")
        return 0
    if kind == "file":
        t.note("file input (e.g. PDF) is not counted")
        return 0
    return t.json(part, f"content part of unknown type {_str(kind)!r}")


def _content(t: _Tally, content: Any, part: Callable[[_Tally, Any], int]) -> int:
    if isinstance(content, list):
        return sum(part(t, p) for p in content)
    return t.text(content)


def _chat_message(t: _Tally, message: Any) -> int:
    if not isinstance(message, Mapping):
        return TOKENS_PER_MESSAGE + t.json(message, "a message that is not an object")
    total = TOKENS_PER_MESSAGE
    for key, value in message.items():
        if key == "content":
            total += _content(t, value, _chat_part)
        elif key == "tool_calls":
            for call in value if isinstance(value, list) else ():
                function = call.get("function") if isinstance(call, Mapping) else None
                if isinstance(function, Mapping):
                    total += t.tool_call(function.get("name"), function.get("arguments"))
                else:
                    total += t.json(call, "a tool call that is not a function call")
        elif key == "function_call" and isinstance(value, Mapping):
            total += t.tool_call(value.get("name"), value.get("arguments"))
        elif key == "audio" and value is not None:
            t.note("assistant audio (by id) is not counted")
        elif key == "name":
            total += t.text(value) + TOKENS_PER_NAME
        elif isinstance(value, str):  # role, tool_call_id, refusal: like the cookbook, every string
            total += t.text(value)
        elif value is not None:
            total += t.json(value, f"message field {key!r}")
    return total


def _response_format(t: _Tally, fmt: Any) -> int:
    """A json_schema format's canonical JSON text: approximate, the rendering is unpublished."""
    if isinstance(fmt, Mapping) and fmt.get("type") == "json_schema":
        schema = fmt.get("json_schema", {k: v for k, v in fmt.items() if k != "type"})
        return t.json_text(schema)
    return 0


def _chat(t: _Tally, body: Mapping[str, Any]) -> int:
    messages = body.get("messages")
    total = REPLY_PRIMING
    if isinstance(messages, list):
        total += sum(_chat_message(t, m) for m in messages)
    elif messages is not None:
        total += t.json(messages, "'messages' that is not a list")
    total += t.tool_definitions(body.get("tools"), flat=False)
    functions = body.get("functions")
    if isinstance(functions, list):
        total += t.function_definitions([f for f in functions if isinstance(f, Mapping)])
    return total + _response_format(t, body.get("response_format"))


# --- responses ---------------------------------------------------------------------------------
# Per-message overhead: the chat figures (3 per message, +3 reply priming), since the Responses
# API renders the same conversation for the same models; `instructions` is one more message.


def _responses_part(t: _Tally, part: Any) -> int:
    if not isinstance(part, Mapping):
        return t.text(part)
    kind = part.get("type")
    if kind in ("input_text", "output_text", "text", "summary_text"):
        return t.text(part.get("text"))
    if kind == "refusal":
        return t.text(part.get("refusal"))
    if kind == "input_image":
        return t.image(part.get("image_url"), part.get("detail"))
    if kind == "input_file":
        t.note("file input (e.g. PDF) is not counted")
        return 0
    if kind == "input_audio":
        t.note("audio input is not counted")
        return 0
    return t.json(part, f"content part of unknown type {_str(kind)!r}")


def _responses_item(t: _Tally, item: Any) -> int:
    if not isinstance(item, Mapping):
        return TOKENS_PER_MESSAGE + t.text(item)
    kind = item.get("type", "message")
    if kind == "message" or ("role" in item and "type" not in item):
        return (
            TOKENS_PER_MESSAGE
            + t.text(item.get("role"))
            + _content(t, item.get("content"), _responses_part)
        )
    if kind == "function_call":
        return TOKENS_PER_MESSAGE + t.tool_call(item.get("name"), item.get("arguments"))
    if kind == "function_call_output":
        output = item.get("output")
        return (
            TOKENS_PER_MESSAGE + t.text(item.get("call_id")) + _content(t, output, _responses_part)
        )
    if kind == "item_reference":
        t.note("referenced item (item_reference) is not counted")
        return 0
    if kind == "reasoning":
        t.note("reasoning item is not counted")
        return 0
    return TOKENS_PER_MESSAGE + t.json(item, f"input item of type {_str(kind)!r}")


def _responses(t: _Tally, body: Mapping[str, Any]) -> int:
    total = REPLY_PRIMING
    instructions = body.get("instructions")
    if instructions:
        total += TOKENS_PER_MESSAGE + t.text("developer") + t.text(instructions)
    items = body.get("input")
    if isinstance(items, str):
        total += TOKENS_PER_MESSAGE + t.text("user") + t.text(items)
    elif isinstance(items, list):
        total += sum(_responses_item(t, item) for item in items)
    elif items is not None:
        total += t.json(items, "'input' that is neither text nor a list")
    total += t.tool_definitions(body.get("tools"), flat=True)
    text = body.get("text")
    if isinstance(text, Mapping):
        total += _response_format(t, text.get("format"))
    if body.get("previous_response_id"):
        t.note("the previous response's context (previous_response_id) is not counted")
    if body.get("prompt"):
        t.note("the stored prompt template ('prompt') is not counted")
    return total


# --- embeddings, completions, moderations --------------------------------------------------------


def _text_or_token_arrays(t: _Tally, value: Any) -> int:
    """A string, a token array, or a list of strings / token arrays; no per-item overhead."""
    if isinstance(value, str) or value is None:
        return t.text(value)
    if isinstance(value, list):
        total = 0
        for item in value:
            if isinstance(item, str):
                total += t.text(item)
            elif isinstance(item, int) and not isinstance(item, bool):
                total += 1  # one element of a token array
            elif isinstance(item, list) and all(
                isinstance(x, int) and not isinstance(x, bool) for x in item
            ):
                total += len(item)
            else:
                total += t.json(item, "an input item that is neither text nor tokens")
        return total
    return t.json(value, "input that is neither text nor tokens")


def _embeddings(t: _Tally, body: Mapping[str, Any]) -> int:
    return _text_or_token_arrays(t, body.get("input"))


def _completions(t: _Tally, body: Mapping[str, Any]) -> int:
    return _text_or_token_arrays(t, body.get("prompt")) + t.text(body.get("suffix"))


def _moderation_part(t: _Tally, part: Any) -> int:
    if isinstance(part, Mapping) and part.get("type") == "text":
        return t.text(part.get("text"))
    if isinstance(part, Mapping) and part.get("type") == "image_url":
        t.note(f"moderation image: counted as a constant {_MODERATION_IMAGE_TOKENS} tokens")
        return _MODERATION_IMAGE_TOKENS
    return t.text(part)


def _moderations(t: _Tally, body: Mapping[str, Any]) -> int:
    value = body.get("input")
    if isinstance(value, list):
        return sum(_moderation_part(t, part) for part in value)
    return t.text(value)


def _prompt_only(what: str) -> Callable[[_Tally, Mapping[str, Any]], int]:
    """Images and videos: the prompt's text tokens can be counted; what is made cannot."""

    def count(t: _Tally, body: Mapping[str, Any]) -> int:
        t.note(f"{what}: only the prompt text is counted; input images and output are not")
        return t.text(body.get("prompt"))

    return count


_ENDPOINTS: dict[str, Callable[[_Tally, Mapping[str, Any]], int]] = {
    "/v1/chat/completions": _chat,
    "/v1/responses": _responses,
    "/v1/embeddings": _embeddings,
    "/v1/completions": _completions,
    "/v1/moderations": _moderations,
    "/v1/images/generations": _prompt_only("image generation"),
    "/v1/images/edits": _prompt_only("image edit"),
    "/v1/videos": _prompt_only("video"),
}


def estimate_request(url: str, body: Mapping[str, Any]) -> Estimate:
    """Estimated prompt tokens of one Batch API request (`url` is its endpoint path)."""
    if not isinstance(body, Mapping):
        t = _Tally(None)
        return t.estimate(t.json(body, "a request body that is not an object"))
    t = _Tally(body.get("model"))
    endpoint = _ENDPOINTS.get(url.split("?", 1)[0].rstrip("/") if isinstance(url, str) else "")
    if endpoint is None:
        t.note(f"unknown endpoint {url!r}: the whole body counted as JSON text")
        return t.estimate(t.json_text(body))
    return t.estimate(endpoint(t, body))
