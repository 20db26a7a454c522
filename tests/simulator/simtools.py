"""Helpers shared by the simulator's tests: request lines, uploads, manual-clock services."""

from __future__ import annotations

import io
import json
import random
import time
from collections.abc import Callable
from typing import Any

import openai

from gptbatch.simulator import BatchService, SimConfig, Simulator

START = 1_700_000_000.0
TERMINAL = ("completed", "failed", "expired", "cancelled")


def chat(custom_id: str, text: str = "hello", model: str = "gpt-4o-mini", **body: Any) -> dict:
    """A chat completions request line."""
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": text}], **body},
    }


def embedding(custom_id: str, inputs: Any, model: str = "text-embedding-3-small", **body: Any):
    """An embeddings request line."""
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/embeddings",
        "body": {"model": model, "input": inputs, **body},
    }


def jsonl(lines: list[Any]) -> bytes:
    """Lines (dicts are JSON-encoded, strings kept) joined with newlines, newline-terminated."""
    return b"".join(
        (line if isinstance(line, str) else json.dumps(line)).encode() + b"\n" for line in lines
    )


def fixed_entropy(seed: int = 0) -> Callable[[int], bytes]:
    """An id source that repeats: two services given equal ones hand out the same ids."""
    return random.Random(seed).randbytes


def manual_service(entropy: Callable[[int], bytes] | None = None, **overrides: Any) -> BatchService:
    """A service on a frozen clock: time moves only with service.clock.advance()."""
    values: dict[str, Any] = {
        "time_scale": 0.0,
        "start_time": START,
        "validating_seconds": 10.0,
        "finalizing_seconds": 10.0,
        "cancelling_seconds": 10.0,
        "tokens_per_second": 100.0,
        "total_tokens_per_second": 0.0,
    }
    values.update(overrides)
    if entropy is None:
        return BatchService(SimConfig(**values))
    return BatchService(SimConfig(**values), entropy=entropy)


def submit(
    service: BatchService, lines: list[Any], endpoint: str = "/v1/chat/completions", **params: Any
) -> dict[str, Any]:
    """Upload lines and create a batch over them."""
    upload = service.create_file("input.jsonl", "batch", jsonl(lines))
    return service.create_batch(
        {"input_file_id": upload["id"], "endpoint": endpoint, "completion_window": "24h", **params}
    )


def read_lines(service: BatchService, file_id: str | None) -> list[dict[str, Any]]:
    """The JSON lines of an output or error file ([] for None)."""
    if file_id is None:
        return []
    return [json.loads(line) for line in service.file_content(file_id).splitlines()]


def client(sim: Simulator, **options: Any) -> openai.OpenAI:
    """An openai SDK client pointed at the simulator."""
    return openai.OpenAI(base_url=sim.base_url, api_key="sk-test", **options)


def upload(api: openai.OpenAI, lines: list[Any], name: str = "input.jsonl") -> Any:
    """Upload request lines through the SDK."""
    return api.files.create(file=(name, io.BytesIO(jsonl(lines))), purpose="batch")


def wait(api: openai.OpenAI, batch_id: str, timeout: float = 10.0) -> Any:
    """Poll a batch until it ends (real time)."""
    deadline = time.monotonic() + timeout
    while True:
        batch = api.batches.retrieve(batch_id)
        if batch.status in TERMINAL:
            return batch
        if time.monotonic() > deadline:
            raise AssertionError(f"batch {batch_id} still {batch.status} after {timeout} s")
        time.sleep(0.02)


def content_lines(api: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    """The JSON lines of a file, downloaded through the SDK."""
    if file_id is None:
        return []
    return [json.loads(line) for line in api.files.content(file_id).content.splitlines()]
