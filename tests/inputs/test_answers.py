"""gptbatch.inputs.answers: answer texts, and the schema check agreeing with jsonschema."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from gptbatch.inputs.answers import AnswerCheck, _fast_check, answer_schema, answer_text

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-3, 3)
    | st.floats(-3, 3, allow_nan=False)
    | st.sampled_from(["a", "b", "positive"]),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["a", "b", "c"]), inner, max_size=3)
    ),
    max_leaves=8,
)
types = st.sampled_from(["object", "array", "string", "boolean", "null", "number", "integer"])
leaf_schemas = st.one_of(
    st.builds(lambda t: {"type": t}, types),
    st.builds(lambda ts: {"type": ts}, st.lists(types, min_size=1, max_size=3, unique=True)),
    st.builds(lambda e: {"enum": e}, st.lists(json_values, min_size=1, max_size=3)),
    st.builds(lambda c: {"const": c, "description": "x"}, json_values),
    st.builds(lambda e: {"type": "string", "enum": e}, st.lists(st.sampled_from("ab"), min_size=1)),
)
schemas = st.recursive(
    leaf_schemas,
    lambda inner: (
        st.builds(
            lambda props, req, extra: {
                "type": "object",
                "properties": props,
                "required": [k for k in req if k in props],
                "additionalProperties": extra,
            },
            st.dictionaries(st.sampled_from(["a", "b", "c"]), inner, max_size=3),
            st.lists(st.sampled_from(["a", "b", "c"]), unique=True),
            st.booleans(),
        )
        | st.builds(lambda item: {"type": "array", "items": item}, inner)
    ),
    max_leaves=6,
)


@settings(max_examples=400, deadline=None)
@given(schemas, json_values)
def test_the_fast_check_agrees_with_jsonschema(schema: dict[str, Any], value: Any) -> None:
    fast = _fast_check(schema)
    assert fast is not None, schema  # the subset is checked directly
    assert fast(value) == Draft202012Validator(schema).is_valid(value), (schema, value)


def test_other_keywords_fall_back_to_jsonschema() -> None:
    schema = {"type": "string", "pattern": "^a"}
    assert _fast_check(schema) is None
    check = AnswerCheck(schema)
    assert check('"abc"') == ("abc", None)
    value, why = check('"xyz"')
    assert value is None and why is not None and "does not match" in why


def test_reasons_name_what_is_wrong() -> None:
    schema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["s"],
        "properties": {"s": {"enum": ["positive", "negative"]}},
    }
    check = AnswerCheck(schema)
    assert check('{"s": "positive"}') == ({"s": "positive"}, None)
    assert check("{")[1].startswith("the answer is not JSON")
    why = check('{"s": "meh"}')[1]
    assert why is not None and "at s" in why and "'meh'" in why
    assert "'s' is a required property" in (check("{}")[1] or "")
    assert check(None)[1] == "the response has no text answer"


def test_answer_text_and_schema_per_endpoint() -> None:
    chat = {"response": {"body": {"choices": [{"message": {"content": "hi"}}]}}}
    responses = {
        "response": {
            "body": {
                "object": "response",
                "output": [
                    {"type": "reasoning"},
                    {"type": "message", "content": [{"type": "output_text", "text": "yo"}]},
                ],
            }
        }
    }
    completion = {"response": {"body": {"choices": [{"text": " done"}]}}}
    embedding = {"response": {"body": {"data": [{"embedding": [0.1]}]}}}
    assert answer_text(chat) == "hi"
    assert answer_text(responses) == "yo"
    assert answer_text(completion) == " done"
    assert answer_text(embedding) is None
    schema = {"type": "object"}
    fmt = {"type": "json_schema", "json_schema": {"name": "n", "schema": schema}}
    assert (
        answer_schema({"url": "/v1/chat/completions", "body": {"response_format": fmt}}) == schema
    )
    text = {"format": {"type": "json_schema", "name": "n", "schema": schema}}
    assert answer_schema({"url": "/v1/responses", "body": {"text": text}}) == schema
    assert answer_schema({"url": "/v1/chat/completions", "body": {}}) is None
    json_object = {"response_format": {"type": "json_object"}}
    assert answer_schema({"url": "/v1/chat/completions", "body": json_object}) is None
