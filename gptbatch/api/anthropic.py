"""Anthropic's Message Batches behind the provider boundary: the only module importing `anthropic`.

The engine speaks OpenAI's shapes (shard files, batches with file ids); this provider
answers in them:
- "uploading" a shard keeps it local: the file id names the shard file, and creating the
  batch reads it and sends its requests inline;
- each request goes out with its content key (64 hex: fits `^[a-zA-Z0-9_-]{1,64}$`) as the
  custom_id, the only thing a batch without metadata can carry: results then name their
  requests exactly, whatever the local state remembers;
- a batch's results are its "output file": downloading it converts each
  `{custom_id, result}` into gptbatch's result envelope (`{custom_id, response, error}`),
  the Message as the body, so collecting works as for OpenAI.
No SDK error escapes it; `batches.create` is never retried by the SDK (a lost reply plus a
retry is a second, paid batch).
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from gptbatch.api.provider import ANTHROPIC_CAPS, Caps
from gptbatch.api.remote import BatchInfo, FileInfo, UploadGoneError
from gptbatch.canonical import atomic_writer, sha256_hex
from gptbatch.engine.crash import crashpoint
from gptbatch.errors import (
    AuthError,
    LocalIOError,
    NotFoundError,
    RateLimitedError,
    RemoteError,
    TransientRemoteError,
    UsageError,
)

if TYPE_CHECKING:
    import anthropic
else:
    anthropic = None

T = TypeVar("T")

ENDPOINT = "/v1/messages"
LOCAL_FILE = "local:"  # a shard file kept on this machine (there are no uploads)
RESULTS_FILE = "anthropic-results:"  # a batch's results, downloaded through the SDK
INSTALL_HINT = "pip install 'gptbatch[anthropic]'"
# Result error types -> the HTTP status they stand for (classify() sorts by status).
ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


def _import_sdk() -> None:
    global anthropic
    if anthropic is None:
        try:
            import anthropic as _anthropic
        except ImportError:
            raise UsageError(
                f"api.provider anthropic needs Anthropic's SDK, which is not installed: "
                f"run {INSTALL_HINT}"
            ) from None
        anthropic = _anthropic


def _message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
    return str(getattr(exc, "message", exc))


def _translate(exc: Exception) -> Exception:
    """An SDK or transport error as ours."""
    if isinstance(exc, OSError) and not isinstance(exc, ConnectionError) and exc.filename:
        return LocalIOError(f"cannot write {exc.filename}: {exc.strerror}: fix it and run again")
    if isinstance(exc, anthropic.AuthenticationError | anthropic.PermissionDeniedError):
        return AuthError(
            f"the API refused the key ({exc.status_code}): check the key in the environment "
            "variable named by api.api_key_env (default ANTHROPIC_API_KEY)"
        )
    if isinstance(exc, anthropic.NotFoundError):
        return NotFoundError(f"not found: {_message(exc)}")
    if isinstance(exc, anthropic.RateLimitError):
        return RateLimitedError(f"429 from the API: {_message(exc)}", retry_after=_retry_after(exc))
    if isinstance(exc, anthropic.APIStatusError):
        if exc.status_code in (408, 409) or exc.status_code >= 500:
            return TransientRemoteError(f"{exc.status_code} from the API: {_message(exc)}")
        return RemoteError(f"{exc.status_code} from the API: {_message(exc)}")
    if isinstance(exc, anthropic.APIConnectionError | OSError):
        return TransientRemoteError(f"connection to the API failed: {exc}")
    return RemoteError(str(exc))


def _retry_after(exc: Any) -> float | None:
    headers = getattr(getattr(exc, "response", None), "headers", None) or {}
    with contextlib.suppress(TypeError, ValueError):
        if headers.get("retry-after") is not None:
            return float(headers["retry-after"])
    return None


def _ts(value: Any) -> int | None:
    return int(value.timestamp()) if value is not None else None


def batch_info(b: Any) -> BatchInfo:
    """A Message Batch in the engine's terms (statuses mapped onto OpenAI's)."""
    counts = b.request_counts
    if b.processing_status == "ended":
        status = "cancelled" if b.cancel_initiated_at is not None else "completed"
    elif b.processing_status == "canceling":
        status = "cancelling"
    else:
        status = "in_progress"
    ended = b.processing_status == "ended"
    return BatchInfo(
        id=b.id,
        status=status,
        endpoint=ENDPOINT,
        input_file_id="",  # requests went inline: there is no input file to read back
        output_file_id=RESULTS_FILE + b.id if ended else None,
        error_file_id=None,
        created_at=_ts(b.created_at) or 0,
        metadata={},
        total=counts.processing
        + counts.succeeded
        + counts.errored
        + counts.canceled
        + counts.expired,
        completed=counts.succeeded,
        failed=counts.errored + counts.canceled + counts.expired,
        finished_at=_ts(b.ended_at),
    )


def result_line(obj: dict[str, Any]) -> dict[str, Any]:
    """One `{custom_id, result}` line as gptbatch's `{custom_id, response, error}` envelope."""
    result = obj.get("result") or {}
    kind = result.get("type")
    line: dict[str, Any] = {"custom_id": obj.get("custom_id"), "response": None, "error": None}
    if kind == "succeeded":
        line["response"] = {"status_code": 200, "body": result.get("message")}
    elif kind == "errored":
        body = result.get("error") or {}
        err = body.get("error") if isinstance(body, dict) else None
        etype = err.get("type") if isinstance(err, dict) else None
        line["response"] = {"status_code": ERROR_STATUS.get(str(etype), 500), "body": body}
    elif kind == "canceled":
        line["error"] = {"code": "batch_cancelled", "message": "the batch was canceled first"}
    elif kind == "expired":
        line["error"] = {"code": "batch_expired", "message": "the batch expired (24 h) first"}
    else:
        line["error"] = {"code": None, "message": f"unknown result type {kind!r}"}
    return line


