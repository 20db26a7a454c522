"""`validate`'s checks: the config's inputs, line by line, offline, as build would see them."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from gptbatch.config.spec import Spec
from gptbatch.engine.outputs import output_paths
from gptbatch.errors import ConfigError, InputError, Problem
from gptbatch.inputs.located import relocate
from gptbatch.inputs.over_limit import over_limit
from gptbatch.inputs.requests import DEFAULT_MAX_PROBLEMS, Request, read_requests
from gptbatch.pricing import unknown_model_hint


def _shown(path: Path) -> str:
    """path relative to the working directory when it is inside it, for shorter messages."""
    try:
        return os.path.relpath(path) if path.is_relative_to(Path.cwd()) else str(path)
    except ValueError:  # another drive on Windows
        return str(path)


def _output_problems(spec: Spec) -> list[Problem]:
    """Result files that would land on an input or on another input's results, as build sees."""
    try:
        output_paths(spec.inputs, spec.output_dir)
    except ConfigError as exc:
        return [
            Problem(p.path, p.line, line, p.hint) if p.path else Problem("", None, line)
            for p in exc.problems
            for line in p.message.splitlines()
        ]
    return []


def _too_big(spec: Spec, request: Request) -> Problem | None:
    """A request over its model's enqueued-token limit; estimated only when there is a limit."""
    limit = spec.limits.token_limit(request.model or "")
    if limit is None:
        return None
    from gptbatch.inputs.tokens import estimate_request  # tiktoken: only paid for with a limit

    return over_limit(request, estimate_request(request.url, request.body).tokens, limit)


def model_warnings(
    spec: Spec, first: dict[str, tuple[str, int]], counts: Counter[str]
) -> list[str]:
    """A warning per unknown model: where it is first used, how often, the closest known name.

    Not an error: a real model newer than gptbatch's list must still work.
    """
    warnings: list[str] = []
    if spec.api.provider != "openai":  # gptbatch's list is OpenAI's (see build.py)
        return warnings
    for model, (path, line) in first.items():
        hint = unknown_model_hint(model, spec.prices)
        if hint is not None:
            n = counts[model]
            warnings.append(f"{path}:{line}: {hint} ({n:,} request{'s' if n != 1 else ''})")
    return warnings


def validate(
    spec: Spec, max_problems: int, warnings: list[str] | None = None
) -> Counter[tuple[str, str]]:
    """Count the requests per (model, url); raise InputError with every problem, in file order.

    Warnings (unknown models) are appended to warnings.
    """
    shown = [_shown(p) for p in spec.inputs]
    first: dict[str, tuple[str, int]] = {}  # model: where it is first used
    per_model: Counter[str] = Counter()
    problems = _output_problems(spec)
    found: list[Problem] = []  # the first max_problems over the token limit, then counted
    truncated = 0
    counts: Counter[tuple[str, str]] = Counter()
    try:
        for request in read_requests(
            shown,
            model=spec.model,
            endpoint=spec.endpoint,
            max_problems=max_problems,
            max_line_bytes=spec.limits.max_bytes_per_batch,
        ):
            counts[(request.model or "(no model)", request.url)] += 1
            if request.model:
                first.setdefault(request.model, (request.path, request.line))
                per_model[request.model] += 1
            too_big = _too_big(spec, request) if spec.limits.enqueued_tokens else None
            if too_big is not None and len(found) < max_problems:
                found.append(too_big)
            elif too_big is not None:
                truncated += 1
    except InputError as exc:
        found += exc.problems
        truncated += exc.truncated
    if warnings is not None:
        warnings += model_warnings(spec, first, per_model)
    if problems or found:
        order = {name: index for index, name in enumerate(shown)}
        found.sort(key=lambda p: (order.get(p.path, -1), p.line or 0))
        problems += found
        truncated += max(0, len(problems) - max_problems)
        # a data target's request: named by its data file and row, not the rendered file
        problems = relocate(problems[:max_problems], spec.targets, spec.data_targets)
        raise InputError(problems, truncated=truncated)
    return counts


def check_inputs(spec: Spec, max_problems: int = DEFAULT_MAX_PROBLEMS) -> None:
    """Raise InputError with every problem validate finds (status reports the same ones)."""
    validate(spec, max(1, max_problems))
