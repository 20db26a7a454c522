"""The provider boundary: every call the engine and commands make on a remote is a member of
`Provider`, and each provider implements every member."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from gptbatch.api.anthropic import AnthropicRemote
from gptbatch.api.gemini import GeminiRemote
from gptbatch.api.provider import ANTHROPIC_CAPS, GEMINI_CAPS, OPENAI_CAPS, Provider, caps_of
from gptbatch.api.remote import Remote

ROOT = Path(__file__).resolve().parents[2] / "gptbatch"


def _members() -> set[str]:
    return {
        name
        for name, _ in inspect.getmembers(Provider)
        if not name.startswith("_") and name in Provider.__dict__
    } | {"caps"}


def test_every_remote_call_outside_api_is_in_the_protocol() -> None:
    called: set[str] = set()
    for sub in ("engine", "commands", "cli"):
        for path in (ROOT / sub).rglob("*.py"):
            called |= set(re.findall(r"\bremote\.(\w+)\(", path.read_text()))
    assert called, "the grep found no call: the pattern is stale"
    assert called <= _members(), f"not in Provider: {sorted(called - _members())}"


@pytest.mark.parametrize("cls", [Remote, AnthropicRemote, GeminiRemote])
def test_each_provider_implements_every_member(cls: type) -> None:
    missing = [name for name in _members() if not hasattr(cls, name)]
    assert missing == []


def test_caps() -> None:
    assert (OPENAI_CAPS.max_requests, OPENAI_CAPS.budget, OPENAI_CAPS.metadata) == (
        50_000,
        "tokens",
        True,
    )
    assert ANTHROPIC_CAPS.max_requests == 100_000 and ANTHROPIC_CAPS.max_bytes == 256_000_000
    assert ANTHROPIC_CAPS.budget == "requests" and not ANTHROPIC_CAPS.metadata
    assert not ANTHROPIC_CAPS.uploads and ANTHROPIC_CAPS.custom_id_is_key
    assert caps_of(object()) is OPENAI_CAPS and caps_of(Remote) is OPENAI_CAPS
    assert caps_of(AnthropicRemote) is ANTHROPIC_CAPS
    assert caps_of(GeminiRemote) is GEMINI_CAPS and GEMINI_CAPS.uploads
    assert GEMINI_CAPS.custom_id_is_key and not GEMINI_CAPS.metadata  # a display name only
    assert GEMINI_CAPS.budget == "tokens" and GEMINI_CAPS.max_bytes == 2 * 1024**3


def test_a_made_client_is_a_provider() -> None:
    remote = AnthropicRemote(api_key="sk-test", base_url="http://127.0.0.1:9/v1")
    try:
        assert isinstance(remote, Provider)
        assert remote.base_url.rstrip("/") == "http://127.0.0.1:9"  # /v1 is the SDK's to add
    finally:
        remote.close()
    gemini = GeminiRemote(api_key="k", base_url="http://127.0.0.1:9/v1beta/")
    try:
        assert isinstance(gemini, Provider)
        assert gemini.base_url == "http://127.0.0.1:9"  # /v1beta is the SDK's to add
    finally:
        gemini.close()
    openai_remote = Remote(api_key="sk-test", base_url="http://127.0.0.1:9/v1")
    try:
        assert isinstance(openai_remote, Provider)
    finally:
        openai_remote.close()
