"""The Batch API boundary: the only module that imports `openai`; no SDK error escapes it."""

from __future__ import annotations

import contextlib
import email.utils
import errno
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from gptbatch.api.presets import OPENAI, Preset
from gptbatch.api.provider import Caps
from gptbatch.canonical import atomic_writer
from gptbatch.engine.crash import crashpoint
from gptbatch.errors import (
    AuthError,
    LocalIOError,
    NotFoundError,
    QueueFullError,
    RateLimitedError,
    RemoteError,
    TransientRemoteError,
)

if TYPE_CHECKING:
    import httpx2
    import openai
else:  # imported by the first Remote(): 1.3 s a no-op build does not need
    httpx2 = openai = None

T = TypeVar("T")

TERMINAL_STATUSES = ("completed", "failed", "expired", "cancelled")
RUNNING_STATUSES = ("validating", "in_progress", "finalizing", "cancelling")


class UploadGoneError(RemoteError):
    """batches.create: the API does not have the input file (expired or deleted); nothing
    was created."""


class UnknownStatusError(RemoteError):
    """A batch is in a status gptbatch does not know: the build stops rather than guess."""

    def __init__(self, provider: str, batch_id: str, status: str) -> None:
        self.batch_id, self.status = batch_id, status
        super().__init__(
            f"{provider} reports batch {batch_id} as {status!r}, a status gptbatch does not "
            "know: the build stops here rather than guess (taking it for failed would send "
            "its requests again and pay twice); nothing was sent again. Look at the batch "
            f"at {provider}, and run the build again once it has ended"
        )


@dataclass(frozen=True)
class BatchErrorInfo:
    """One entry of a batch's `errors.data`."""

    code: str | None
    message: str | None
    line: int | None
    param: str | None


@dataclass(frozen=True)
class BatchInfo:
    """What we use of a remote batch."""

    id: str
    status: str
    endpoint: str
    input_file_id: str
    output_file_id: str | None
    error_file_id: str | None
    created_at: int
    metadata: dict[str, str] = field(default_factory=dict)
    errors: tuple[BatchErrorInfo, ...] = ()
    total: int = 0
    completed: int = 0
    failed: int = 0
    finished_at: int | None = None  # when it ended (API time): its files' expiry counts from it
    model: str | None = None  # the model the API says the batch uses (queue limits are per model)
    # When it left validating and began finalizing (API time; None: not yet, or not said):
    # how long validation and finalizing take here (eta.py, early release).
    in_progress_at: int | None = None
    finalizing_at: int | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    def summary(self) -> dict[str, Any]:
        """A small JSON-able record for the store."""
        return {
            "status": self.status,
            "counts": [self.total, self.completed, self.failed],
            "errors": [e.__dict__ for e in self.errors[:20]],
        }


@dataclass(frozen=True)
class FileInfo:
    """What we use of a remote file."""

    id: str
    filename: str
    bytes: int
    created_at: int
    expires_at: int | None = None


def _batch_info(b: Any, preset: Preset = OPENAI) -> BatchInfo:
    status = preset.statuses.get(str(b.status))
    if status is None:  # never read as failed (sent again: paid twice) nor as running
        raise UnknownStatusError(preset.name, str(b.id), str(b.status))
    counts = b.request_counts
    errors = ()
    if b.errors is not None and b.errors.data:
        errors = tuple(BatchErrorInfo(e.code, e.message, e.line, e.param) for e in b.errors.data)
    return BatchInfo(
        id=b.id,
        status=status,
        endpoint=b.endpoint,
        input_file_id=b.input_file_id,
        output_file_id=b.output_file_id,
        error_file_id=b.error_file_id,
        created_at=int(b.created_at or 0),
        metadata=dict(b.metadata or {}),
        errors=errors,
        total=counts.total if counts else 0,
        completed=counts.completed if counts else 0,
        failed=counts.failed if counts else 0,
        finished_at=max(
            (
                int(t)
                for t in (
                    getattr(b, name, None)
                    for name in ("completed_at", "expired_at", "cancelled_at", "failed_at")
                )
                if t
            ),
            default=None,
        ),
        model=getattr(b, "model", None),
        in_progress_at=_stamp(getattr(b, "in_progress_at", None)),
        finalizing_at=_stamp(getattr(b, "finalizing_at", None)),
    )


