"""Shared fixtures: a running Batch API simulator with a fast clock, pointed at by OPENAI_*."""

from __future__ import annotations

import shutil
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gptbatch.simulator import SimConfig, Simulator

SIMULATOR_API_KEY = "sk-simulator-test"

# A shell without job control starts `pytest &` with SIGINT ignored, and the processes the
# tests Ctrl-C would inherit that and never see it. Handled here, it is reset in children.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def simulator_factory(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Simulator]]:
    """Start simulators: `simulator_factory(**config)` overrides SimConfig.fast() fields.

    Pass `config=SimConfig(...)` to start from another config. The latest one started is
    what OPENAI_BASE_URL points at. All are stopped when the test ends.
    """
    started: list[Simulator] = []

    def start(config: SimConfig | None = None, **overrides: Any) -> Simulator:
        base = config if config is not None else SimConfig.fast()
        sim = Simulator(base.replace(**overrides) if overrides else base).start()
        started.append(sim)
        monkeypatch.setenv("OPENAI_BASE_URL", sim.base_url)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", sim.base_url.removesuffix("/v1"))
        monkeypatch.setenv("OPENAI_API_KEY", SIMULATOR_API_KEY)
        monkeypatch.setenv("ANTHROPIC_API_KEY", SIMULATOR_API_KEY)
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", sim.base_url.removesuffix("/v1"))
        monkeypatch.setenv("GEMINI_API_KEY", SIMULATOR_API_KEY)
        return sim

    yield start
    for sim in started:
        sim.stop()


@pytest.fixture
def simulator(simulator_factory: Callable[..., Simulator]) -> Simulator:
    """A running simulator (SimConfig.fast(): a small batch completes in ~0.2 s)."""
    return simulator_factory()


@pytest.fixture(autouse=True)
def _token_cache_dir(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every test gets its own token-count cache, never the user's ~/.cache/gptbatch."""
    monkeypatch.setenv("GPTBATCH_CACHE_DIR", str(tmp_path_factory.mktemp("token-cache")))


REPO = Path(__file__).resolve().parent.parent


def copy_examples(dest: Path) -> Path:
    """A copy of the repo's examples/ in dest, without any build state: its batch.yaml.

    Tests read the examples only through copies: a real build of examples/ leaves
    examples/out/.gptbatch behind, which plan, status and build would read.
    """
    shutil.copytree(REPO / "examples", dest / "examples", ignore=shutil.ignore_patterns("out*"))
    return dest / "examples" / "batch.yaml"


@pytest.fixture
def example_config(tmp_path: Path) -> Path:
    """examples/batch.yaml, copied with its inputs into tmp_path (no build state)."""
    return copy_examples(tmp_path)
