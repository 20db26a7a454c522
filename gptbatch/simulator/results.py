"""The simulator's own token counts and deterministic response bodies for each endpoint.

This deliberately does not use gptbatch's estimator (gptbatch.inputs.tokens): the simulator checks
it, so it counts in its own simple way with tiktoken directly:
- chat: 3 tokens per message + its text parts (+1 and the name if named) + 3 to prime the reply;
  each image part counts 85 tokens; tools count as the tokens of their JSON;
- responses: `instructions` + the input (a string, or items counted like chat messages);
- embeddings, completions, moderations: the tokens of each input text (token-id arrays count
  their length).
Response bodies are derived from sha256 of the canonical request body, so a test can check
that each result belongs to its request.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import math
import random
import struct
from typing import Any

import tiktoken

from gptbatch.canonical import canonical_json, sha256_hex
from gptbatch.inputs.encodings import get_encoding
from gptbatch.simulator.answers import INVALID_JSON, json_schema, reply_json

__all__ = [
    "ENDPOINTS",
    "TokenCounter",
    "embedding_input_count",
    "encoding_name",
    "error_body",
    "request_digest",
    "result_order",
    "success_body",
]

# Endpoints a batch may target, with the name the service uses in messages and the body
# parameter each request must carry besides `model`.
ENDPOINTS: dict[str, tuple[str, str]] = {
    "/v1/chat/completions": ("Chat Completions", "messages"),
    "/v1/responses": ("Responses", "input"),
    "/v1/embeddings": ("Embeddings", "input"),
    "/v1/completions": ("Completions", "prompt"),
    "/v1/moderations": ("Moderations", "input"),
    "/v1/images/generations": ("Images", "prompt"),
    "/v1/images/edits": ("Images", "prompt"),
    "/v1/videos": ("Videos", "prompt"),
}
# Endpoints whose model the service defaults when a request names none.
DEFAULT_MODELS = {
    "/v1/images/generations": "gpt-image-1",
    "/v1/images/edits": "gpt-image-1",
    "/v1/videos": "sora-2",
}

IMAGE_TOKENS = 85
MODERATION_CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/instructions",
    "self-harm/intent",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)


def encoding_name(model: str) -> str:
    """tiktoken's encoding for a model; o200k_base for models tiktoken does not know."""
    try:
        return tiktoken.encoding_name_for_model(model)
    except KeyError:
        return "o200k_base"


def request_digest(body: Any) -> str:
    """sha256 of the canonical JSON of a request body: what each result echoes back."""
    return sha256_hex(canonical_json(body))


def _parts_text(content: Any) -> tuple[list[str], int]:
    """Texts in a message content (string or list of parts) and the number of images."""
    if isinstance(content, str):
        return [content], 0
    texts: list[str] = []
    images = 0
    if isinstance(content, list):
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict):
                if isinstance(part.get("text"), str):
                    texts.append(part["text"])
                elif str(part.get("type", "")).endswith("image") or "image_url" in part:
                    images += 1
    return texts, images


def _input_texts(value: Any) -> tuple[list[str], int]:
    """Texts of an embeddings/completions/moderations input, and raw token ids counted."""
    if isinstance(value, str):
        return [value], 0
    if isinstance(value, list):
        if value and all(isinstance(v, int) for v in value):
            return [], len(value)
        texts: list[str] = []
        ids = 0
        for item in value:
            if isinstance(item, str):
                texts.append(item)
            elif isinstance(item, list):
                ids += sum(1 for v in item if isinstance(v, int))
            elif isinstance(item, dict) and isinstance(item.get("text"), str):
                texts.append(item["text"])
        return texts, ids
    return [], 0


def embedding_input_count(body: dict[str, Any]) -> int:
    """How many embedding inputs one request carries (a string or token array is one)."""
    value = body.get("input")
    if isinstance(value, list) and value and not all(isinstance(v, int) for v in value):
        return len(value)
    return 1


# Characters fastokens does not count as tiktoken does, per encoding: texts holding one are
# counted by tiktoken (tests/simulator/test_sim_counter.py checks this equals the client's
# own guarded set, which tests/inputs/test_fast_counter.py proves by a sweep of code points).
FAST_GUARDED: dict[str, str] = {"cl100k_base": "\u180e", "o200k_base": ""}
# Counted by both at load: any mismatch keeps tiktoken for that encoding.
FAST_CANARY: tuple[str, ...] = (
    "hello world",
    "Don't you think it's   over?\r\n\r\nYES'LL\t\t 12345678 x",
    "naïve café — 東京は晴れ。 안녕하세요 مرحبا שלום नमस्ते",
    "👩‍👩‍👧‍👦 🇫🇷 e\u0301\u0301 \u200b\u00a0 \t\n\n  \n",
    "Simulated reply to request 0123456789abcdef0123456789abcdef0123456789abcdef.",
)
# Longer texts are tiktoken's to count, as in the client (which counts them piecewise):
# fastokens is proven on shorter ones only.
FAST_MAX_CHARS = 100_000


