"""Streaming JSONL request input: reading and validating lines, and each request's content key."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from gptbatch.canonical import canonical_json, sha256_hex
from gptbatch.errors import InputError, Problem
from gptbatch.fastjson import fast_decoder
from gptbatch.inputs import gemini_lines
from gptbatch.inputs.messages_lines import MESSAGES_URL, check_line

GENERATE_URL = gemini_lines.GENERATE_URL
_OTHERS = frozenset({"body", "params"})  # a line with these is not a Gemini line
ENDPOINTS: tuple[str, ...] = (
    "/v1/chat/completions",
    "/v1/responses",
    "/v1/embeddings",
    "/v1/completions",
    "/v1/moderations",
    "/v1/images/generations",
    "/v1/images/edits",
    "/v1/videos",
)
# Endpoints whose model has a default at the API (images and videos default to one).
MODEL_OPTIONAL: frozenset[str] = frozenset(
    {"/v1/moderations", "/v1/images/generations", "/v1/images/edits", "/v1/videos"}
)
FIELDS: tuple[str, ...] = ("custom_id", "method", "url", "body")
MAX_EMBEDDING_INPUTS = 2048  # the embeddings API takes at most 2048 inputs per request
DEFAULT_MAX_LINE_BYTES = 200_000_000  # the Batch API's input file cap (200 MB)
DEFAULT_MAX_PROBLEMS = 50

_BOM = b"\xef\xbb\xbf"
_FIELD_SET = frozenset(FIELDS)
_ENDPOINT_LIST = ", ".join(ENDPOINTS)
_SHAPE = 'each line is {"custom_id": ..., "method": "POST", "url": ..., "body": {...}}'


@dataclass(frozen=True, slots=True)
class Request:
    """One validated request line, with its content key and where it came from."""

    key: str
    custom_id: str
    method: str
    url: str
    body: Mapping[str, Any]
    path: str
    line: int
    offset: int
    length: int
    size: int = -1  # len(canonical_line()), known once keyed (-1: unknown): not written twice

    @property
    def model(self) -> str | None:
        """The body's model, if any."""
        model = self.body.get("model")
        return model if isinstance(model, str) else None

    def canonical_size(self) -> int:
        """len(canonical_line()), without writing the line again when it is known."""
        return self.size if self.size >= 0 else len(self.canonical_line())

    def canonical_line(self) -> bytes:
        """The request as canonical JSON: the line build uploads, and what the key hashes."""
        return canonical_json(
            {"custom_id": self.custom_id, "method": self.method, "url": self.url, "body": self.body}
        )


