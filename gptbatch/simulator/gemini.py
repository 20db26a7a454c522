"""Gemini batch mode, as the `google-genai` SDK calls it (v1beta), on the simulator's clock.

- Files: a resumable upload (`POST /upload/v1beta/files`, `X-Goog-Upload-Command: start`,
  then the upload URL it answers with, `upload, finalize`); get, list, delete; a generated
  file (a job's results) downloads at `GET /v1beta/files/{id}:download?alt=media`.
- Jobs: `POST /v1beta/models/{model}:batchGenerateContent` with
  `{"batch": {"displayName", "inputConfig": {"fileName"}}}`, a JSONL of `{key, request}`
  lines; get, list (newest first, `pageSize`/`pageToken`), `:cancel`, delete. A job is an
  operation `{name, metadata: {state: BATCH_STATE_*, ...}, done, response}`: PENDING, then
  RUNNING, then SUCCEEDED with a results file, or CANCELLED, or EXPIRED 48 h after creation.
- Results: one line per request, `{key, response}` or `{key, error}`, shuffled: Google's
  reference says input order, but gptbatch maps them by key and the simulator proves it.
  Every answered request is billed in the shared journal, like an OpenAI batch's.
A finished upload, a job's creation, a cancel and a delete are records (`apply`): with a
state directory the service saves them (an upload's bytes as a blob) before they take
effect and replays them on restart. An upload still in progress is not kept.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gptbatch.simulator.journal import BatchEvent, Billed, Journal
from gptbatch.simulator.validation import ApiError

__all__ = ["GEMINI_RECORDS", "GeminiBatches", "GeminiError"]

# The records `GeminiBatches.apply` takes (saved and replayed by the service).
GEMINI_RECORDS = (
    "gemini_file",
    "gemini_job",
    "gemini_cancel",
    "gemini_delete_file",
    "gemini_delete_job",
)

EXPIRES_AFTER = 48 * 3600.0  # a job pending or running this long expires
FILE_TTL = 48 * 3600.0  # uploaded files are deleted 48 h after upload
MAX_FILE_BYTES = 2 * 1024**3
STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED"}
STATUS |= {404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}


class GeminiError(ApiError):
    """An error in Google's shape: {"error": {"code", "message", "status"}}."""

    def body(self) -> dict[str, Any]:
        status = STATUS.get(self.status, "UNKNOWN")
        return {"error": {"code": self.status, "message": self.message, "status": status}}


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat().replace("+00:00", "Z")


@dataclass
class _File:
    name: str  # files/<id>
    display_name: str | None
    mime_type: str
    data: bytes
    created: float
    generated: bool = False  # a job's results (downloadable), not an upload


@dataclass
class _Job:
    name: str  # batches/<id>
    display_name: str | None
    model: str  # models/<id>
    file_name: str
    requests: list[bytes]
    created: float
    ends: float
    state: str = "BATCH_STATE_PENDING"
    ended: float | None = None
    output: str | None = None  # files/<id> of the results
    stats: dict[str, int] = field(default_factory=dict)