def _fast_encoder(name: str, reference: tiktoken.Encoding) -> Any:
    """fastokens' encode_ordinary for a bundled encoding, or None (not installed, not
    bundled, failed to load, or a canary counted differently from tiktoken)."""
    if name not in FAST_GUARDED:
        return None
    try:
        from fastokens import Tokenizer

        from gptbatch.inputs import encodings

        path = encodings.seed_tiktoken_cache(name)
        if path is None:
            return None
        blob = encodings.BUNDLED[name]
        encode = Tokenizer.from_tiktoken(
            str(path), pattern=blob.pat_str, special_tokens=dict(blob.special_tokens)
        ).encode_ordinary
        if any(len(encode(t)) != len(reference.encode_ordinary(t)) for t in FAST_CANARY):
            return None
    except Exception:  # any failure keeps tiktoken: slower, never wrong
        return None
    return encode


class TokenCounter:
    """Counts prompt tokens with tiktoken; keeps the encodings it has loaded.

    fast: count with fastokens (`gptbatch[fast]`) where it gives tiktoken's counts exactly
    (~10x faster; loading it takes ~2 s and ~300 MB, so only a simulator asked for speed
    does), tiktoken counting the texts fastokens is kept from (FAST_GUARDED, lone
    surrogates, very long texts).
    """

    def __init__(self, fast: bool = False) -> None:
        self.fast = fast
        self._encodings: dict[str, tiktoken.Encoding] = {}
        self._by_model: dict[str, tuple[tiktoken.Encoding, Any, str]] = {}
        self._fast: dict[str, Any] = {}  # encoding name -> fastokens' encode, or None

    def warm(self, model: str = "gpt-4o") -> None:
        """Load a model's counting now (fastokens takes ~2 s): a running service has its
        tokenizer loaded before the first batch is validated."""
        self._counting(model)

    def encoding(self, model: str) -> tiktoken.Encoding:
        """The encoding for a model, loaded once."""
        return self._counting(model)[0]

    def _counting(self, model: str) -> tuple[tiktoken.Encoding, Any, str]:
        """(tiktoken encoding, fastokens' encode or None, guarded characters) for a model."""
        found = self._by_model.get(model)
        if found is None:
            name = encoding_name(model)
            if name not in self._encodings:
                self._encodings[name] = get_encoding(name)
            reference = self._encodings[name]
            if self.fast and name not in self._fast:
                self._fast[name] = _fast_encoder(name, reference)
            fast = self._fast.get(name)
            found = self._by_model[model] = (reference, fast, FAST_GUARDED.get(name, ""))
        return found

    def text(self, model: str, text: str) -> int:
        """Tokens in a text."""
        if not text:
            return 0
        reference, fast, guarded = self._counting(model)
        if fast is not None and len(text) <= FAST_MAX_CHARS and not (guarded and guarded in text):
            try:
                return len(fast(text))
            except UnicodeEncodeError:  # a lone surrogate: tiktoken counts it as U+FFFD
                pass
        return len(reference.encode_ordinary(text))

    def _texts(self, model: str, texts: list[str]) -> int:
        return sum(self.text(model, t) for t in texts)

    def _messages(self, model: str, messages: Any) -> int:
        total = 0
        for message in messages if isinstance(messages, list) else []:
            if not isinstance(message, dict):
                continue
            texts, images = _parts_text(message.get("content"))
            total += 3 + self._texts(model, texts) + IMAGE_TOKENS * images
            if isinstance(message.get("name"), str):
                total += 1 + self.text(model, message["name"])
        return total

    def prompt_tokens(self, endpoint: str, body: dict[str, Any]) -> int:
        """The simulator's prompt-token count for one request body."""
        model = str(body.get("model", ""))
        if endpoint == "/v1/chat/completions":
            total = self._messages(model, body.get("messages")) + 3
            if body.get("tools"):
                total += self.text(model, json.dumps(body["tools"], sort_keys=True))
            return total
        if endpoint == "/v1/responses":
            total = (
                self.text(model, body["instructions"])
                if isinstance(body.get("instructions"), str)
                else 0
            )
            value = body.get("input")
            if isinstance(value, str):
                return total + self.text(model, value) + 3
            return total + self._messages(model, value) + 3
        if endpoint in DEFAULT_MODELS:
            prompt = body.get("prompt")
            return (
                self.text(model or DEFAULT_MODELS[endpoint], prompt)
                if isinstance(prompt, str)
                else 0
            )
        texts, ids = _input_texts(body.get("prompt" if endpoint == "/v1/completions" else "input"))
        return self._texts(model, texts) + ids


