"""The provider boundary: what the engine asks of a batch API, and what each one can take.

The engine speaks to a provider only through these methods (grep `remote.` in engine/ and
commands/): OpenAI, Azure and compatible services implement them in remote.py, Anthropic's
Message Batches in anthropic.py, Gemini's batch mode in gemini.py. A provider without
uploads or metadata (Anthropic) still answers in the same shapes: its batches have no input
file, and its result "file" is an id the provider itself knows how to download.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from gptbatch.api.remote import BatchInfo, FileInfo


@dataclass(frozen=True)
class Caps:
    """What a provider accepts per batch and how its queue is limited."""

    name: str
    max_requests: int  # requests per batch
    max_bytes: int  # bytes per batch (the input file, or the create call's body)
    budget: Literal["tokens", "requests"]  # what its processing queue is limited by
    metadata: bool  # batches carry our tags (project, shard): a lost state finds them by these
    uploads: bool  # requests go in an uploaded file (else inline in the create call)
    # custom_id sent is the request's content key (no metadata: results identify requests)
    custom_id_is_key: bool = False
    # results downloadable this long after the batch's creation (None: OpenAI's file rule,
    # output_expires_after or 30 days from the batch's end)
    results_ttl: int | None = None
    # an unfinished batch expires this long after its creation (what a wait is bounded by)
    batch_ttl: int = 86400


OPENAI_CAPS = Caps("openai", 50_000, 200 * 1024 * 1024, "tokens", True, True)
ANTHROPIC_CAPS = Caps(
    "anthropic",
    100_000,
    256 * 1000 * 1000,
    "requests",
    False,
    False,
    custom_id_is_key=True,
    results_ttl=29 * 86400,
)

# Gemini's batch mode: uploads of {key, request} lines, one model per job; no tags a lost
# state could trust (a display name only), so keys go as content keys; its queue is
# limited by enqueued tokens per model (estimated offline: no public Gemini tokenizer).
GEMINI_CAPS = Caps(
    "gemini",
    100_000,
    2 * 1024**3,
    "tokens",
    False,
    True,
    custom_id_is_key=True,
    batch_ttl=48 * 3600,
)


@runtime_checkable
class Provider(Protocol):
    """What a batch provider must do for the engine and the commands."""

    caps: Caps

    @property
    def base_url(self) -> str: ...

    # submitting
    def upload(
        self, path: Path, filename: str, *, expires_after: int | None = None
    ) -> FileInfo: ...
    def find_uploads(self, filename: str) -> list[FileInfo]: ...
    def create_batch(
        self,
        *,
        file_id: str,
        endpoint: str,
        completion_window: str,
        metadata: dict[str, str],
        output_expires_after: int | None = None,
    ) -> BatchInfo: ...

    # polling and listing
    def retrieve(self, batch_id: str) -> BatchInfo: ...
    def retrieve_dated(self, batch_id: str) -> tuple[BatchInfo, float | None]: ...
    def list_batches(self, *, since: float | None = None) -> Iterator[BatchInfo]: ...
    def recent_batches(
        self,
        *,
        since: float,
        wanted: set[str],
        max_pages: int,
        observe: Callable[[BatchInfo], None] | None = None,
        more: Callable[[], bool] | None = None,
    ) -> dict[str, BatchInfo]: ...
    def cancel(self, batch_id: str) -> BatchInfo: ...

    # results and files
    def download(self, file_id: str, dest: Path, *, attempts: int = 4) -> int: ...
    def file_info(self, file_id: str) -> FileInfo: ...
    def list_uploads(self) -> Iterator[FileInfo]: ...
    def delete_file(self, file_id: str) -> None: ...
    def close(self) -> None: ...


def caps_of(remote: object) -> Caps:
    """A remote's caps (OpenAI's for a remote that names none, e.g. a test double)."""
    caps = getattr(remote, "caps", None)
    return caps if isinstance(caps, Caps) else OPENAI_CAPS
