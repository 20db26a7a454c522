"""One exception hierarchy for gptbatch; each error knows its exit code and says what to do."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gptbatch.shards import Item

# Exit codes, documented in the README. The CLI maps results and errors to these in one place.
EXIT_OK = 0  # everything done
EXIT_ERROR = 1  # an unexpected or remote error stopped the run
EXIT_BAD_INPUT = 2  # bad config, arguments or input: nothing was submitted
EXIT_PENDING = 3  # work is still pending (e.g. `build --no-wait`)
EXIT_FAILED_REQUESTS = 4  # finished, but some requests failed for good
EXIT_LOCKED = 5  # another build holds the lock on this output directory
EXIT_INTERRUPTED = 130  # Ctrl-C / SIGTERM; state was saved


# What an API key looks like (OpenAI's sk-..., sk-proj-..., Azure's 32-hex keys): never
# printed back, whatever field it was pasted into.
_KEY_LIKE = re.compile(r"\b(sk-[A-Za-z0-9_\-]{6,}|[0-9a-f]{32})\b")


def redact(text: str) -> str:
    """text with anything that looks like an API key masked, keeping its last 4 characters."""
    return _KEY_LIKE.sub(lambda m: f"{m.group(0)[:3]}...{m.group(0)[-4:]}", text)


class GptbatchError(Exception):
    """Base of every error gptbatch raises on purpose."""

    exit_code = EXIT_ERROR


# --- bad input: config, arguments, request files -------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input, located in a file."""

    path: str
    line: int | None
    message: str
    hint: str = ""

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else self.path
        return f"{where}: {self.message}" + (f": {self.hint}" if self.hint else "")


class InputError(GptbatchError):
    """Config or request files are invalid; nothing was written or submitted."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, problems: list[Problem] | Problem | str, *, truncated: int = 0) -> None:
        if isinstance(problems, (Problem, str)):
            problems = (
                [problems] if isinstance(problems, Problem) else [Problem("", None, problems)]
            )
        self.problems = list(problems)
        self.truncated = truncated
        super().__init__(self.render())

    def render(self) -> str:
        lines = [str(p) if p.path else p.message for p in self.problems]
        if self.truncated:
            n = self.truncated
            lines.append(f"... and {n:,} more problem{'s' if n != 1 else ''} not shown")
        return "\n".join(lines)


class ConfigError(InputError):
    """batch.yaml is missing or invalid."""


class UsageError(InputError):
    """Command-line arguments are invalid."""


# --- state and concurrency -----------------------------------------------------------------


class LockedError(GptbatchError):
    """Another gptbatch build holds the lock on this output directory."""

    exit_code = EXIT_LOCKED


class StateError(GptbatchError):
    """The build state under <output_dir>/.gptbatch/ is unreadable or from a newer version."""


# --- the local machine -----------------------------------------------------------------------


class LocalIOError(GptbatchError):
    """A local file could not be read or written (full disk, permissions, file size limit)."""


class InputChangedError(GptbatchError):
    """An input file changed while gptbatch was using it; state is saved, run again."""


# --- estimating and packing -----------------------------------------------------------------


class EncodingUnavailable(GptbatchError):
    """A tokenizer encoding could not be loaded (offline, or a corrupt file)."""


class ItemTooLarge(GptbatchError):
    """A single request exceeds a per-shard cap; the caller names its file and line."""

    def __init__(self, item: Item, dimension: str, value: int, cap: int) -> None:
        self.item = item
        self.dimension = dimension
        self.value = value
        self.cap = cap
        super().__init__(f"request {item.key[:12]} has {value:,} {dimension}, over the cap {cap:,}")


# --- remote API ----------------------------------------------------------------------------


class RemoteError(GptbatchError):
    """The Batch API answered with an error we cannot work around."""


class AuthError(RemoteError):
    """The API key is missing or was refused."""

    exit_code = EXIT_BAD_INPUT


class NotFoundError(RemoteError):
    """The API does not know the file or batch id we asked about."""


class TransientRemoteError(RemoteError):
    """A rate limit, server error or dropped connection that outlasted the SDK's retries."""


class RateLimitedError(TransientRemoteError):
    """A plain HTTP 429 rate limit: the call was not carried out; back off and try again."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class QueueFullError(RemoteError):
    """batches.create answered 429 "Enqueued token/request limit reached": nothing was created.

    `unit` is "tokens" or "requests"; `limit` is the limit the message states (None if it
    names none); `message` is the API's own text.
    """

    def __init__(self, message: str, *, unit: str, limit: int | None, model: str | None) -> None:
        super().__init__(message)
        self.message = message
        self.unit = unit
        self.limit = limit
        self.model = model


class Interrupted(GptbatchError):
    """The run was interrupted (Ctrl-C); state is saved and in-flight batches keep running."""

    exit_code = EXIT_INTERRUPTED
