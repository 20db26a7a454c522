"""The simulator answers a JSON-schema request with JSON matching the schema, through the SDK,
and can be told to answer some of them with text that is not JSON."""

from __future__ import annotations

import json
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from simtools import chat, client, content_lines, upload, wait

from gptbatch.simulator import Fault

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["sentiment", "score", "tags", "urgent", "note"],
    "properties": {
        "sentiment": {"type": "string", "enum": ["positive", "negative", "neutral"]},
        "score": {"type": "integer", "minimum": 1, "maximum": 5},
        "tags": {"type": "array", "items": {"type": "string"}},
        "urgent": {"type": "boolean"},
        "note": {"type": ["string", "null"]},
    },
}


def schema_chat(custom_id: str, text: str) -> dict[str, Any]:
    fmt = {"type": "json_schema", "json_schema": {"name": "s", "strict": True, "schema": SCHEMA}}
    return chat(custom_id, text, response_format=fmt)


def schema_response(custom_id: str, text: str) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/responses",
        "body": {
            "model": "gpt-4o-mini",
            "input": text,
            "text": {"format": {"type": "json_schema", "name": "s", "schema": SCHEMA}},
        },
    }


def run(sim: Any, lines: list[dict[str, Any]], endpoint: str) -> dict[str, Any]:
    """Submit lines as one batch through the SDK; the answer text of each custom_id."""
    api = client(sim)
    batch = api.batches.create(
        input_file_id=upload(api, lines).id, endpoint=endpoint, completion_window="24h"
    )
    done = wait(api, batch.id)
    answers = {}
    for line in content_lines(api, done.output_file_id):
        body = line["response"]["body"]
        if endpoint == "/v1/responses":
            answers[line["custom_id"]] = body["output"][0]["content"][0]["text"]
        else:
            answers[line["custom_id"]] = body["choices"][0]["message"]["content"]
    return answers


def test_schema_requests_get_json_matching_the_schema(simulator_factory) -> None:
    sim = simulator_factory()
    validator = Draft202012Validator(SCHEMA)
    chats = run(sim, [schema_chat(f"c{i}", f"text {i}") for i in range(20)], "/v1/chat/completions")
    responses = run(sim, [schema_response(f"r{i}", f"t {i}") for i in range(5)], "/v1/responses")
    values = [json.loads(text) for text in [*chats.values(), *responses.values()]]
    assert len(values) == 25
    for value in values:
        assert list(validator.iter_errors(value)) == []
    assert len({v["sentiment"] for v in values}) > 1  # drawn per request, not one constant
    # deterministic per request: the same request in another batch gets the same answer
    again = run(sim, [schema_chat("c3", "text 3")], "/v1/chat/completions")
    assert again["c3"] == chats["c3"]


def test_invalid_json_fault_and_fraction(simulator_factory) -> None:
    sim = simulator_factory(faults=(Fault.invalid_json("bad*", attempts=1),))
    lines = [schema_chat("bad1", "x"), schema_chat("good1", "y")]
    first = run(sim, lines, "/v1/chat/completions")
    assert json.loads(first["good1"])["sentiment"]
    with pytest.raises(ValueError):
        json.loads(first["bad1"])  # the first attempt is cut off
    second = run(sim, [schema_chat("bad1", "x")], "/v1/chat/completions")
    assert list(Draft202012Validator(SCHEMA).iter_errors(json.loads(second["bad1"]))) == []

    share = simulator_factory(invalid_json=0.5)
    answers = run(share, [schema_chat(f"c{i}", "z") for i in range(40)], "/v1/chat/completions")
    broken = 0
    for text in answers.values():
        try:
            json.loads(text)
        except ValueError:
            broken += 1
    assert 8 <= broken <= 32, broken
