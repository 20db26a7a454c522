"""The simulator's token counts and response bodies, checked against tiktoken and SDK types."""

from __future__ import annotations

import base64
import math
import struct

import pytest
import tiktoken
from openai.types import Completion, CreateEmbeddingResponse, ModerationCreateResponse
from openai.types.chat import ChatCompletion
from openai.types.responses import Response

from gptbatch.inputs.encodings import get_encoding
from gptbatch.simulator.results import (
    TokenCounter,
    embedding_input_count,
    error_body,
    request_digest,
    success_body,
)


def tokens(text: str, encoding: str = "o200k_base") -> int:
    return len(get_encoding(encoding).encode_ordinary(text))


def body_for(endpoint: str, body: dict, prompt: int = 7) -> dict:
    counter = TokenCounter()
    result, _ = success_body(
        endpoint,
        body,
        prompt_tokens=prompt,
        counter=counter,
        created=1_700_000_000,
        seed="batch_x:req",
    )
    return result


def test_chat_count_is_three_per_message_plus_text_plus_three() -> None:
    body = {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Name a prime."},
                    {"type": "image_url", "image_url": {"url": "x"}},
                ],
            },
            {"role": "user", "name": "bob", "content": "And another?"},
        ],
    }
    expected = (
        3
        + tokens("You are terse.")
        + 3
        + tokens("Name a prime.")
        + 85
        + 3
        + tokens("And another?")
        + 1
        + tokens("bob")
        + 3
    )
    assert TokenCounter().prompt_tokens("/v1/chat/completions", body) == expected


def test_counts_use_the_model_encoding() -> None:
    text = "Tokenizers differ: ünïcödé and 12345 digits."
    counter = TokenCounter()
    legacy = counter.prompt_tokens(
        "/v1/embeddings", {"model": "text-embedding-3-small", "input": text}
    )
    modern = counter.prompt_tokens("/v1/completions", {"model": "gpt-4o", "prompt": text})
    assert legacy == tokens(text, "cl100k_base")
    assert modern == tokens(text, "o200k_base")
    assert tiktoken.encoding_name_for_model("text-embedding-3-small") == "cl100k_base"


def test_embedding_inputs_count_texts_and_token_arrays() -> None:
    counter = TokenCounter()
    body = {"model": "text-embedding-3-small", "input": ["alpha beta", "gamma", [1, 2, 3]]}
    assert counter.prompt_tokens("/v1/embeddings", body) == (
        tokens("alpha beta", "cl100k_base") + tokens("gamma", "cl100k_base") + 3
    )
    assert embedding_input_count(body) == 3
    assert embedding_input_count({"input": "one"}) == 1
    assert embedding_input_count({"input": [5, 6, 7]}) == 1


def test_responses_count_instructions_and_input() -> None:
    counter = TokenCounter()
    body = {"model": "gpt-4.1", "instructions": "Be brief.", "input": "What is 2+2?"}
    expected = tokens("Be brief.") + tokens("What is 2+2?") + 3
    assert counter.prompt_tokens("/v1/responses", body) == expected


def test_chat_body_is_a_valid_chat_completion_echoing_the_request_hash() -> None:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "n": 2}
    result = ChatCompletion.model_validate(body_for("/v1/chat/completions", body, prompt=11))
    assert result.usage.prompt_tokens == 11
    assert len(result.choices) == 2
    assert request_digest(body) in result.choices[0].message.content
    assert result.usage.completion_tokens == sum(
        tokens(choice.message.content) for choice in result.choices
    )
    assert body_for("/v1/chat/completions", body, prompt=11) == body_for(
        "/v1/chat/completions", body, prompt=11
    )


def test_json_response_format_gets_json_content() -> None:
    import json

    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "hi"}],
        "response_format": {"type": "json_object"},
    }
    content = body_for("/v1/chat/completions", body)["choices"][0]["message"]["content"]
    assert json.loads(content)["request_sha256"] == request_digest(body)


def test_responses_body_is_a_valid_response() -> None:
    body = {"model": "gpt-4.1", "input": "hello"}
    result = Response.model_validate(body_for("/v1/responses", body, prompt=5))
    assert result.status == "completed"
    assert result.usage.input_tokens == 5
    assert request_digest(body) in result.output_text


@pytest.mark.parametrize(
    ("model", "extra", "dims"),
    [
        ("text-embedding-3-small", {}, 1536),
        ("text-embedding-3-large", {}, 3072),
        ("text-embedding-3-large", {"dimensions": 256}, 256),
    ],
)
def test_embedding_vectors_have_the_requested_dimension(model, extra, dims) -> None:
    body = {"model": model, "input": ["first text", "second text"], **extra}
    result = CreateEmbeddingResponse.model_validate(body_for("/v1/embeddings", body, prompt=4))
    assert [len(item.embedding) for item in result.data] == [dims, dims]
    first, second = (item.embedding for item in result.data)
    assert math.isclose(sum(v * v for v in first), 1.0, rel_tol=1e-5)
    assert first != second
    again = body_for("/v1/embeddings", {"model": model, "input": "first text", **extra})
    assert again["data"][0]["embedding"] == first  # a text's vector does not depend on its batch


def test_base64_embeddings_decode_to_the_same_vector() -> None:
    plain = body_for("/v1/embeddings", {"model": "text-embedding-3-small", "input": "x"})
    packed = body_for(
        "/v1/embeddings",
        {"model": "text-embedding-3-small", "input": "x", "encoding_format": "base64"},
    )
    raw = base64.b64decode(packed["data"][0]["embedding"])
    decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert len(decoded) == 1536
    vector = plain["data"][0]["embedding"]
    assert all(math.isclose(a, b, abs_tol=1e-6) for a, b in zip(decoded, vector, strict=True))


def test_completion_and_moderation_bodies_are_valid() -> None:
    completion = Completion.model_validate(
        body_for("/v1/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": ["a", "b"]})
    )
    assert len(completion.choices) == 2
    moderation = ModerationCreateResponse.model_validate(
        body_for("/v1/moderations", {"model": "omni-moderation-latest", "input": ["a", "b", "c"]})
    )
    assert len(moderation.results) == 3 and not any(r.flagged for r in moderation.results)


@pytest.mark.parametrize(
    ("status", "kind"), [(400, "invalid_request_error"), (429, "requests"), (500, "server_error")]
)
def test_error_bodies(status: int, kind: str) -> None:
    error = error_body(status)["error"]
    assert error["type"] == kind
    assert set(error) == {"message", "type", "param", "code"}
    assert error_body(status, "custom message")["error"]["message"] == "custom message"