class GeminiBatches:
    """Files and batch jobs of the Gemini API's routes: the state behind server.py's routing."""

    def __init__(
        self, now: Callable[[], float], journal: Journal, *, processing_seconds: float = 10.0
    ) -> None:
        self.now = now
        self.journal = journal
        self.processing_seconds = processing_seconds
        self._lock = threading.RLock()
        self._files: dict[str, _File] = {}
        self._uploads: dict[str, tuple[dict[str, Any], bytearray]] = {}
        self._jobs: dict[str, _Job] = {}
        self._serial = 0
        # keys whose next result is an error (HTTP code), once each: {key: code}
        self.errored: dict[str, int] = {}
        self.unknown_models: set[str] = set()  # models batchGenerateContent 404s for
        # Saves a record (and its blob) then applies it; the service's, with a state directory.
        self.commit: Callable[[dict[str, Any], bytes | None], Any] = self.apply

    def _id(self, seed: bytes) -> str:
        self._serial += 1
        digest = hashlib.sha256(f"{self.now()}:{self._serial}:".encode() + seed)
        return digest.hexdigest()[:20]

    # --- files -----------------------------------------------------------------------------

    def start_upload(self, body: bytes, headers: Any, base: str) -> dict[str, str]:
        """The resumable upload's start: the headers naming where the bytes go."""
        if headers.get("X-Goog-Upload-Command", "").strip() != "start":
            raise GeminiError(400, "only resumable uploads are supported (command start)")
        meta = json.loads(body or b"{}").get("file") or {}
        with self._lock:
            upload_id = self._id(body)
            self._uploads[upload_id] = (meta, bytearray())
        url = f"{base}/upload/v1beta/files?upload_id={upload_id}&upload_protocol=resumable"
        return {"x-goog-upload-url": url, "x-goog-upload-status": "active"}

    def continue_upload(
        self, upload_id: str, body: bytes, headers: Any
    ) -> tuple[dict[str, Any], dict[str, str]]:
        """A chunk of a resumable upload; the file once `finalize` comes."""
        command = headers.get("X-Goog-Upload-Command", "")
        with self._lock:
            pending = self._uploads.get(upload_id)
            if pending is None:
                raise GeminiError(404, f"no upload {upload_id}")
            meta, data = pending
            if int(headers.get("X-Goog-Upload-Offset") or 0) != len(data):
                raise GeminiError(400, "X-Goog-Upload-Offset does not match the bytes received")
            data += body
            if len(data) > MAX_FILE_BYTES:
                raise GeminiError(400, f"file is over {MAX_FILE_BYTES:,} bytes")
            if "finalize" not in command:
                return {}, {"x-goog-upload-status": "active"}
            del self._uploads[upload_id]
            name = meta.get("name") or f"files/{self._id(bytes(data[:4096]))}"
            if name in self._files:
                raise GeminiError(400, f"file {name} already exists")
            # proto JSON: the SDK sends snake_case names, Google's docs camelCase
            mime = str(meta.get("mimeType") or meta.get("mime_type") or "application/jsonl")
            shown = meta.get("displayName") or meta.get("display_name")
            record = {
                "op": "gemini_file",
                "at": self.now(),
                "id": "gemini-" + name.replace("/", "-"),  # its blob's name
                "name": name,
                "display_name": shown,
                "mime_type": mime,
                "bytes": len(data),
            }
            file = self.commit(record, bytes(data))
            return {"file": self._file_json(file)}, {"x-goog-upload-status": "final"}

    def get_file(self, file_id: str) -> dict[str, Any]:
        with self._lock:
            return self._file_json(self._file(file_id))

    def list_files(self, page_size: int, token: str | None) -> dict[str, Any]:
        with self._lock:
            self._expire_files()
            files = sorted(self._files.values(), key=lambda f: f.created, reverse=True)
            return _page([self._file_json(f) for f in files], "files", page_size, token)

    def delete_file(self, file_id: str) -> dict[str, Any]:
        with self._lock:
            name = self._file(file_id).name
            self.commit({"op": "gemini_delete_file", "at": self.now(), "id": name}, None)
            return {}

    def download(self, file_id: str) -> bytes:
        with self._lock:
            file = self._file(file_id)
            if not file.generated:
                raise GeminiError(400, "uploaded files cannot be downloaded")
            return file.data

    def _file(self, file_id: str) -> _File:
        self._expire_files()
        file = self._files.get("files/" + file_id.removeprefix("files/"))
        if file is None:
            raise GeminiError(404, f"File files/{file_id} not found")
        return file

    def _expire_files(self, until: float | None = None) -> None:
        now = self.now() if until is None else until
        # Uploads go after 48 h (Google's Files API); how long a results file is kept is
        # not documented, so the simulator keeps it (gptbatch waits rather than resend).
        expired = [
            n for n, f in self._files.items() if not f.generated and now >= f.created + FILE_TTL
        ]
        for name in expired:
            del self._files[name]

    def _file_json(self, f: _File) -> dict[str, Any]:
        return {
            "name": f.name,
            **({"displayName": f.display_name} if f.display_name else {}),
            "mimeType": f.mime_type,
            "sizeBytes": str(len(f.data)),
            "createTime": _iso(f.created),
            "updateTime": _iso(f.created),
            **({} if f.generated else {"expirationTime": _iso(f.created + FILE_TTL)}),
            "sha256Hash": hashlib.sha256(f.data).hexdigest(),
            "state": "ACTIVE",
            "source": "GENERATED" if f.generated else "UPLOADED",
            **({"downloadUri": f"{f.name}:download"} if f.generated else {}),
        }

    # --- jobs ------------------------------------------------------------------------------

    def create(self, model: str, body: bytes) -> dict[str, Any]:
        try:
            batch = (json.loads(body or b"{}") or {}).get("batch") or {}
        except (ValueError, AttributeError):
            raise GeminiError(400, "request body is not a JSON object") from None
        file_name = (batch.get("inputConfig") or {}).get("fileName")
        if not isinstance(file_name, str):
            raise GeminiError(400, "batch.inputConfig.fileName is required (inlined: unsupported)")
        if not batch.get("displayName"):
            raise GeminiError(400, "batch.displayName is required")
        if model.removeprefix("models/") in self.unknown_models:
            raise GeminiError(404, f"{model} is not found for API version v1beta")
        with self._lock:
            file = self._file(file_name)
            lines = [line for line in file.data.splitlines() if line.strip()]
            if not lines:
                raise GeminiError(400, f"{file_name} holds no requests")
            now = self.now()
            record = {
                "op": "gemini_job",
                "at": now,
                "id": "batches/" + self._id(file.data[:4096]),
                "display_name": batch.get("displayName"),
                "model": model,
                "file_name": file.name,
                "ends": now + self.processing_seconds,
            }
            return self._public(self.commit(record, None))

    def apply(self, record: dict[str, Any], data: bytes | None = None) -> Any:
        """Make an upload, a job, a cancel or a delete happen at its record's time (live, or
        replayed: nothing here reads the clock)."""
        op, at = record["op"], float(record["at"])
        with self._lock:
            if op == "gemini_file":
                if data is None:
                    raise ValueError("a gemini_file record needs its bytes")
                name = record["name"]
                file = _File(name, record["display_name"], record["mime_type"], data, at)
                self._files[name] = file
                return file
            if op == "gemini_job":
                self._expire_files(at)
                lines = [x for x in self._files[record["file_name"]].data.splitlines() if x.strip()]
                job = _Job(
                    record["id"],
                    record["display_name"],
                    record["model"],
                    record["file_name"],
                    lines,
                    at,
                    float(record["ends"]),
                )
                self._jobs[job.name] = job
                self.journal.record_event(BatchEvent(job.name, job.state, at))
                return job
            if op == "gemini_cancel":
                self._advance(at)
                job = self._jobs[record["id"]]
                if job.state in ("BATCH_STATE_PENDING", "BATCH_STATE_RUNNING"):
                    self._end(job, at, "BATCH_STATE_CANCELLED")
                return {}
            if op == "gemini_delete_file":
                self._files.pop(record["id"], None)
                return {}
            if op == "gemini_delete_job":
                self._jobs.pop(record["id"], None)
                return {}
        raise ValueError(f"unknown record {op!r}")

    def get(self, job_id: str) -> dict[str, Any]:
        with self._lock:
            return self._public(self._job(job_id))

    def list(self, page_size: int, token: str | None) -> dict[str, Any]:
        with self._lock:
            self._advance()
            jobs = [self._public(j) for j in reversed(self._jobs.values())]  # newest first
            return _page(jobs, "operations", page_size, token)

    def cancel(self, job_id: str) -> dict[str, Any]:
        with self._lock:
            job = self._job(job_id)
            if job.state in ("BATCH_STATE_PENDING", "BATCH_STATE_RUNNING"):
                self.commit({"op": "gemini_cancel", "at": self.now(), "id": job.name}, None)
            return {}

    def delete(self, job_id: str) -> dict[str, Any]:
        with self._lock:
            name = self._job(job_id).name
            self.commit({"op": "gemini_delete_job", "at": self.now(), "id": name}, None)
            return {}

    # --- for tests -------------------------------------------------------------------------

    def names(self) -> list[str]:
        with self._lock:
            return list(self._jobs)

    def requests_of(self, name: str) -> list[dict[str, Any]]:
        with self._lock:
            return [json.loads(line) for line in self._job(name).requests]

    def progress_now(self, name: str, share: float) -> None:
        """Put a job `share` of the way through its run now (its times move back)."""
        with self._lock:
            job = self._job(name)
            span, now = job.ends - job.created, self.now()
            job.created = now - (0.25 + 0.75 * share) * span  # it runs after a quarter
            job.ends = job.created + span

    def finish_now(self, name: str) -> None:
        """Process a job now, ahead of the others (the service's order is its own)."""
        with self._lock:
            job = self._job(name)
            job.ends = min(job.ends, self.now())

    # --- the world -------------------------------------------------------------------------

    def _job(self, job_id: str) -> _Job:
        self._advance()
        job = self._jobs.get("batches/" + job_id.removeprefix("batches/"))
        if job is None:
            raise GeminiError(404, f"Batch batches/{job_id} not found")
        return job

    def _advance(self, until: float | None = None) -> None:
        now = self.now() if until is None else until
        for job in self._jobs.values():
            if job.state == "BATCH_STATE_PENDING" and now >= job.created + 0.25 * (
                job.ends - job.created
            ):
                job.state = "BATCH_STATE_RUNNING"
                self.journal.record_event(BatchEvent(job.name, job.state, now))
            if job.state == "BATCH_STATE_RUNNING" or job.state == "BATCH_STATE_PENDING":
                expiry = job.created + EXPIRES_AFTER
                if job.ends <= expiry and now >= job.ends:
                    self._end(job, job.ends, "BATCH_STATE_SUCCEEDED")
                elif now >= expiry:
                    self._end(job, expiry, "BATCH_STATE_EXPIRED")

    def _end(self, job: _Job, at: float, state: str) -> None:
        """Every request's result at once, shuffled (no order is promised), when succeeded."""
        ok = failed = 0
        if state == "BATCH_STATE_SUCCEEDED":
            out = []
            for raw in job.requests:
                line = self._answer(job, raw, at)
                ok += "response" in line
                failed += "error" in line
                out.append(json.dumps(line).encode() + b"\n")
            random.Random(job.name).shuffle(out)
            name = "files/batch-" + job.name.removeprefix("batches/")
            self._files[name] = _File(name, None, "application/jsonl", b"".join(out), at, True)
            job.output = name
        job.stats = {"ok": ok, "failed": failed}
        job.state = state
        job.ended = at
        self.journal.record_event(BatchEvent(job.name, state, at))

    def _answer(self, job: _Job, raw: bytes, at: float) -> dict[str, Any]:
        try:
            obj = json.loads(raw)
        except ValueError:
            return {"key": None, "error": _error(400, "line is not valid JSON")}
        key = obj.get("key") if isinstance(obj, dict) else None
        request = obj.get("request") if isinstance(obj, dict) else None
        if not isinstance(request, dict) or not isinstance(request.get("contents"), list):
            return {"key": key, "error": _error(400, "request.contents is required")}
        if request.get("model") not in (None, job.model, job.model.removeprefix("models/")):
            return {"key": key, "error": _error(400, "request.model differs from the job's")}
        if key in self.errored:
            code = self.errored.pop(key)
            return {"key": key, "error": _error(code, f"simulated {STATUS.get(code, code)}")}
        response, prompt, completion = _response(request, job.model)
        model = job.model.removeprefix("models/")
        self.journal.record_billed(Billed(job.name, str(key), model, prompt, at, completion))
        return {"key": key, "response": response}

    def _public(self, job: _Job) -> dict[str, Any]:
        total = len(job.requests)
        ok, failed = job.stats.get("ok", 0), job.stats.get("failed", 0)
        done = job.state not in ("BATCH_STATE_PENDING", "BATCH_STATE_RUNNING")
        pending = 0 if done else total
        if job.state == "BATCH_STATE_RUNNING":  # progress as the job runs (succeeded so far)
            began = job.created + 0.25 * (job.ends - job.created)
            share = (self.now() - began) / max(1e-9, job.ends - began)
            ok = min(total - 1, max(0, int(total * share)))
            pending = total - ok
        meta: dict[str, Any] = {
            "@type": "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch",
            "name": job.name,
            "model": job.model,
            "inputConfig": {"fileName": job.file_name},
            "createTime": _iso(job.created),
            "updateTime": _iso(job.ended or job.created),
            "batchStats": {
                "requestCount": str(total),
                "successfulRequestCount": str(ok),
                "failedRequestCount": str(failed),
                "pendingRequestCount": str(pending),
            },
            "state": job.state,
        }
        if job.display_name:
            meta["displayName"] = job.display_name
        if job.ended is not None:
            meta["endTime"] = _iso(job.ended)
        if job.output is not None:
            meta["output"] = {"responsesFile": job.output}
        public: dict[str, Any] = {"name": job.name, "metadata": meta}
        if done:
            public["done"] = True
            public["response"] = {"@type": meta["@type"], **meta}
        return public


