"""The Batch API client for commands other than build: the key from the spec, as build gets it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gptbatch.config.spec import Spec, api_key
from gptbatch.errors import UsageError

if TYPE_CHECKING:  # remote imports the openai SDK: only commands that call the API pay for it
    from gptbatch.api.remote import Remote


def connect(spec: Spec, purpose: str) -> Remote:
    """A Remote for the spec's API (api.base_url or OPENAI_BASE_URL); UsageError without a key."""
    key = api_key(spec)
    if not key:
        raise UsageError(
            f"no API key: {purpose} needs one: set {spec.api.api_key_env} (or put it in a "
            f".env file beside {spec.path.name})"
        )
    from gptbatch.api.remote import Remote

    return Remote(
        api_key=key,
        base_url=spec.api.base_url,
        organization=spec.api.organization,
        project=spec.api.project,
    )
