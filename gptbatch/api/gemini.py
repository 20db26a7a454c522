"""Gemini's batch mode behind the provider boundary: the only module importing `google.genai`.

The engine speaks OpenAI's shapes (shard files, batches with file ids); this provider
answers in them:
- uploading a shard converts its lines to Gemini's `{key, request}`, the key being the
  request's content key (what a lost state finds its work by: see engine/nometa.py), and
  the request its GenerateContentRequest without `model`: a Gemini batch job has one model,
  given when it is created. The upload's display name carries the shard file's name and
  that model, so creating the job from the file id alone (after a crash) knows both;
- a job's display name tags it with the project, a shard id prefix and a few of its
  requests' key prefixes (display_name); read back as metadata, it lets a build tell
  another project's running job from one of its own (engine/nometa.py). It cannot say
  which requests a job holds (uploaded files cannot be downloaded again): its results,
  keyed by content key, can;
- a job's results file is its "output file": downloading it converts each `{key, response}`
  or `{key, error}` into gptbatch's `{custom_id, response, error}` envelope.
The API version is pinned to v1beta, where Google documents batch mode. No SDK error
escapes; the SDK retries nothing by default, so `batches.create` is sent once per call.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from gptbatch.api.provider import GEMINI_CAPS, Caps
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
    from google import genai
    from google.genai import errors as genai_errors
else:
    genai = genai_errors = None

T = TypeVar("T")

ENDPOINT = "/v1beta/generateContent"  # the url of every request of a gemini target
API_VERSION = "v1beta"
INSTALL_HINT = "pip install 'gptbatch[gemini]'"
STATUSES = {
    "JOB_STATE_PENDING": "in_progress",
    "JOB_STATE_QUEUED": "in_progress",
    "JOB_STATE_RUNNING": "in_progress",
    "JOB_STATE_UPDATING": "in_progress",
    "JOB_STATE_CANCELLING": "cancelling",
    "JOB_STATE_SUCCEEDED": "completed",
    "JOB_STATE_PARTIALLY_SUCCEEDED": "completed",
    "JOB_STATE_FAILED": "failed",
    "JOB_STATE_CANCELLED": "cancelled",
    "JOB_STATE_EXPIRED": "expired",
}


def _import_sdk() -> None:
    global genai, genai_errors
    if genai is None:
        try:
            from google import genai as _genai
            from google.genai import errors as _errors
        except ImportError:
            raise UsageError(
                "api.provider gemini needs Google's google-genai SDK, which is not installed: "
                f"run {INSTALL_HINT}"
            ) from None
        genai, genai_errors = _genai, _errors


def _sdk_error(exc: BaseException) -> bool:
    """Did the call fail at the API or on the way (not a bug of ours)?"""
    transport = type(exc).__module__.startswith(("httpx", "httpcore"))
    return transport or isinstance(exc, genai_errors.APIError | OSError)


def _translate(exc: Exception) -> Exception:
    """An SDK or transport error as ours."""
    if isinstance(exc, OSError) and not isinstance(exc, ConnectionError) and exc.filename:
        return LocalIOError(f"cannot write {exc.filename}: {exc.strerror}: fix it and run again")
    if isinstance(exc, genai_errors.APIError):
        code, message = int(exc.code or 0), exc.message or str(exc)
        if code in (401, 403):
            return AuthError(
                f"the API refused the key ({code}): check the key in the environment "
                "variable named by api.api_key_env (default GEMINI_API_KEY)"
            )
        if code == 404:
            return NotFoundError(f"not found: {message}")
        if code == 429:
            return RateLimitedError(f"429 from the API: {message}")
        if code in (408, 409) or code >= 500:
            return TransientRemoteError(f"{code} from the API: {message}")
        return RemoteError(f"{code} from the API: {message}")
    if isinstance(exc, OSError) or type(exc).__module__.startswith(("httpx", "httpcore")):
        return TransientRemoteError(f"connection to the API failed: {exc}")
    return RemoteError(str(exc))


def _ts(value: Any) -> int | None:
    return int(value.timestamp()) if value is not None else None


# Tags read back from a display name (the engine's metadata keys, engine/batches.py).
_TAGS = ("gptbatch_project", "gptbatch_shard", "gptbatch_keys")
DISPLAY_NAME_MAX = 128


def display_name(metadata: dict[str, str]) -> str:
    """`gptbatch PROJECT SHARD12 KEY16,KEY16,...`, as many key prefixes as fit in 128
    characters (a project id has no spaces and at most 64 characters)."""
    project, shard = metadata.get(_TAGS[0]) or "-", (metadata.get(_TAGS[1]) or "-")[:12]
    shown = f"gptbatch {project} {shard}"
    keys: list[str] = []
    for key in (metadata.get(_TAGS[2]) or "").split(","):
        if key and len(shown) + 1 + len(",".join([*keys, key])) <= DISPLAY_NAME_MAX:
            keys.append(key)
    return f"{shown} {','.join(keys)}" if keys else shown[:DISPLAY_NAME_MAX]


def display_tags(shown: str | None) -> dict[str, str]:
    """A job's display name as the tags display_name wrote ({} if gptbatch did not name it)."""
    parts = (shown or "").split(" ")
    if len(parts) < 2 or parts[0] != "gptbatch" or not parts[1] or parts[1] == "-":
        return {}
    return {tag: value for tag, value in zip(_TAGS, parts[1:4], strict=False) if value}