def _stamp(value: Any) -> int | None:
    """An API timestamp as an int (None if absent or not a number)."""
    try:
        return int(value) if value else None
    except (TypeError, ValueError):
        return None


# errnos that mean the local disk or permissions failed, not the network.
_LOCAL_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}
)


def _translate(exc: Exception) -> Exception:
    """Map an SDK or transport error to ours."""
    _import_sdk()
    if isinstance(exc, OSError) and exc.errno in _LOCAL_ERRNOS:
        where = exc.filename or "a local file"
        return LocalIOError(
            f"cannot write {where}: {exc.strerror}: free disk space (or fix permissions) and "
            "run again; state is saved and nothing is paid twice"
        )
    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
        return AuthError(
            f"the API refused the key ({exc.status_code}): check the key in the environment "
            "variable named by api.api_key_env (default OPENAI_API_KEY)"
        )
    if isinstance(exc, openai.NotFoundError):
        return NotFoundError(f"not found: {_message(exc)}")
    if isinstance(exc, openai.RateLimitError | openai.InternalServerError | openai.ConflictError):
        return TransientRemoteError(f"{exc.status_code} from the API: {_message(exc)}")
    if isinstance(exc, openai.APIStatusError):
        if exc.status_code in (408,) or exc.status_code >= 500:
            return TransientRemoteError(f"{exc.status_code} from the API: {_message(exc)}")
        return RemoteError(f"{exc.status_code} from the API: {_message(exc)}")
    if isinstance(exc, openai.APIConnectionError | httpx2.HTTPError | OSError):
        return TransientRemoteError(f"connection to the API failed: {exc}")
    return RemoteError(str(exc))


# "Enqueued token limit reached for gpt-4o in organization org-x. Limit: 90,000 enqueued
# tokens. ..." (and the same with "request" for embeddings): a full queue, not a rate limit.
_QUEUE_FULL = re.compile(
    r"enqueued (token|request) limit reached(?: for (\S+?))?(?: in organization \S+?)?\."
    r"(?:.*?Limit: ([\d,]+))?",
    re.IGNORECASE | re.DOTALL,
)


def stated_queue_limit(message: str | None) -> tuple[str, int | None, str | None] | None:
    """("tokens" or "requests", the stated limit, the model) if message says the queue is full."""
    match = _QUEUE_FULL.search(message or "")
    if match is None:
        return None
    unit = "tokens" if match.group(1).lower() == "token" else "requests"
    limit = int(match.group(3).replace(",", "")) if match.group(3) else None
    return unit, limit, match.group(2)


def _create_error(exc: Exception) -> Exception:
    """Map a batches.create failure: a 429 there is a full queue or a rate limit, never both."""
    _import_sdk()
    if isinstance(exc, openai.BadRequestError | openai.NotFoundError) and re.search(
        r"cannot find file|no such file", _message(exc), re.IGNORECASE
    ):
        return UploadGoneError(f"{exc.status_code} from the API: {_message(exc)}")
    if isinstance(exc, openai.RateLimitError):
        message = _message(exc)
        full = stated_queue_limit(message)
        if full is not None:
            return QueueFullError(message, unit=full[0], limit=full[1], model=full[2])
        return RateLimitedError(
            f"429 from the API: {message}", retry_after=_retry_after(exc.response)
        )
    return _translate(exc)


def _retry_after(response: Any) -> float | None:
    headers = getattr(response, "headers", None) or {}
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        with contextlib.suppress(TypeError, ValueError):
            if headers.get(name) is not None:
                return float(headers.get(name)) * scale
    return None


def _message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
    return str(exc.message)


def _import_sdk() -> None:
    """Import the SDK into this module's namespace (its names are used in except clauses)."""
    global httpx2, openai
    if openai is None:
        import httpx2 as _httpx2
        import openai as _openai

        httpx2, openai = _httpx2, _openai