def _page(items: list[Any], field: str, page_size: int, token: str | None) -> dict[str, Any]:
    start = int(token) if token and token.isdigit() else 0
    size = max(1, min(page_size or 50, 1000))
    out: dict[str, Any] = {field: items[start : start + size]}
    if start + size < len(items):
        out["nextPageToken"] = str(start + size)
    return out


def _error(code: int, message: str) -> dict[str, Any]:
    return {"code": code, "message": message, "status": STATUS.get(code, "UNKNOWN")}


def _response(request: dict[str, Any], model: str) -> tuple[dict[str, Any], int, int]:
    """A deterministic GenerateContentResponse for a request (text from its digest)."""
    canonical = json.dumps(request, sort_keys=True, separators=(",", ":")).encode()
    digest = hashlib.sha256(canonical).hexdigest()
    prompt = max(1, len(canonical) // 4)  # the simulator's own rough count
    limit = (request.get("generationConfig") or {}).get("maxOutputTokens")
    completion = min(int(limit), 4) if isinstance(limit, int) and limit > 0 else 4
    return (
        {
            "candidates": [
                {
                    "content": {"role": "model", "parts": [{"text": f"reply {digest[:16]}"}]},
                    "finishReason": "STOP",
                    "index": 0,
                }
            ],
            "usageMetadata": {
                "promptTokenCount": prompt,
                "candidatesTokenCount": completion,
                "totalTokenCount": prompt + completion,
            },
            "modelVersion": model.removeprefix("models/"),
            "responseId": digest[:24],
        },
        prompt,
        completion,
    )


def route(
    gemini: GeminiBatches,
    method: str,
    parts: list[str],
    params: dict[str, str],
    body: bytes,
    headers: Any,
    base: str,
) -> tuple[dict[str, Any] | bytes, dict[str, str]]:
    """A Gemini route (path parts from `v1beta` or `v1`, `upload` or `download` on): the
    answer and the headers to send with it."""
    if parts[0] in ("upload", "download"):
        parts = parts[1:]
    if parts[0] not in ("v1beta", "v1"):
        raise GeminiError(404, f"Invalid URL ({method} /{'/'.join(parts)})")
    rest = parts[1:]
    page = int(params.get("pageSize") or 50), params.get("pageToken")
    if rest == ["files"] and method == "POST":
        if "upload_id" in params:
            return gemini.continue_upload(params["upload_id"], body, headers)
        return {}, gemini.start_upload(body, headers, base)
    if rest == ["files"] and method == "GET":
        return gemini.list_files(*page), {}
    if len(rest) == 2 and rest[0] == "files":
        file_id, _, verb = rest[1].partition(":")
        if verb == "download" and method == "GET":
            return gemini.download(file_id), {}
        if not verb and method == "GET":
            return gemini.get_file(file_id), {}
        if not verb and method == "DELETE":
            return gemini.delete_file(file_id), {}
    if len(rest) == 2 and rest[0] == "models" and method == "POST":
        model, _, verb = rest[1].partition(":")
        if verb == "batchGenerateContent":
            return gemini.create("models/" + model, body), {}
    if rest == ["batches"] and method == "GET":
        return gemini.list(*page), {}
    if len(rest) == 2 and rest[0] == "batches":
        job_id, _, verb = rest[1].partition(":")
        if verb == "cancel" and method == "POST":
            return gemini.cancel(job_id), {}
        if not verb and method == "GET":
            return gemini.get(job_id), {}
        if not verb and method == "DELETE":
            return gemini.delete(job_id), {}
    raise GeminiError(404, f"Invalid URL ({method} /{'/'.join(parts)})")