def read_requests(
    paths: Sequence[str | Path],
    *,
    model: str | None = None,
    endpoint: str | None = None,
    max_problems: int = DEFAULT_MAX_PROBLEMS,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> Iterator[Request]:
    """Stream the valid requests of paths in order; at the end raise InputError if any were bad.

    model and endpoint come from the config: they fill `body.model` and `url` where a request
    has none (before its key is computed), and a request naming another one is an error.
    """
    if endpoint is not None and endpoint not in (*ENDPOINTS, MESSAGES_URL, GENERATE_URL):
        raise ValueError(f"endpoint {endpoint!r} is not one of {_ENDPOINT_LIST}")
    reader = _Reader([str(p) for p in paths], model, endpoint, max_problems, max_line_bytes)
    for index in range(len(reader.names)):
        yield from reader.read_file(index)
    if reader.count:
        raise InputError(reader.problems, truncated=reader.count - len(reader.problems))


def read_raw_line(path: str | Path, offset: int, length: int) -> bytes:
    """The raw bytes of one line (without its terminator), as located by a Request."""
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(length)
    if len(data) != length:
        raise InputError(
            Problem(
                str(path),
                None,
                f"file ended before byte {offset + length}",
                "the file changed since it was read; run the command again",
            )
        )
    return data


def line_validator(
    paths: Sequence[str | Path],
    *,
    model: str | None = None,
    endpoint: str | None = None,
    max_problems: int = DEFAULT_MAX_PROBLEMS,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> _Reader:
    """The validator read_requests drives, for readers that feed it lines (inputs.scan): its
    read_line(index, number, offset, content, length, group) checks one line as read_requests
    does; problems, count and seen (custom_id -> file << 40 | line) are its state."""
    return _Reader([str(p) for p in paths], model, endpoint, max_problems, max_line_bytes)


def iter_lines(f: BinaryIO, max_line_bytes: int) -> Iterator[tuple[int, int, bytes | None, int]]:
    """(line number, offset, content or None if too long, length) per line, as read_requests."""
    return _iter_lines(f, max_line_bytes)


def _iter_lines(f: BinaryIO, max_line_bytes: int) -> Iterator[tuple[int, int, bytes | None, int]]:
    """Yield (line number, offset, content, content length) per line; content is None if too long.

    Reads with a bounded readline so a huge line is counted, not held in memory.
    """
    limit = max_line_bytes + 5  # room for a BOM and "\r\n"
    readline = f.readline
    offset = 0
    number = 0
    while raw := readline(limit):
        number += 1
        start = offset
        offset += len(raw)
        complete = len(raw) < limit or raw.endswith(b"\n")
        if number == 1 and raw.startswith(_BOM):
            raw = raw[3:]
            start += 3
        if raw.endswith(b"\n"):
            content = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
        elif complete:
            content = raw[:-1] if raw.endswith(b"\r") else raw  # last line, no terminator
        else:
            length, crlf = len(raw), False
            while not raw.endswith(b"\n"):
                tail_cr = raw.endswith(b"\r")
                raw = readline(1 << 20)
                if not raw:
                    crlf = False
                    break
                offset += len(raw)
                length += len(raw)
                crlf = raw.endswith(b"\r\n") or (raw == b"\n" and tail_cr)
            if raw.endswith(b"\n"):
                length -= 2 if crlf else 1
            yield number, start, None, length
            continue
        yield number, start, content, len(content)


def _quote(value: Any, width: int = 60) -> str:
    """A short printable rendering of a value for a message."""
    if isinstance(value, str):
        return repr(value if len(value) <= width else value[:width] + "...")
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= width else text[:width] + "..."


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in JSON")


# One decoder, built once: json.loads with keyword arguments builds a new one per call.
_DECODE = fast_decoder(json.JSONDecoder(parse_constant=_reject_constant).decode)


class _Reader:
    """Per-call reading state: problems so far, custom_ids seen, each file's url."""

    def __init__(
        self,
        names: list[str],
        model: str | None,
        endpoint: str | None,
        max_problems: int,
        max_line_bytes: int,
    ) -> None:
        self.names = names
        self.model = model
        self.endpoint = endpoint
        self.max_problems = max_problems
        self.max_line_bytes = max_line_bytes
        self.problems: list[Problem] = []
        self.count = 0
        # custom_id -> (file index << 40) | line: one int per entry keeps a million ids small.
        self.seen: dict[str, int] = {}

    def problem(self, path: str, line: int | None, message: str, hint: str) -> None:
        self.count += 1
        if len(self.problems) < self.max_problems:
            self.problems.append(Problem(path, line, message, hint))

    def read_file(self, index: int) -> Iterator[Request]:
        path = self.names[index]
        group: list[Any] = [None, 0]  # the file's url and the line that set it
        try:
            with open(path, "rb") as f:
                for number, offset, content, length in _iter_lines(f, self.max_line_bytes):
                    if content is not None and (not content or content.isspace()):
                        continue
                    request = self.read_line(index, number, offset, content, length, group)
                    if request is not None:
                        yield request
        except IsADirectoryError:
            self.problem(path, None, "is a directory", "give the path of a .jsonl file")
        except FileNotFoundError:
            if os.path.islink(path):
                self.problem(
                    path, None, "is a symlink to a missing file", "fix or remove the symlink"
                )
            else:
                self.problem(
                    path, None, "no such file", "check the path (and the inputs in batch.yaml)"
                )
        except OSError as exc:
            self.problem(path, None, f"cannot read: {exc.strerror or exc}", "check the file")

    def read_line(
        self,
        index: int,
        number: int,
        offset: int,
        content: bytes | None,
        length: int,
        group: list[Any],
    ) -> Request | None:
        """Validate one non-blank line; record its problems and return it if it is valid."""
        path = self.names[index]
        if content is None or length > self.max_line_bytes:
            self.too_large(path, number, length)
            return None
        try:
            text = content.decode("utf-8")
        except UnicodeDecodeError as exc:
            self.problem(
                path,
                number,
                f"invalid UTF-8 at byte {exc.start + 1} of the line",
                "save the file as UTF-8",
            )
            return None
        try:
            obj = _DECODE(text)
        except json.JSONDecodeError as exc:
            self.problem(
                path,
                number,
                f"not valid JSON: {exc.msg} at column {exc.colno}",
                f"{_SHAPE}, one per line",
            )
            return None
        except ValueError as exc:  # NaN / Infinity
            self.problem(path, number, f"not valid JSON: {exc}", "use null or a finite number")
            return None
        except RecursionError:
            self.problem(path, number, "not valid JSON: nested too deeply", "flatten the request")
            return None
        if not isinstance(obj, dict):
            kind = type(obj).__name__ if obj is not None else "null"
            self.problem(path, number, f"not a JSON object (got {kind})", _SHAPE)
            return None
        fields = self.check_fields(index, number, obj, group)
        if fields is None:
            return None
        custom_id, method, url, body = fields
        try:
            line = canonical_json(
                {"custom_id": custom_id, "method": method, "url": url, "body": body}
            )
        except UnicodeEncodeError:
            self.problem(
                path,
                number,
                "contains an unpaired surrogate escape (e.g. \\ud800)",
                "the API cannot encode it as UTF-8; fix or remove the broken character",
            )
            return None
        except ValueError:  # 1e400 parses as inf, which JSON cannot carry
            self.problem(
                path,
                number,
                "number out of range (e.g. 1e400)",
                "JSON numbers must be finite; use a smaller number or a string",
            )
            return None
        except RecursionError:
            self.problem(path, number, "nested too deeply", "flatten the request")
            return None
        if len(line) > self.max_line_bytes:
            self.too_large(path, number, len(line))
            return None
        return Request(
            sha256_hex(line), custom_id, method, url, body, path, number, offset, length, len(line)
        )

    def check_fields(
        self, index: int, number: int, obj: dict[str, Any], group: list[Any]
    ) -> tuple[str, str, str, dict[str, Any]] | None:
        """Check every field of a request, recording each problem; its fields if none."""
        if self.endpoint == GENERATE_URL or ("request" in obj and not obj.keys() & _OTHERS):
            return gemini_lines.check_line(self, index, number, obj)  # Gemini's, or a mix-up
        if self.endpoint == MESSAGES_URL or ("params" in obj and "body" not in obj):
            return check_line(self, index, number, obj)  # Anthropic's shape, or a mix-up
        path = self.names[index]
        before = self.count
        custom_id = self.check_custom_id(index, number, obj)
        method = self.check_method(path, number, obj)
        url = self.check_url(path, number, obj, group)
        body = self.check_body(path, number, obj, url)
        for extra in [] if obj.keys() <= _FIELD_SET else sorted(obj.keys() - _FIELD_SET):
            self.problem(
                path,
                number,
                f"unknown key {_quote(extra)}",
                "the Batch API accepts only custom_id, method, url and body; "
                "request parameters go inside body",
            )
        if self.count != before:
            return None
        assert custom_id is not None and method is not None and url is not None
        assert body is not None
        return custom_id, method, url, body

    def too_large(self, path: str, number: int, length: int) -> None:
        self.problem(
            path,
            number,
            f"line is {length:,} bytes, over the {self.max_line_bytes:,}-byte per-batch cap",
            "no batch file can hold it; shrink the request",
        )

    def check_custom_id(self, index: int, number: int, obj: dict[str, Any]) -> str | None:
        path = self.names[index]
        if "custom_id" not in obj:
            self.problem(path, number, "missing custom_id", "give every request a unique string id")
            return None
        custom_id = obj["custom_id"]
        if not isinstance(custom_id, str):
            self.problem(
                path,
                number,
                f"custom_id must be a string, got {_quote(custom_id)}",
                'quote it, e.g. "custom_id": "request-1"',
            )
            return None
        if not custom_id:
            self.problem(
                path, number, "custom_id is empty", "give every request a unique string id"
            )
            return None
        first = self.seen.setdefault(custom_id, (index << 40) | number)
        if first >> 40 != index or first & ((1 << 40) - 1) != number:
            where = f"{self.names[first >> 40]}:{first & ((1 << 40) - 1)}"
            self.problem(
                path,
                number,
                f"duplicate custom_id {_quote(custom_id)} (first seen at {where})",
                "custom_ids must be unique across all inputs",
            )
        return custom_id

    def check_method(self, path: str, number: int, obj: dict[str, Any]) -> str | None:
        if "method" not in obj:
            self.problem(path, number, "missing method", 'add "method": "POST"')
            return None
        method = obj["method"]
        if method != "POST":
            self.problem(
                path,
                number,
                f"method {_quote(method)} is not supported",
                'the Batch API only takes "method": "POST"',
            )
            return None
        return method

    def check_url(
        self, path: str, number: int, obj: dict[str, Any], group: list[Any]
    ) -> str | None:
        url = obj.get("url")
        if url is None:
            if self.endpoint is None:
                self.problem(
                    path,
                    number,
                    "missing url",
                    f"add a url (one of {_ENDPOINT_LIST}) or set endpoint in batch.yaml",
                )
                return None
            url = self.endpoint
        elif url not in ENDPOINTS:
            self.problem(
                path,
                number,
                f"url {_quote(url)} is not a Batch API endpoint",
                f"use one of {_ENDPOINT_LIST}",
            )
            return None
        elif self.endpoint is not None and url != self.endpoint:
            self.problem(
                path,
                number,
                f"url {_quote(url)} differs from the config's endpoint {_quote(self.endpoint)}",
                "remove the url from the request or change endpoint in batch.yaml",
            )
            return None
        if group[0] is None:
            group[0], group[1] = url, number
        elif url != group[0]:
            self.problem(
                path,
                number,
                f"url {_quote(url)} differs from {_quote(group[0])} set at {path}:{group[1]}",
                "the Batch API takes one endpoint per input file; "
                "move requests for other endpoints to their own file",
            )
            return None
        return url

    def check_body(
        self, path: str, number: int, obj: dict[str, Any], url: str | None
    ) -> dict[str, Any] | None:
        if "body" not in obj:
            self.problem(path, number, "missing body", "add a body object with the request")
            return None
        body = obj["body"]
        if not isinstance(body, dict):
            self.problem(
                path,
                number,
                f"body must be a JSON object, got {_quote(body)}",
                "put the request parameters in an object",
            )
            return None
        ok = self.check_model(path, number, body, url)
        if body.get("stream") is True:
            self.problem(
                path, number, "body.stream is true", "the Batch API does not stream; remove stream"
            )
            ok = False
        shape = _SHAPES.get(url) if url is not None else None
        wrong = shape(body) if shape is not None else None
        if wrong is not None:
            self.problem(path, number, *wrong)
            ok = False
        return body if ok else None

    def check_model(self, path: str, number: int, body: dict[str, Any], url: str | None) -> bool:
        if "model" not in body:
            if self.model is not None:
                body["model"] = self.model  # ours to change: the dict was just parsed
                return True
            if url is None or url in MODEL_OPTIONAL:  # a bad url is reported already
                return True
            self.problem(
                path,
                number,
                "body.model is missing",
                "add a model to body or set model in batch.yaml",
            )
            return False
        model = body["model"]
        if not isinstance(model, str) or not model:
            self.problem(
                path,
                number,
                f"body.model must be a non-empty string, got {_quote(model)}",
                'name the model, e.g. "model": "gpt-4o-mini"',
            )
            return False
        if self.model is not None and model != self.model:
            self.problem(
                path,
                number,
                f"body.model {_quote(model)} differs from the config's model {_quote(self.model)}",
                "remove the model from the request or change model in batch.yaml",
            )
            return False
        return True


# --- body shapes per endpoint: only what the API certainly rejects --------------------------------
# Each returns (what is wrong, what to do) or None. Extra fields are the API's business.

_Wrong = tuple[str, str] | None


def _kind(value: Any) -> str:
    """The JSON type of a value, for messages."""
    if value is None:
        return "null"
    return _JSON_KINDS.get(type(value), type(value).__name__)


_JSON_KINDS = {bool: "a boolean", int: "a number", float: "a number", str: "a string"}
_JSON_KINDS.update({dict: "an object", list: "a list"})


def _chat_shape(body: dict[str, Any]) -> _Wrong:
    messages = body.get("messages")
    if type(messages) is list and messages:  # the common case first, without enumerate
        for message in messages:
            if type(message) is not dict or type(message.get("role")) is not str:
                break
        else:
            return None
    example = '"messages": [{"role": "user", "content": "..."}]'
    if messages is None:
        return "body.messages is missing", f"add the conversation, e.g. {example}"
    if type(messages) is not list:
        return f"body.messages must be a list, got {_kind(messages)}", f"e.g. {example}"
    if not messages:
        return "body.messages is empty", f"the API needs at least one message, e.g. {example}"
    for index, message in enumerate(messages):
        if type(message) is not dict:
            return (
                f"body.messages[{index}] must be an object, got {_kind(message)}",
                'each message is {"role": ..., "content": ...}',
            )
        if type(message.get("role")) is not str:
            what = "is missing" if "role" not in message else "must be a string"
            return (
                f"body.messages[{index}].role {what}",
                'give each message a role, e.g. "role": "user"',
            )
    return None


def _responses_shape(body: dict[str, Any]) -> _Wrong:
    # Every field of a Responses request is optional (a stored prompt can supply the input).
    items = body.get("input")
    if items is None or type(items) in (str, list):
        return None
    return (
        f"body.input must be a string or a list, got {_kind(items)}",
        'give the prompt as text, e.g. "input": "...", or as a list of input items',
    )


def _token_arrays(items: Any) -> bool:
    """Is items a string, a list of strings, a list of ints or a list of lists of ints?"""
    if type(items) is str:
        return True
    if type(items) is not list or not items:
        return type(items) is list
    first = type(items[0])
    if first is str or first is int:
        return all(type(item) is first for item in items)
    return all(type(item) is list and all(type(token) is int for token in item) for item in items)


_TEXT_OR_TOKENS = "a string, a list of strings, a list of token ids or a list of token-id lists"


def _embeddings_shape(body: dict[str, Any]) -> _Wrong:
    items = body.get("input")
    if items is None:
        return "body.input is missing", "add the text to embed as input"
    if items == "" or items == []:
        return "body.input is empty", "the embeddings API rejects empty input"
    if not _token_arrays(items):
        return f"body.input is {_kind(items)} of the wrong form", f"give {_TEXT_OR_TOKENS}"
    # A flat list of ints is one tokenised input; any other list holds one input per item.
    if type(items) is list and type(items[0]) is not int and len(items) > MAX_EMBEDDING_INPUTS:
        return (
            f"body.input has {len(items):,} items, over the API's "
            f"{MAX_EMBEDDING_INPUTS} per request",
            f"split it into requests of at most {MAX_EMBEDDING_INPUTS} inputs",
        )
    return None


def _completions_shape(body: dict[str, Any]) -> _Wrong:
    if "prompt" not in body:
        return "body.prompt is missing", 'add the text to complete, e.g. "prompt": "..."'
    prompt = body["prompt"]
    if prompt is not None and not _token_arrays(prompt):
        return f"body.prompt is {_kind(prompt)} of the wrong form", f"give {_TEXT_OR_TOKENS}"
    return None


def _moderations_shape(body: dict[str, Any]) -> _Wrong:
    items = body.get("input")
    if items is None:
        return "body.input is missing", 'add the text to classify, e.g. "input": "..."'
    if type(items) is str or (
        type(items) is list and all(type(item) in (str, dict) for item in items)
    ):
        return None
    return (
        f"body.input is {_kind(items)} of the wrong form",
        "give a string, a list of strings, or a list of content objects such as "
        '{"type": "text", "text": "..."}',
    )


def _prompt_shape(body: dict[str, Any]) -> _Wrong:
    prompt = body.get("prompt")
    if type(prompt) is not str or not prompt:
        return (
            "body.prompt is missing or not a string",
            'describe what to make, e.g. "prompt": "..."',
        )
    return None


def _image_edit_shape(body: dict[str, Any]) -> _Wrong:
    wrong = _prompt_shape(body)
    if wrong is None and body.get("image") is None and body.get("images") is None:
        return "body.image is missing", "give the image to edit (a URL or a file id)"
    return wrong


_SHAPES = {
    "/v1/chat/completions": _chat_shape,
    "/v1/responses": _responses_shape,
    "/v1/embeddings": _embeddings_shape,
    "/v1/completions": _completions_shape,
    "/v1/moderations": _moderations_shape,
    "/v1/images/generations": _prompt_shape,
    "/v1/images/edits": _image_edit_shape,
    "/v1/videos": _prompt_shape,
}
