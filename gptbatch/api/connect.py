"""Reaching the Batch API: the real API with the spec's key, or a rehearsal's own simulator."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
import shutil
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from gptbatch.api.presets import preset_of
from gptbatch.api.provider import ANTHROPIC_CAPS, GEMINI_CAPS, Caps
from gptbatch.config.rehearsal import simulated_output_dir
from gptbatch.config.spec import Spec, api_key
from gptbatch.errors import InputError, UsageError
from gptbatch.state.store import state_dir

if TYPE_CHECKING:  # remote imports the openai SDK: only commands that call the API pay for it
    from gptbatch.api.remote import Remote

# In --simulate, time runs 20x faster and processing is quick, so each status (validating,
# in_progress, finalizing) shows for a moment; 10M prompt tokens take about a second.
SIMULATE_CONFIG = {
    "time_scale": 20.0,
    "tokens_per_second": 1_000_000.0,
    "total_tokens_per_second": 5_000_000.0,
    "validating_seconds": 4.0,
    "finalizing_seconds": 4.0,
}


def connect(spec: Spec, purpose: str) -> Remote:
    """A Remote for the spec's API (api.base_url or OPENAI_BASE_URL); UsageError without a key."""
    key = api_key(spec)
    if not key:
        raise UsageError(
            f"no API key: {purpose} needs one: set {spec.api.api_key_env} (or put it in a "
            f".env file beside {spec.path.name})"
        )
    return make_remote(
        spec.api.provider,
        api_key=key,
        base_url=spec.api.base_url,
        organization=spec.api.organization,
        project=spec.api.project,
    )


def make_remote(provider: str, **kwargs: Any) -> Any:
    """The client of a provider: Anthropic's, Gemini's, or the OpenAI-shaped Remote."""
    if provider == "anthropic":
        from gptbatch.api.anthropic import AnthropicRemote

        return AnthropicRemote(**kwargs)
    if provider == "gemini":
        from gptbatch.api.gemini import GeminiRemote

        return GeminiRemote(**kwargs)
    from gptbatch.api.remote import Remote

    return Remote(preset=preset_of(provider), **kwargs)


@contextlib.contextmanager
def remote_for(spec: Spec, simulate: bool) -> Iterator[tuple[Spec, Remote]]:
    """The API client: the real API (or api.base_url), or an in-process simulator."""
    if simulate:
        from gptbatch.simulator import SimConfig, run_simulator

        limits = {}
        for model in {m for m in _models(spec)}:
            limit = spec.limits.token_limit(model)
            if limit is not None:
                limits[model] = limit
        # The rehearsal's simulator keeps its files and batches beside the rehearsal's state,
        # so an interrupted rehearsal resumes like a real build instead of starting over.
        output_dir = simulated_output_dir(spec)
        config = SimConfig(
            token_limits=limits,
            state_dir=str(state_dir(output_dir) / "simulator"),
            models=tuple(spec.prices),  # a model the config prices is one the user knows
            flavour=_flavour(spec.api.provider),
            **_windows(spec),
            **SIMULATE_CONFIG,
        )
        existed = output_dir.exists()
        try:
            with run_simulator(config) as sim:
                simulated = dataclasses.replace(
                    spec,
                    output_dir=output_dir,
                    polling=dataclasses.replace(
                        spec.polling, initial_seconds=0.05, max_seconds=0.5
                    ),
                )
                remote: Any = LazyRemote(
                    provider=spec.api.provider, api_key="sk-simulated", base_url=sim.base_url
                )
                try:
                    yield simulated, remote
                finally:
                    remote.close()
        except InputError:
            if not existed:  # a first rehearsal rejected for bad input leaves no trace
                shutil.rmtree(output_dir, ignore_errors=True)
            raise
        return
    key = api_key(spec)
    if not key:
        raise UsageError(
            f"no API key: set {spec.api.api_key_env} (or put it in a .env file beside "
            f"{spec.path.name}), or rehearse offline with `gptbatch build --simulate`"
        )
    remote = LazyRemote(
        provider=spec.api.provider,
        api_key=key,
        base_url=spec.api.base_url,
        organization=spec.api.organization,
        project=spec.api.project,
    )
    try:
        yield spec, remote
    finally:
        remote.close()


_importing: threading.Thread | None = None


def import_sdk_in_background(provider: str) -> None:
    """Import a provider's SDK on a thread (once per process).

    A fork while the thread holds import locks would leave the child's locks held: every
    fork (the parallel scanner's) waits for the import first. The thread is not a daemon,
    so the interpreter never stops in the middle of an import.
    """
    global _importing
    if _importing is not None:
        return
    module = {"anthropic": "gptbatch.api.anthropic", "gemini": "gptbatch.api.gemini"}.get(
        provider, "gptbatch.api.remote"
    )

    def load() -> None:
        with contextlib.suppress(Exception):  # the import on first use reports it
            importlib.import_module(module)._import_sdk()

    _importing = threading.Thread(target=load, name="gptbatch-sdk-import")
    _importing.start()
    os.register_at_fork(before=_importing.join)  # registered once: this runs once a process


class LazyRemote:
    """A provider's client made on first use, so a build with nothing to ask the API never
    imports its SDK."""

    def __init__(self, provider: str = "openai", **kwargs: Any) -> None:
        self._provider = provider
        self._kwargs = kwargs
        self._remote: Remote | None = None

    @property
    def caps(self) -> Caps:
        """The provider's caps, known without making the client (nor importing its SDK)."""
        own = {"anthropic": ANTHROPIC_CAPS, "gemini": GEMINI_CAPS}.get(self._provider)
        return own if own is not None else preset_of(self._provider).caps

    def warm(self) -> None:
        """Start importing the provider's SDK in the background, for a build about to need
        it: the import (a second or so) overlaps the sync's hashing and SQL."""
        if self._remote is None:
            import_sdk_in_background(self._provider)

    def __getattr__(self, name: str) -> Any:
        if self._remote is None:
            self._remote = make_remote(self._provider, **self._kwargs)
        return getattr(self._remote, name)

    def close(self) -> None:
        if self._remote is not None:
            self._remote.close()


def _flavour(provider: str) -> str:
    """The simulator flavour serving a provider's wire quirks (OpenAI's for the rest)."""
    return provider if provider in ("groq", "together", "perplexity") else "openai"


def _windows(spec: Spec) -> dict[str, Any]:
    """Groq takes windows from 24h to 7d (checked by the config): its rehearsal takes them."""
    if spec.api.provider == "groq":
        return {"completion_windows": ("24h", spec.completion_window)}
    return {}


def _models(spec: Spec) -> list[str]:
    limit = spec.limits.enqueued_tokens
    if isinstance(limit, dict) or hasattr(limit, "keys"):
        return [m for m in limit if m != "*"]  # type: ignore[union-attr]
    return [spec.model] if spec.model else []