def _call(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except (openai.OpenAIError, httpx2.HTTPError, OSError) as exc:
        raise _translate(exc) from exc


class Remote:
    """A thin, typed client for the Files and Batches endpoints (a `provider.Provider`)."""

    caps: Caps = OPENAI.caps

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str | None = None,
        organization: str | None = None,
        project: str | None = None,
        timeout: float = 120.0,
        max_retries: int = 2,
        preset: Preset = OPENAI,
    ) -> None:
        _import_sdk()
        self.preset = preset
        self.caps = preset.caps
        # A named service's own URL, never OPENAI_BASE_URL (set for another service, it
        # would send this key there).
        default = preset.base_url or os.environ.get("OPENAI_BASE_URL") or None
        self.client = openai.OpenAI(
            api_key=api_key,
            base_url=base_url or default,
            organization=organization,
            project=project,
            timeout=timeout,
            max_retries=max_retries,
        )
        # batches.create must never be retried blindly: a lost reply plus an SDK retry
        # creates a second batch and bills every request twice. The build reconciles
        # with batches.list instead.
        self._create_client = self.client.with_options(max_retries=0)

    @property
    def base_url(self) -> str:
        return str(self.client.base_url)

    def upload(self, path: Path, filename: str, *, expires_after: int | None = None) -> FileInfo:
        """Upload a JSONL file with the service's batch purpose, expiring expires_after
        seconds after upload (not sent to a service that rejects it)."""
        expiry: Any = (
            {"anchor": "created_at", "seconds": expires_after}
            if expires_after and self.preset.file_expiry
            else openai.omit
        )
        purpose: Any = self.preset.upload_purpose

        def go() -> FileInfo:
            with open(path, "rb") as f:
                obj = self.client.files.create(
                    file=(filename, f), purpose=purpose, expires_after=expiry
                )
            return FileInfo(obj.id, obj.filename, obj.bytes, obj.created_at)

        return _call(go)

    def find_uploads(self, filename: str) -> list[FileInfo]:
        """Batch files already uploaded under this name."""

        def go() -> list[FileInfo]:
            return [
                FileInfo(f.id, f.filename, f.bytes, f.created_at)
                for f in self.client.files.list(purpose=self.preset.upload_purpose)
                if f.filename == filename
            ]

        return _call(go)

    def create_batch(
        self,
        *,
        file_id: str,
        endpoint: str,
        completion_window: str,
        metadata: dict[str, str],
        output_expires_after: int | None = None,
    ) -> BatchInfo:
        """Create a batch, with no SDK retry (see __init__).

        Raises QueueFullError or RateLimitedError for a 429 (nothing was created); any
        other TransientRemoteError leaves it uncertain whether the batch exists.
        """
        try:
            raw = self._create_client.batches.with_raw_response.create(
                input_file_id=file_id,
                endpoint=endpoint,  # type: ignore[arg-type]
                completion_window=completion_window,  # type: ignore[arg-type]
                metadata=metadata,
                output_expires_after=(
                    {"anchor": "created_at", "seconds": output_expires_after}
                    if output_expires_after and self.preset.output_expiry
                    else openai.omit
                ),
            )
        except (openai.OpenAIError, httpx2.HTTPError, OSError) as exc:
            raise _create_error(exc) from exc
        try:
            data = raw.http_response.json()
        except ValueError as exc:  # it answered 200: a batch may exist; reconcile, never redo
            raise TransientRemoteError(
                f"the API's reply to batches.create is not JSON ({exc}): whether the batch "
                "exists is checked before anything is sent again"
            ) from exc
        # Together answers a create with the batch under "job" (its retrieve does not).
        if isinstance(data, dict) and isinstance(data.get("job"), dict) and "id" not in data:
            data = data["job"]
        return self._info(openai.types.Batch.construct(**data))

    def _info(self, b: Any) -> BatchInfo:
        return _batch_info(b, self.preset)

    def retrieve(self, batch_id: str) -> BatchInfo:
        return _call(lambda: self._info(self.client.batches.retrieve(batch_id)))

    def retrieve_dated(self, batch_id: str) -> tuple[BatchInfo, float | None]:
        """A batch, and the API's own time when it answered (its Date header), if given.

        The API's time, not ours, is what its files' expiry is measured against: the local
        clock may be days off.
        """

        def go() -> tuple[BatchInfo, float | None]:
            raw = self.client.batches.with_raw_response.retrieve(batch_id)
            date = raw.headers.get("date")
            when: float | None = None
            with contextlib.suppress(TypeError, ValueError, IndexError):
                when = email.utils.parsedate_to_datetime(date).timestamp() if date else None
            return self._info(raw.parse()), when

        return _call(go)

    def file_info(self, file_id: str) -> FileInfo:
        """A file's metadata (NotFoundError once deleted or expired)."""

        def go() -> FileInfo:
            f = self.client.files.retrieve(file_id)
            expires = getattr(f, "expires_at", None)
            return FileInfo(
                f.id, f.filename, f.bytes, f.created_at, int(expires) if expires else None
            )

        return _call(go)

    def list_batches(self, *, since: float | None = None) -> Iterator[BatchInfo]:
        """Batches newest first, stopping at the first created before `since`."""
        try:
            for b in self.client.batches.list(limit=100):
                info = self._info(b)
                if since is not None and info.created_at < since:
                    return
                yield info
        except (openai.OpenAIError, httpx2.HTTPError, OSError) as exc:
            raise _translate(exc) from exc

    def recent_batches(
        self,
        *,
        since: float,
        wanted: set[str],
        max_pages: int,
        observe: Callable[[BatchInfo], None] | None = None,
        more: Callable[[], bool] | None = None,
    ) -> dict[str, BatchInfo]:
        """One paged pass over batches.list, newest first: the wanted ones found.

        Stops at the first batch created before `since`, once every wanted id was seen, or
        after `max_pages` pages (100 batches each), whichever comes first. observe: shown
        every batch of each page read (whole pages); more: asked after each page, keeps
        paging (within max_pages) after the wanted ones were found while it says so.
        """

        def go() -> dict[str, BatchInfo]:
            found: dict[str, BatchInfo] = {}
            page = self.client.batches.list(limit=100)
            for _ in range(max_pages):
                done = False
                for b in page.data:
                    info = self._info(b)
                    if observe is not None:
                        observe(info)
                    if done:
                        continue
                    if info.created_at < since:
                        done = True
                    elif info.id in wanted:
                        found[info.id] = info
                        done = len(found) == len(wanted)
                    if done and observe is None:
                        return found
                done = done or len(found) == len(wanted)
                wants_more = more() if more is not None else False
                if (done and not wants_more) or not page.has_next_page():
                    break
                page = page.get_next_page()
            return found

        return _call(go)

    def cancel(self, batch_id: str) -> BatchInfo:
        return _call(lambda: self._info(self.client.batches.cancel(batch_id)))

    def download(self, file_id: str, dest: Path, *, attempts: int = 4) -> int:
        """Stream a file's content to dest atomically; retry a dropped download from scratch."""
        last: Exception | None = None
        for _ in range(attempts):
            try:
                size = 0
                with (
                    atomic_writer(dest, "wb") as out,
                    self.client.files.with_streaming_response.content(file_id) as resp,
                ):
                    for chunk in resp.iter_bytes(1 << 16):
                        out.write(chunk)
                        size += len(chunk)
                        crashpoint("mid_download")
                return size
            except (openai.OpenAIError, httpx2.HTTPError, OSError) as exc:
                last = _translate(exc)
                if not isinstance(last, TransientRemoteError):
                    raise last from exc
        assert last is not None
        raise last

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()

    # --- appended for `gptbatch clean --remote` ----------------------------------------------

    def list_uploads(self) -> Iterator[FileInfo]:
        """Every file with purpose batch (the SDK pages through them)."""
        try:
            for f in self.client.files.list(purpose=self.preset.upload_purpose):
                yield FileInfo(f.id, f.filename, f.bytes, f.created_at)
        except (openai.OpenAIError, httpx2.HTTPError, OSError) as exc:
            raise _translate(exc) from exc

    def delete_file(self, file_id: str) -> None:
        """Delete an uploaded file; NotFoundError if the API does not know it."""
        _call(lambda: self.client.files.delete(file_id))