def _count(stats: dict[str, Any], name: str) -> int:
    try:
        return max(0, int(stats.get(name) or 0))  # int64 as a JSON string
    except (TypeError, ValueError):
        return 0


def batch_info(job: Any, stats: dict[str, Any] | None = None) -> BatchInfo:
    """A batch job in the engine's terms (states mapped onto OpenAI's statuses).

    stats: the job's `batchStats` as the API sent them (the SDK's job drops them), for
    progress while it runs."""
    state = getattr(job.state, "value", job.state) or ""
    status = STATUSES.get(str(state), "in_progress")
    output = job.dest.file_name if job.dest is not None and status == "completed" else None
    stats = stats or {}
    return BatchInfo(
        total=_count(stats, "requestCount"),
        completed=_count(stats, "successfulRequestCount"),
        failed=_count(stats, "failedRequestCount"),
        id=job.name,
        status=status,
        endpoint=ENDPOINT,
        input_file_id="",  # the job does not name its file in Gemini's API
        output_file_id=output,
        error_file_id=None,
        created_at=_ts(job.create_time) or 0,
        metadata=display_tags(job.display_name),
        finished_at=_ts(job.end_time) if status in ("completed", "failed", "expired") else None,
    )


def result_line(obj: dict[str, Any]) -> dict[str, Any]:
    """One `{key, response}` or `{key, error}` line as gptbatch's result envelope."""
    line: dict[str, Any] = {"custom_id": obj.get("key"), "response": None, "error": None}
    if isinstance(obj.get("response"), dict):
        line["response"] = {"status_code": 200, "body": obj["response"]}
    elif isinstance(obj.get("error"), dict):
        error = obj["error"]
        code = error.get("code")
        status = code if isinstance(code, int) and 400 <= code < 600 else 500
        line["response"] = {"status_code": status, "body": {"error": error}}
    else:
        line["error"] = {"code": None, "message": "a result line with neither response nor error"}
    return line


def request_line(line: bytes) -> tuple[bytes, str]:
    """A shard file's line as Gemini's `{key, request}` line, and the request's model."""
    obj = json.loads(line)
    body = dict(obj["body"])
    model = str(body.pop("model")).removeprefix("models/")
    key = sha256_hex(line)
    return json.dumps({"key": key, "request": body}, ensure_ascii=False).encode(), model