class AnthropicRemote:
    """The provider for Anthropic's Message Batches (see the module's docstring)."""

    caps: Caps = ANTHROPIC_CAPS

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str | None = None,
        timeout: float = 120.0,
        max_retries: int = 2,
        **_ignored: Any,  # OpenAI's organization and project mean nothing here
    ) -> None:
        _import_sdk()
        base = base_url or os.environ.get("ANTHROPIC_BASE_URL") or None
        if base is not None:  # the SDK adds /v1/...: accept a base URL given with it
            base = base.rstrip("/").removesuffix("/v1")
        self.client = anthropic.Anthropic(
            api_key=api_key, base_url=base, timeout=timeout, max_retries=max_retries
        )
        self._create_client = self.client.with_options(max_retries=0)

    @property
    def base_url(self) -> str:
        return str(self.client.base_url)

    def _call(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except (anthropic.AnthropicError, OSError) as exc:
            raise _translate(exc) from exc

    # --- submitting ------------------------------------------------------------------------

    def upload(self, path: Path, filename: str, *, expires_after: int | None = None) -> FileInfo:
        """Nothing to upload: the shard file stays here until its batch is created."""
        size = path.stat().st_size
        return FileInfo(LOCAL_FILE + str(path), filename, size, int(time.time()))

    def find_uploads(self, filename: str) -> list[FileInfo]:
        return []

    def create_batch(
        self,
        *,
        file_id: str,
        endpoint: str,
        completion_window: str,
        metadata: dict[str, str],
        output_expires_after: int | None = None,
    ) -> BatchInfo:
        """Send a shard's requests inline, each under its content key; never retried."""
        requests = self._shard_requests(file_id)
        if endpoint != ENDPOINT:
            raise RemoteError(f"Anthropic batches take {ENDPOINT} requests, not {endpoint}")
        try:
            made = self._create_client.messages.batches.create(requests=requests)  # type: ignore[arg-type]
        except (anthropic.AnthropicError, OSError) as exc:
            raise _translate(exc) from exc
        return batch_info(made)

    def _shard_requests(self, file_id: str) -> list[dict[str, Any]]:
        """The shard file's lines as `{custom_id: content key, params: body}`.

        The whole batch goes in one call body (the API takes requests inline), so it is held
        in memory: at most caps.max_bytes.
        """
        path = Path(file_id.removeprefix(LOCAL_FILE))
        if not file_id.startswith(LOCAL_FILE) or not path.is_file():
            raise UploadGoneError(f"the shard file {path} is gone: it is written again")
        requests = []
        with open(path, "rb") as f:
            for raw in f:
                line = raw.rstrip(b"\r\n")
                if line:
                    obj = json.loads(line)
                    requests.append({"custom_id": sha256_hex(line), "params": obj["body"]})
        return requests

    # --- polling and listing -------------------------------------------------------------

    def retrieve(self, batch_id: str) -> BatchInfo:
        return self._call(lambda: batch_info(self.client.messages.batches.retrieve(batch_id)))

    def retrieve_dated(self, batch_id: str) -> tuple[BatchInfo, float | None]:
        def go() -> tuple[BatchInfo, float | None]:
            raw = self.client.messages.batches.with_raw_response.retrieve(batch_id)
            when: float | None = None
            date = raw.headers.get("date")
            with contextlib.suppress(TypeError, ValueError, IndexError):
                when = email.utils.parsedate_to_datetime(date).timestamp() if date else None
            return batch_info(raw.parse()), when

        return self._call(go)

    def list_batches(self, *, since: float | None = None) -> Iterator[BatchInfo]:
        """Batches newest first, stopping at the first created before `since`."""
        try:
            for b in self.client.messages.batches.list(limit=100):
                info = batch_info(b)
                if since is not None and info.created_at < since:
                    return
                yield info
        except (anthropic.AnthropicError, OSError) as exc:
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
        """One paged pass over the list, newest first: the wanted ones found."""

        def go() -> dict[str, BatchInfo]:
            found: dict[str, BatchInfo] = {}
            page = self.client.messages.batches.list(limit=100)
            for _ in range(max_pages):
                for b in page.data:
                    info = batch_info(b)
                    if observe is not None:  # never asked here: batches carry no estimates
                        observe(info)
                    if info.created_at < since:
                        return found
                    if info.id in wanted:
                        found[info.id] = info
                        if len(found) == len(wanted):
                            return found
                if not page.has_next_page():
                    break
                page = page.get_next_page()
            return found

        return self._call(go)

    def cancel(self, batch_id: str) -> BatchInfo:
        return self._call(lambda: batch_info(self.client.messages.batches.cancel(batch_id)))

    # --- results ---------------------------------------------------------------------------

    def download(self, file_id: str, dest: Path, *, attempts: int = 4) -> int:
        """A batch's results, as envelope lines, to dest atomically; a drop starts over."""
        if not file_id.startswith(RESULTS_FILE):
            raise NotFoundError(f"not found: {file_id} (Anthropic batches have no files)")
        batch_id = file_id.removeprefix(RESULTS_FILE)
        last: Exception | None = None
        for _ in range(attempts):
            try:
                size = 0
                with atomic_writer(dest, "wb") as out:
                    for item in self.client.messages.batches.results(batch_id):
                        data = json.dumps(
                            result_line(item.to_dict(mode="json")), ensure_ascii=False
                        ).encode()
                        out.write(data + b"\n")
                        size += len(data) + 1
                        crashpoint("mid_download")
                return size
            except (anthropic.AnthropicError, OSError) as exc:
                last = _translate(exc)
                if not isinstance(last, TransientRemoteError):
                    raise last from exc
        assert last is not None
        raise last

    def file_info(self, file_id: str) -> FileInfo:
        raise NotFoundError(f"not found: {file_id} (Anthropic batches have no files)")

    def list_uploads(self) -> Iterator[FileInfo]:
        return iter(())

    def delete_file(self, file_id: str) -> None:
        """Nothing was uploaded; a local shard file is the engine's to remove."""

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()
