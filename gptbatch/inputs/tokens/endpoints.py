"""Per-endpoint walkers: the prompt tokens of one request body, with the doubts noted."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gptbatch.canonical import canonical_json
from gptbatch.inputs.encodings import get_encoding
from gptbatch.inputs.tokens.images import (
    GPT4O_TILES,
    PatchRule,
    TileRule,
    image_rule,
    image_size,
    image_tokens,
    max_image_tokens,
)
from gptbatch.inputs.tokens.text import encoding_name_for_model, text_len

# --- chat formatting constants (cookbook num_tokens_from_messages) ---------------------------
TOKENS_PER_MESSAGE = 3  # <|start|>{role/name}\n{content}<|end|>\n
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3  # every reply is primed with <|start|>assistant<|message|>
# Our own figure (the cookbook publishes none) for each assistant tool call besides its name
# and arguments text: about what the harmony rendering
# `to=functions.NAME<|channel|>commentary json<|message|>ARGS<|call|>` adds.
TOKENS_PER_TOOL_CALL = 7
_MODERATION_IMAGE_TOKENS = 85  # our constant: the gpt-4o low-detail image cost
# Counts of short texts (roles, names, shared system prompts) remembered per encoding.
_MEMO_MAX_CHARS = 8192
_MEMO_ENTRIES = 1024
_MEMOS: dict[str, dict[str, int]] = {}


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


@dataclass(frozen=True)
class Estimate:
    """Estimated prompt tokens of one request, with the encoding used and any doubts."""

    tokens: int
    encoding: str
    caveats: tuple[str, ...] = ()


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
        tokens, in_pieces = text_len(self.enc, text)
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
        if image_rule(self.model) is None:
            self.note(
                f"no published image rule for model {self.model!r}: images counted with "
                "gpt-4o's (85 + 170 per tile)"
            )
        rule = image_rule(self.model) or GPT4O_TILES
        if isinstance(rule, TileRule) and detail == "low":
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
        which = "the maximum" if isinstance(rule, PatchRule) else "the high-detail maximum"
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


_ROLE_AND_CONTENT = frozenset({"role", "content"})


def _chat_message(t: _Tally, message: Any) -> int:
    if type(message) is dict and message.keys() == _ROLE_AND_CONTENT:
        # Most messages: a role and a text; what the loop below gives them, without it.
        role, content = message["role"], message["content"]
        if type(role) is str and type(content) is str:
            return TOKENS_PER_MESSAGE + t.text(role) + t.text(content)
    elif type(message) is not dict and not isinstance(message, Mapping):  # dict: no ABC
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


def _claude(t: _Tally, body: Mapping[str, Any]) -> int:
    """Anthropic's Messages: no offline Claude tokenizer exists, so this is an estimate with
    an OpenAI encoding (the system prompt and messages' text; images as chat images)."""
    t.note("Claude's tokenizer is not public: an estimate with an OpenAI encoding")
    system = body.get("system")
    total = _content(t, system, _chat_part) if system is not None else 0
    return total + _chat(t, {"messages": body.get("messages")})


def _gemini_part(t: _Tally, part: Any) -> int:
    if isinstance(part, Mapping) and isinstance(part.get("text"), str):
        return t.text(part["text"])
    if isinstance(part, Mapping) and part.keys() & {"inlineData", "inline_data", "fileData"}:
        t.note("Gemini media parts are not counted")
        return 0
    return t.json(part, "a Gemini part that is not text")


def _gemini(t: _Tally, body: Mapping[str, Any]) -> int:
    """Gemini's GenerateContentRequest: no offline Gemini tokenizer ships here, so this is an
    estimate with an OpenAI encoding (the system instruction's and contents' text parts)."""
    t.note("Gemini's tokenizer is not used: an estimate with an OpenAI encoding")
    total = REPLY_PRIMING
    system = body.get("systemInstruction") or body.get("system_instruction")
    turns = ([system] if isinstance(system, Mapping) else []) + list(body.get("contents") or [])
    for turn in turns:
        parts = turn.get("parts") if isinstance(turn, Mapping) else None
        total += TOKENS_PER_MESSAGE + _content(
            t, parts if isinstance(parts, list) else [], _gemini_part
        )
    return total


_ENDPOINTS: dict[str, Callable[[_Tally, Mapping[str, Any]], int]] = {
    "/v1/messages": _claude,
    "/v1beta/generateContent": _gemini,
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
    if type(body) is not dict and not isinstance(body, Mapping):
        t = _Tally(None)
        return t.estimate(t.json(body, "a request body that is not an object"))
    t = _Tally(body.get("model"))
    endpoint = _ENDPOINTS.get(url.split("?", 1)[0].rstrip("/") if isinstance(url, str) else "")
    if endpoint is None:
        t.note(f"unknown endpoint {url!r}: the whole body counted as JSON text")
        return t.estimate(t.json_text(body))
    return t.estimate(endpoint(t, body))
