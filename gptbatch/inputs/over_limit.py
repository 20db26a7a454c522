"""A request no queue can ever hold: the one wording validate and build both give it."""

from __future__ import annotations

from gptbatch.errors import Problem
from gptbatch.inputs.requests import Request


def over_limit(request: Request, tokens: int, limit: int | None) -> Problem | None:
    """A Problem if request's estimated tokens exceed limit: such a request can never queue."""
    if limit is None or tokens <= limit:
        return None
    return over_limit_problem(
        request.path, request.line, request.custom_id, request.model, tokens, limit
    )


def over_limit_problem(
    path: str,
    line: int | None,
    custom_id: str,
    model: str | None,
    tokens: int,
    limit: int,
    *,
    also: str = "",
) -> Problem:
    """The one wording, for validate and build alike, of a request no queue can hold."""
    return Problem(
        path,
        line,
        f"request {custom_id!r}: ~{tokens:,} tokens, over the enqueued-token limit of {limit:,} "
        f"for {model or 'requests without a model'}",
        "it can never be queued; split it into smaller requests or raise "
        f"limits.enqueued_tokens{also}",
    )