# --- response bodies ---------------------------------------------------------------------


def result_order(seed: int, batch_id: str, count: int) -> list[int]:
    """The order a batch's requests finish in: a shuffle seeded by the seed and the batch id."""
    order = list(range(count))
    random.Random(f"{seed}:{batch_id}").shuffle(order)
    return order


BASE62 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
HEX = "0123456789abcdef"


def base_digits(entropy: bytes, length: int, alphabet: str) -> str:
    """`length` digits of `alphabet`, least significant first, of the bytes as a number.

    Every result line carries three such ids, so this takes two digits per division (a
    table of digit pairs) and hex in one step; the ids are those one digit at a time gives.
    """
    number = int.from_bytes(entropy, "big")
    if alphabet == HEX and length:
        return format(number & ((1 << 4 * length) - 1), f"0{length}x")[::-1]
    pairs = _digit_pairs(alphabet)
    square = len(pairs)
    out = []
    for _ in range(length // 2):
        number, pair = divmod(number, square)
        out.append(pairs[pair])
    if length % 2:
        out.append(alphabet[number % len(alphabet)])
    return "".join(out)


@functools.cache
def _digit_pairs(alphabet: str) -> tuple[str, ...]:
    base = len(alphabet)
    return tuple(alphabet[v % base] + alphabet[v // base] for v in range(base * base))


def _ident(seed: str, prefix: str, length: int = 24) -> str:
    """A deterministic id: base62 digits of sha256(seed)."""
    return prefix + base_digits(hashlib.sha256(seed.encode()).digest(), length, BASE62)


def _wants_json(body: dict[str, Any], endpoint: str) -> bool:
    if endpoint == "/v1/responses":
        fmt = (body.get("text") or {}).get("format") if isinstance(body.get("text"), dict) else None
    else:
        fmt = body.get("response_format")
    return isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema")


def _reply_text(
    digest: str, index: int, as_json: bool, schema: dict[str, Any] | None = None
) -> str:
    if schema is not None:
        return reply_json(schema, digest, index)
    if as_json:
        return json.dumps({"simulated": True, "request_sha256": digest, "choice": index})
    suffix = f" (choice {index})" if index else ""
    return f"Simulated reply to request {digest}{suffix}."


def _chat(
    body: dict[str, Any],
    digest: str,
    prompt: int,
    counter: TokenCounter,
    created: int,
    seed: str,
    invalid: bool = False,
) -> tuple[dict[str, Any], int]:
    model = str(body["model"])
    as_json = _wants_json(body, "/v1/chat/completions")
    schema = json_schema(body, "/v1/chat/completions")
    n = body.get("n") if isinstance(body.get("n"), int) and body.get("n", 0) > 0 else 1
    choices = []
    completion = 0
    for index in range(n):
        text = INVALID_JSON if invalid and as_json else _reply_text(digest, index, as_json, schema)
        completion += counter.text(model, text)
        choices.append(
            {
                "index": index,
                "message": {
                    "role": "assistant",
                    "content": text,
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        )
    usage = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }
    return {
        "id": _ident(seed, "chatcmpl-", 29),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage,
        "service_tier": "default",
        "system_fingerprint": "fp_simulator",
    }, completion


def _responses(
    body: dict[str, Any],
    digest: str,
    prompt: int,
    counter: TokenCounter,
    created: int,
    seed: str,
    invalid: bool = False,
) -> tuple[dict[str, Any], int]:
    model = str(body["model"])
    as_json = _wants_json(body, "/v1/responses")
    schema = json_schema(body, "/v1/responses")
    text = INVALID_JSON if invalid and as_json else _reply_text(digest, 0, as_json, schema)
    completion = counter.text(model, text)
    message = {
        "id": _ident(seed + ":msg", "msg_", 32),
        "type": "message",
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }
    return {
        "id": _ident(seed, "resp_", 32),
        "object": "response",
        "created_at": created,
        "status": "completed",
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": model,
        "output": [message],
        "parallel_tool_calls": True,
        "previous_response_id": body.get("previous_response_id"),
        "temperature": body.get("temperature", 1.0),
        "tool_choice": "auto",
        "tools": [],
        "top_p": body.get("top_p", 1.0),
        "metadata": body.get("metadata") or {},
        "usage": {
            "input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + completion,
        },
    }, completion


def _vector(model: str, text_key: str, dimensions: int) -> list[float]:
    rng = random.Random(hashlib.sha256(f"{model}\0{text_key}".encode()).digest())
    values = [rng.gauss(0.0, 1.0) for _ in range(dimensions)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [round(v / norm, 8) for v in values]


def _embeddings(body: dict[str, Any], prompt: int) -> dict[str, Any]:
    model = str(body["model"])
    default = 3072 if "large" in model else 1536
    dims = body.get("dimensions") if isinstance(body.get("dimensions"), int) else default
    value = body["input"]
    if isinstance(value, list) and value and not all(isinstance(v, int) for v in value):
        items = value
    else:
        items = [value]
    data = []
    for index, item in enumerate(items):
        vector = _vector(model, json.dumps(item, sort_keys=True), dims)
        embedding: Any = vector
        if body.get("encoding_format") == "base64":
            embedding = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode("ascii")
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
    }


def _completions(
    body: dict[str, Any], digest: str, prompt: int, counter: TokenCounter, created: int, seed: str
) -> tuple[dict[str, Any], int]:
    model = str(body["model"])
    value = body.get("prompt")
    prompts = (
        len(value)
        if isinstance(value, list) and value and all(isinstance(v, (str, list)) for v in value)
        else 1
    )
    choices = []
    completion = 0
    for index in range(prompts):
        text = " " + _reply_text(digest, index, False)
        completion += counter.text(model, text)
        choices.append({"text": text, "index": index, "logprobs": None, "finish_reason": "stop"})
    return {
        "id": _ident(seed, "cmpl-", 29),
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }, completion


def _moderations(body: dict[str, Any], digest: str, seed: str) -> dict[str, Any]:
    value = body.get("input")
    count = (
        len(value)
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value)
        else 1
    )
    results = []
    for index in range(count):
        rng = random.Random(f"{digest}:{index}")
        results.append(
            {
                "flagged": False,
                "categories": dict.fromkeys(MODERATION_CATEGORIES, False),
                "category_scores": {
                    c: round(rng.random() * 1e-4, 8) for c in MODERATION_CATEGORIES
                },
                "category_applied_input_types": {c: ["text"] for c in MODERATION_CATEGORIES},
            }
        )
    return {"id": _ident(seed, "modr-", 29), "model": str(body["model"]), "results": results}


def success_body(
    endpoint: str,
    body: dict[str, Any],
    *,
    prompt_tokens: int,
    counter: TokenCounter,
    created: int,
    seed: str,
    invalid_json: bool = False,
) -> tuple[dict[str, Any], int]:
    """The 200 response body for a request, and its completion tokens.

    A request asking for JSON gets JSON (matching its schema, if it has one), or with
    invalid_json a reply that does not parse."""
    digest = request_digest(body)
    if endpoint == "/v1/chat/completions":
        return _chat(body, digest, prompt_tokens, counter, created, seed, invalid_json)
    if endpoint == "/v1/responses":
        return _responses(body, digest, prompt_tokens, counter, created, seed, invalid_json)
    if endpoint == "/v1/embeddings":
        return _embeddings(body, prompt_tokens), 0
    if endpoint == "/v1/completions":
        return _completions(body, digest, prompt_tokens, counter, created, seed)
    if endpoint in ("/v1/images/generations", "/v1/images/edits"):
        return _images(body, digest, prompt_tokens, created), 0
    if endpoint == "/v1/videos":
        return _video(body, created, seed), 0
    return _moderations(body, digest, seed), 0


def _images(body: dict[str, Any], digest: str, prompt: int, created: int) -> dict[str, Any]:
    """An image result: a tiny stand-in PNG per image asked for, and token usage."""
    n = body.get("n") if isinstance(body.get("n"), int) else 1
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + digest.encode()).decode("ascii")
    return {
        "created": created,
        "data": [{"b64_json": png} for _ in range(max(1, n))],
        "usage": {
            "input_tokens": prompt,
            "output_tokens": 1056 * max(1, n),
            "total_tokens": prompt + 1056 * max(1, n),
            "input_tokens_details": {"text_tokens": prompt, "image_tokens": 0},
        },
    }


def _video(body: dict[str, Any], created: int, seed: str) -> dict[str, Any]:
    """A video job as the Videos API returns it once done."""
    return {
        "id": _ident(seed, "video_", 24),
        "object": "video",
        "status": "completed",
        "model": str(body.get("model") or DEFAULT_MODELS["/v1/videos"]),
        "created_at": created,
        "seconds": str(body.get("seconds", "4")),
        "size": str(body.get("size", "720x1280")),
        "progress": 100,
    }


def error_body(status: int, message: str | None = None, code: str | None = None) -> dict[str, Any]:
    """An API error body as the service returns it for a failed request."""
    if status == 429:
        error = {
            "message": message or "Rate limit reached for requests. Please try again later.",
            "type": "requests",
            "param": None,
            "code": code or "rate_limit_exceeded",
        }
    elif status >= 500:
        error = {
            "message": message
            or "The server had an error while processing your request. Sorry about that!",
            "type": "server_error",
            "param": None,
            "code": code,
        }
    else:
        error = {
            "message": message or "This request was rejected by a simulated fault.",
            "type": "invalid_request_error",
            "param": None,
            "code": code or "invalid_request",
        }
    return {"error": error}
