"""OpenAI-compatible batch services by name: a base URL, a key variable, caps and quirks.

Each preset goes through the openai SDK at its own base URL (api/remote.py); what differs
from OpenAI is said here, with where each fact was read (README "Endpoints and providers"
lists what was confirmed and what was not). No SDK is imported here: the config reads these
tables to check a batch.yaml before anything talks to an API.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from gptbatch.api.provider import OPENAI_CAPS, Caps

# The statuses of an OpenAI batch, the only ones the engine knows how to act on.
STATUSES = (
    "validating",
    "in_progress",
    "finalizing",
    "cancelling",
    "completed",
    "failed",
    "expired",
    "cancelled",
)
_SAME = {s: s for s in STATUSES}
_UPPER = {s.upper(): s for s in STATUSES}

MB = 1000 * 1000


@dataclass(frozen=True)
class Preset:
    """An OpenAI-shaped Files + Batches service and how it differs from OpenAI."""

    name: str
    base_url: str | None  # default api.base_url (None: the SDK's, OPENAI_BASE_URL or OpenAI)
    key_env: str
    caps: Caps
    # Completion windows offered: exact names, or (shortest, longest) in seconds; None: any.
    windows: tuple[str, ...] | tuple[int, int] | None = ("24h",)
    upload_purpose: str = "batch"  # files.create purpose (and files.list filter)
    statuses: Mapping[str, str] = field(default_factory=lambda: _SAME)  # theirs -> ours
    file_expiry: bool = True  # accepts expires_after on files.create
    output_expiry: bool = True  # accepts output_expires_after on batches.create


OPENAI = Preset("openai", None, "OPENAI_API_KEY", OPENAI_CAPS)

PRESETS: dict[str, Preset] = {
    # Groq SDK types (groq-python src/groq/types/batch_create_params.py): windows "from
    # 24h to 7d", input file up to 100 MB, purpose batch, metadata accepted. Requests per
    # batch: not found in its docs; OpenAI's 50,000 is assumed.
    "groq": Preset(
        "groq",
        "https://api.groq.com/openai/v1",
        "GROQ_API_KEY",
        Caps("groq", 50_000, 100 * MB, "tokens", True, True),
        windows=(86_400, 7 * 86_400),
    ),
    # docs.together.ai (inference/batch/overview, manage): 50,000 requests and 100 MB per
    # batch, the 24h window only, upload purpose "batch-api", statuses in upper case
    # (VALIDATING, IN_PROGRESS, COMPLETED, FAILED, EXPIRED, CANCELLED), per-request failures
    # in a separate error file even for a COMPLETED batch.
    "together": Preset(
        "together",
        "https://api.together.xyz/v1",
        "TOGETHER_API_KEY",
        Caps("together", 50_000, 100 * MB, "tokens", True, True),
        upload_purpose="batch-api",
        statuses={**_SAME, **_UPPER},  # its docs show upper case; lower case reads the same
    ),
    # docs.perplexity.ai (api-reference/files-create-post, batches-create-post): 50,000
    # lines and 200 MB per input file; expires_after (files) and output_expires_after
    # (batches) are rejected with a 400; files and results are kept 30 days.
    "perplexity": Preset(
        "perplexity",
        "https://api.perplexity.ai/v1",
        "PERPLEXITY_API_KEY",
        Caps("perplexity", 50_000, 200 * MB, "tokens", True, True),
        file_expiry=False,
        output_expiry=False,
    ),
}

# Providers with a batch API gptbatch cannot drive through Files + Batches, and why.
UNSUPPORTED: dict[str, str] = {
    "mistral": (
        "Mistral's batch API is a jobs API (POST /v1/batch/jobs with a list of input files "
        "and one model per job, statuses QUEUED/RUNNING/SUCCESS/TIMEOUT_EXCEEDED/...), not "
        "OpenAI's /v1/batches: the openai SDK cannot create or read its jobs, so gptbatch "
        "has no Mistral preset yet"
    ),
}


def preset_of(provider: str) -> Preset:
    """The preset of an OpenAI-shaped provider (OpenAI's for openai, azure and compatible)."""
    return PRESETS.get(provider, OPENAI)


_WINDOW = re.compile(r"^([1-9][0-9]*)([hd])$")


def window_seconds(window: str) -> int | None:
    """A completion window ("24h", "7d") in seconds; None if it is not one."""
    match = _WINDOW.match(window)
    if match is None:
        return None
    return int(match.group(1)) * (3600 if match.group(2) == "h" else 86_400)


def window_offered(preset: Preset, window: str) -> bool:
    """Does the preset's service take this completion window?"""
    if preset.windows is None:
        return True
    if all(isinstance(w, str) for w in preset.windows):
        return window in preset.windows
    low, high = preset.windows
    seconds = window_seconds(window)
    return seconds is not None and int(low) <= seconds <= int(high)


def windows_text(preset: Preset) -> str:
    """The windows a preset offers, for a message."""
    if preset.windows is None:
        return "any window"
    if all(isinstance(w, str) for w in preset.windows):
        return " or ".join(str(w) for w in preset.windows)
    low, high = preset.windows
    return f"a window from {int(low) // 3600}h to {int(high) // 86_400}d"