class GeminiRemote:
    """The provider for Gemini's batch mode (see the module's docstring)."""

    caps: Caps = GEMINI_CAPS

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str | None = None,
        timeout: float = 120.0,
        **_ignored: Any,  # OpenAI's organization and project mean nothing here
    ) -> None:
        _import_sdk()
        options: dict[str, Any] = {"api_version": API_VERSION, "timeout": int(timeout * 1000)}
        base_url = base_url or os.environ.get("GOOGLE_GEMINI_BASE_URL")  # the SDK's own
        if base_url:  # the SDK adds /v1beta/...: accept a base URL given with a version
            base = base_url.rstrip("/")
            for suffix in ("/v1beta", "/v1"):
                base = base.removesuffix(suffix)
            options["base_url"] = base
        # What the SDK's job objects drop, read off the replies as they pass: each job's
        # batchStats (progress) and the reply's Date (the API's clock), by job name.
        self._seen: dict[str, tuple[dict[str, Any], float | None]] = {}
        options["client_args"] = {"event_hooks": {"response": [self._observe]}}
        self.client = genai.Client(api_key=api_key, http_options=options)
        self._base = options.get("base_url", "https://generativelanguage.googleapis.com")

    @property
    def base_url(self) -> str:
        return str(self._base)

    def _observe(self, response: Any) -> None:
        """An httpx response hook: keep the batchStats and Date of job replies (a get or a
        list page; never a download or an upload, whose bodies are not read here)."""
        request = response.request
        last = request.url.path.rstrip("/").rsplit("/", 1)[-1]
        if request.method != "GET" or "/batches" not in request.url.path or ":" in last:
            return
        if response.status_code != 200:
            return
        response.read()  # a small JSON reply; the SDK reads it again from the cache
        try:
            obj = json.loads(response.content)
        except ValueError:
            return
        when: float | None = None
        date = response.headers.get("date")
        with contextlib.suppress(TypeError, ValueError, IndexError):
            when = email.utils.parsedate_to_datetime(date).timestamp() if date else None
        jobs = obj.get("operations") if isinstance(obj.get("operations"), list) else [obj]
        for job in jobs:
            if isinstance(job, dict) and isinstance(job.get("name"), str):
                meta = job.get("metadata") if isinstance(job.get("metadata"), dict) else {}
                stats = meta.get("batchStats")
                self._seen[job["name"]] = (stats if isinstance(stats, dict) else {}, when)

    def _call(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except Exception as exc:  # the SDK raises its own, httpx's and ValueErrors
            if _sdk_error(exc):
                raise _translate(exc) from exc
            raise

    # --- submitting ------------------------------------------------------------------------

    def upload(self, path: Path, filename: str, *, expires_after: int | None = None) -> FileInfo:
        """Convert the shard to `{key, request}` lines (streaming) and upload them; Gemini
        keeps uploads 48 h whatever is asked."""
        models: set[str] = set()
        with tempfile.TemporaryDirectory(prefix="gptbatch-gemini-") as tmp:
            converted = Path(tmp) / filename
            with open(path, "rb") as src, open(converted, "wb") as out:
                for raw in src:
                    line = raw.rstrip(b"\r\n")
                    if line:
                        data, model = request_line(line)
                        models.add(model)
                        out.write(data + b"\n")
            if len(models) != 1:
                raise RemoteError(f"a Gemini batch job takes one model; {path} has {len(models)}")
            shown = f"{filename} {models.pop()}"
            config = {"display_name": shown, "mime_type": "application/jsonl"}
            made = self._call(lambda: self.client.files.upload(file=str(converted), config=config))
        return _file_info(made)

    def find_uploads(self, filename: str) -> list[FileInfo]:
        return [f for f in self.list_uploads() if f.filename == filename]

    def create_batch(
        self,
        *,
        file_id: str,
        endpoint: str,
        completion_window: str,
        metadata: dict[str, str],
        output_expires_after: int | None = None,
    ) -> BatchInfo:
        """Create the job from an uploaded file, its model named by the upload; never retried."""
        if endpoint != ENDPOINT:
            raise RemoteError(f"Gemini batch jobs take {ENDPOINT} requests, not {endpoint}")
        _, space, model = self._uploaded_name(file_id).rpartition(" ")
        if not space or not model:
            raise UploadGoneError(f"the upload {file_id} does not name its model: uploading again")
        config = {"display_name": display_name(metadata)}
        try:
            job = self._call(
                lambda: self.client.batches.create(model=model, src=file_id, config=config)
            )
        except NotFoundError as exc:
            self._uploaded_name(file_id)  # UploadGoneError if the file expired meanwhile
            # The file is there: the model is what the API does not know. Not worth a retry.
            raise RemoteError(f"{exc} (is model {model!r} right?)") from exc
        return batch_info(job)

    def _uploaded_name(self, file_id: str) -> str:
        """An upload's display name; UploadGoneError if the API no longer has it."""
        try:
            return self._call(lambda: self.client.files.get(name=file_id)).display_name or ""
        except NotFoundError as exc:
            raise UploadGoneError(str(exc)) from exc

    # --- polling and listing -------------------------------------------------------------

    def retrieve(self, batch_id: str) -> BatchInfo:
        return self.retrieve_dated(batch_id)[0]

    def retrieve_dated(self, batch_id: str) -> tuple[BatchInfo, float | None]:
        """The job, and the API's time when it answered (its Date header), if given."""
        job = self._call(lambda: self.client.batches.get(name=batch_id))
        stats, when = self._seen.pop(job.name, ({}, None))
        return batch_info(job, stats), when

    def list_batches(self, *, since: float | None = None) -> Iterator[BatchInfo]:
        """Jobs newest first, stopping at the first created before `since`.

        Google does not document the list's order; the simulator lists newest first. Both
        users stay safe in any order: engine/nometa.py only stops below the first job's
        time minus its horizon, and a poll retrieves whatever a listing did not find."""
        try:
            for job in self.client.batches.list(config={"page_size": 100}):
                info = batch_info(job, self._seen.pop(job.name, ({}, None))[0])
                if since is not None and info.created_at < since:
                    return
                yield info
        except Exception as exc:
            if _sdk_error(exc):
                raise _translate(exc) from exc
            raise

    def recent_batches(
        self,
        *,
        since: float,
        wanted: set[str],
        max_pages: int,
        observe: Callable[[BatchInfo], None] | None = None,
        more: Callable[[], bool] | None = None,
    ) -> dict[str, BatchInfo]:
        """One pass over the list, newest first (100 a page): the wanted ones found."""
        found: dict[str, BatchInfo] = {}
        for n, info in enumerate(self.list_batches(since=since)):
            if n >= 100 * max_pages:
                break
            if observe is not None:  # never asked here: jobs carry no estimates
                observe(info)
            if info.id in wanted:
                found[info.id] = info
                if len(found) == len(wanted):
                    break
        return found

    def cancel(self, batch_id: str) -> BatchInfo:
        self._call(lambda: self.client.batches.cancel(name=batch_id))
        return self.retrieve(batch_id)

    # --- results and files -----------------------------------------------------------------

    def download(self, file_id: str, dest: Path, *, attempts: int = 4) -> int:
        """A job's results file, as envelope lines, to dest atomically; a drop starts over.

        The SDK streams the file to a scratch file; it is converted a line at a time."""
        last: Exception | None = None
        for _ in range(attempts):
            try:
                with tempfile.TemporaryDirectory(prefix="gptbatch-gemini-") as tmp:
                    raw = Path(tmp) / "results.jsonl"
                    self.client.files.download(file=file_id, destination=str(raw))
                    size = 0
                    with open(raw, "rb") as src, atomic_writer(dest, "wb") as out:
                        for line in src:
                            if line.strip():
                                data = json.dumps(result_line(json.loads(line)), ensure_ascii=False)
                                out.write(data.encode() + b"\n")
                                size += len(data.encode()) + 1
                                crashpoint("mid_download")
                return size
            except Exception as exc:
                if not _sdk_error(exc):
                    raise
                last = _translate(exc)
                if not isinstance(last, TransientRemoteError):
                    raise last from exc
        assert last is not None
        raise last

    def file_info(self, file_id: str) -> FileInfo:
        return _file_info(self._call(lambda: self.client.files.get(name=file_id)))

    def list_uploads(self) -> Iterator[FileInfo]:
        files = self._call(lambda: list(self.client.files.list(config={"page_size": 100})))
        return iter([_file_info(f) for f in files])

    def delete_file(self, file_id: str) -> None:
        self._call(lambda: self.client.files.delete(name=file_id))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()


def _file_info(f: Any) -> FileInfo:
    """A Gemini file; its filename is the shard file's name (the display name's first word)."""
    shown = (f.display_name or "").rpartition(" ")[0] or (f.display_name or "")
    created = _ts(f.create_time) or int(time.time())
    return FileInfo(str(f.name), shown, int(f.size_bytes or 0), created, _ts(f.expiration_time))
