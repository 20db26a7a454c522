"""A thin HTTP layer over BatchService: routes as the openai SDK calls them, faults, journal."""

from __future__ import annotations

import contextlib
import email.message
import email.utils
import json
import os
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from gptbatch.simulator.anthropic import AnthropicBatches, AnthropicError
from gptbatch.simulator.clock import SimClock
from gptbatch.simulator.config import Fault, SimConfig
from gptbatch.simulator.flavours import Flavour
from gptbatch.simulator.gemini import GeminiError
from gptbatch.simulator.gemini import route as gemini_route
from gptbatch.simulator.journal import ApiCall, Journal
from gptbatch.simulator.service import BatchService
from gptbatch.simulator.validation import ApiError

__all__ = ["Simulator", "parse_multipart", "run_simulator"]

# Gemini API routes: by path, or (the SDK's default version, v1) by Google's key header
GEMINI_PREFIXES = ("/v1beta/", "/upload/", "/download/")
CHUNK = 64 * 1024
# What writing to a client that closed its end (killed, interrupted, timed out) raises.
CLIENT_GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)
MISSING_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header "
    "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with "
    "blank username) if you're accessing the API from your browser and are prompted for a "
    "username and password. You can obtain an API key from "
    "https://platform.openai.com/account/api-keys."
)
BAD_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using "
    "your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was "
    "not valid JSON.)"
)


def parse_multipart(body: bytes, content_type: str) -> dict[str, tuple[str | None, bytes]]:
    """Split a multipart/form-data body into {field name: (filename or None, bytes)}."""
    header = email.message.Message()
    header["content-type"] = content_type
    if header.get_content_type() != "multipart/form-data" or not header.get_param("boundary"):
        raise ApiError(
            400,
            f"Invalid Content-Type header ({content_type}), expected "
            "multipart/form-data with a boundary.",
        )
    delimiter = b"--" + str(header.get_param("boundary")).encode("latin-1")
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in body.split(delimiter)[1:]:
        if part.startswith(b"--"):
            break  # the closing delimiter
        head, sep, content = part.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        if not sep:
            raise ApiError(400, "Malformed multipart/form-data body.")
        part_headers = email.message.Message()
        for line in head.decode("utf-8", "replace").split("\r\n"):
            name, colon, value = line.partition(":")
            if colon:
                part_headers[name.strip()] = value.strip()
        field_name = part_headers.get_param("name", header="content-disposition")
        if not isinstance(field_name, str):
            continue
        fields[field_name] = (part_headers.get_filename(), content.removesuffix(b"\r\n"))
    return fields


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], service: BatchService) -> None:
        self.service = service
        self.flavour = Flavour(service.config.flavour)  # what crosses the wire
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        self._closing = False
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.address_family = family
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        """Bind without HTTPServer's reverse DNS lookup of the host (slow when offline)."""
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    @property
    def open_connections(self) -> int:
        """Connections whose handler thread has not finished."""
        with self._connections_lock:
            return len(self._connections)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Print a handler's traceback, unless the client went away or we are stopping."""
        error = sys.exc_info()[1]
        if isinstance(error, CLIENT_GONE) or (self._closing and isinstance(error, OSError)):
            return
        super().handle_error(request, client_address)

    def close_connections(self) -> None:
        """Drop every open keep-alive connection (used when the simulator stops)."""
        with self._connections_lock:
            self._closing = True
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "gptbatch-simulator"
    # Headers and body go out as separate writes: with Nagle's algorithm the body waits
    # for the client's delayed ACK, adding ~40 ms to every call (2 s at time_scale 50).
    disable_nagle_algorithm = True
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the journal records every call."""

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    # --- plumbing ----------------------------------------------------------------------

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline(65_537).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65_537) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.read(2)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def date_time_string(self, timestamp: float | None = None) -> str:
        """The Date header in the simulated time, as the API's clock (files expire by it)."""
        when = self.server.service.clock.now() if timestamp is None else timestamp
        return email.utils.formatdate(when, usegmt=True)

    def _start(self, status: int, content_type: str, length: int, extra: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(length))
        self.send_header("x-request-id", "req_" + os.urandom(16).hex())
        self.send_header("openai-organization", self.server.service.config.organization)
        self.send_header("openai-version", "2020-10-01")
        self.send_header("openai-processing-ms", "1")
        for name, value in extra.items():
            self.send_header(name, value)
        self.end_headers()

    def _send_json(self, status: int, payload: Any, extra: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self._start(status, "application/json", len(data), extra or {})
        self.wfile.write(data)

    def _drop(self) -> None:
        """Close the connection abruptly, mid-reply or instead of one."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.wfile.flush()
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _handle(self, method: str) -> None:
        service = self.server.service
        url = urlsplit(self.path)
        path = url.path.rstrip("/") or "/"
        try:
            retry = int(self.headers.get("x-stainless-retry-count") or 0)
        except ValueError:
            retry = 0

        def record(status: int, fault: str | None = None) -> None:
            # Before replying, so a client that got the reply always finds the call recorded.
            call = ApiCall(method, path, status, service.clock.now(), url.query, retry, fault)
            service.journal.record_call(call)

        body = self._read_body()
        self._extra: dict[str, str] = {}  # headers a route answers with (Gemini's uploads)
        auth = self.headers.get("Authorization", "")
        if path.startswith("/v1/messages") and self.headers.get("x-api-key"):
            auth = "Bearer " + self.headers["x-api-key"]  # Anthropic's own header
        gemini = path.startswith(GEMINI_PREFIXES) or bool(self.headers.get("x-goog-api-key"))
        self._gemini = gemini
        if gemini and (self.headers.get("x-goog-api-key") or "upload_id=" in url.query):
            auth = "Bearer " + (self.headers.get("x-goog-api-key") or "upload")  # Google's
        if not auth.startswith("Bearer ") or not auth[len("Bearer ") :].strip():
            record(401)
            error = ApiError(401, MISSING_KEY)
            if path.startswith("/v1/messages"):
                error = AnthropicError(401, "invalid x-api-key", type="authentication_error")
            if gemini:
                error = GeminiError(401, "API key not valid. Please pass a valid API key.")
            self._send_json(401, error.body())
            return
        slow = service.take_route_fault("slow", method, path)
        if slow is not None:
            time.sleep(slow.delay)
        failure = service.take_route_fault("http", method, path)
        if failure is not None:
            record(failure.status, "http")
            self._send_fault(failure)
            return
        full = service.take_route_fault("queue_full", method, path)
        if full is not None:
            error = service.queue_full_error(_json_body(body), full)
            record(429, "queue_full")
            self._send_json(429, error.body())
            return
        try:
            result = self._route(method, path, url.query, body)
            result = self.server.flavour.present(method, path.strip("/").split("/"), result)
        except ApiError as exc:
            record(exc.status)
            self._send_json(exc.status, exc.body())
            return
        if isinstance(result, bytes):
            self._send_content(result, record)
            return
        if service.take_route_fault("lost_reply", method, path) is not None:
            record(200, "lost_reply")
            self._drop()
            return
        record(200)
        self._send_json(200, result, self._extra)

    def _send_fault(self, fault: Fault) -> None:
        extra: dict[str, str] = {}
        if fault.retry_after is not None:
            extra["retry-after"] = str(max(0, round(fault.retry_after)))
            extra["retry-after-ms"] = str(int(fault.retry_after * 1000))
        if fault.status == 429:
            message = "Rate limit reached for requests. Please try again in a moment."
            error = ApiError(429, message, type="requests", code="rate_limit_exceeded")
        elif fault.status >= 500:
            message = "The server had an error while processing your request. Sorry about that!"
            error = ApiError(fault.status, message, type="server_error")
        else:
            error = ApiError(fault.status, "This call was rejected by a simulated fault.")
        self._send_json(fault.status, error.body(), extra)

    def _send_content(self, data: bytes, record: Any) -> None:
        service = self.server.service
        path = urlsplit(self.path).path
        drop = service.take_route_fault("drop", "GET", path)
        record(200, None if drop is None else "drop")
        self._start(200, "application/octet-stream", len(data), {})
        view = memoryview(data)
        end = min(len(data), drop.after_bytes) if drop is not None else len(data)
        for start in range(0, end, CHUNK):
            self.wfile.write(view[start : min(end, start + CHUNK)])
        if drop is not None:
            self._drop()

    # --- routes ------------------------------------------------------------------------

    def _route(self, method: str, path: str, query: str, body: bytes) -> dict[str, Any] | bytes:
        service = self.server.service
        params = {k: v[-1] for k, v in parse_qs(query).items()}
        parts = path.strip("/").split("/")
        if self._gemini:
            result, self._extra = gemini_route(
                service.gemini, method, parts, params, body, self.headers, self._base()
            )
            return result
        elif parts[:2] == ["v1", "files"]:
            if len(parts) == 2:
                if method == "POST":
                    return self._upload(body)
                if method == "GET":
                    return service.list_files(
                        purpose=self.server.flavour.list_purpose(params.get("purpose")),
                        limit=_int_param(params, "limit", 10_000),
                        after=params.get("after"),
                        order=params.get("order", "desc"),
                    )
            elif len(parts) == 3:
                if method == "GET":
                    return service.file(parts[2])
                if method == "DELETE":
                    return service.delete_file(parts[2])
            elif len(parts) == 4 and parts[3] == "content" and method == "GET":
                return service.file_content(parts[2])
            else:
                raise ApiError(404, f"Invalid URL ({method} {path})")
        elif parts[:3] == ["v1", "messages", "batches"]:
            return self._anthropic(method, parts[3:], params, body)
        elif parts[:2] == ["v1", "batches"]:
            if len(parts) == 2:
                if method == "POST":
                    params = _json_body(body)
                    self.server.flavour.check_create(params)
                    return service.create_batch(params)
                if method == "GET":
                    return service.list_batches(
                        limit=_int_param(params, "limit", 20), after=params.get("after")
                    )
            elif len(parts) == 3:
                if method == "GET":
                    return service.batch(parts[2])
            elif len(parts) == 4 and parts[3] == "cancel" and method == "POST":
                return service.cancel_batch(parts[2])
            else:
                raise ApiError(404, f"Invalid URL ({method} {path})")
        else:
            raise ApiError(404, f"Invalid URL ({method} {path})")
        raise ApiError(405, f"Invalid method for URL ({method} {path})")

    def _anthropic(
        self, method: str, rest: list[str], params: dict[str, str], body: bytes
    ) -> dict[str, Any] | bytes:
        """Anthropic's /v1/messages/batches routes (see simulator/anthropic.py)."""
        batches: AnthropicBatches = self.server.service.anthropic
        base = self._base()
        if not rest and method == "POST":
            return batches.create(body, base)
        if not rest and method == "GET":
            return batches.list(
                base,
                limit=_int_param(params, "limit", 20),
                after_id=params.get("after_id"),
                before_id=params.get("before_id"),
            )
        if len(rest) == 1 and method == "GET":
            return batches.retrieve(rest[0], base)
        if len(rest) == 2 and rest[1] == "cancel" and method == "POST":
            return batches.cancel(rest[0], base)
        if len(rest) == 2 and rest[1] == "results" and method == "GET":
            return batches.results(rest[0])
        raise AnthropicError(
            404, f"Invalid URL ({method} /v1/messages/batches)", type="not_found_error"
        )

    def _base(self) -> str:
        host = (
            self.headers.get("Host")
            or f"{self.server.server_address[0]}:{self.server.server_address[1]}"
        )
        return f"http://{host}"

    def _upload(self, body: bytes) -> dict[str, Any]:
        fields = parse_multipart(body, self.headers.get("Content-Type", ""))
        if "file" not in fields:
            raise ApiError(
                400,
                "Missing required parameter: 'file'.",
                param="file",
                code="missing_required_parameter",
            )
        filename, data = fields["file"]
        purpose = fields.get("purpose", (None, b""))[1].decode("utf-8", "replace").strip()
        seconds = fields.get("expires_after[seconds]", (None, b""))[1].strip()
        purpose = self.server.flavour.upload_purpose(purpose, bool(seconds))
        try:
            expires_after = float(seconds) if seconds else None
        except ValueError:
            raise ApiError(400, "Invalid 'expires_after.seconds'.", param="expires_after") from None
        return self.server.service.create_file(filename or "upload", purpose, data, expires_after)


def _json_body(body: bytes) -> Any:
    try:
        return json.loads(body or b"{}")
    except ValueError:
        raise ApiError(400, BAD_JSON) from None


def _int_param(params: dict[str, str], name: str, default: int) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ApiError(
            400,
            f"Invalid '{name}': expected an integer, but got '{raw}' instead.",
            param=name,
            code="invalid_type",
        ) from None


class Simulator:
    """A running (after start()) Batch API simulator on loopback."""

    def __init__(
        self,
        config: SimConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        work_ahead: bool = False,
    ) -> None:
        """work_ahead: process batches in a thread of their own between calls, as the real
        service does (for a simulator in a process of its own; in the client's process the
        thread would only take turns with it)."""
        self.config = config or SimConfig()
        self.work_ahead = work_ahead
        self._working = threading.Event()
        self._worker: threading.Thread | None = None
        self.service = BatchService(self.config)
        self.clock: SimClock = self.service.clock
        self.journal: Journal = self.service.journal
        try:
            self._httpd = _HTTPServer((host, port), self.service)
        except BaseException:
            self.service.close()
            raise
        self._thread: threading.Thread | None = None

    @property
    def saved_time(self) -> float | None:
        """The simulated time config.state_dir was saved at and resumed from (None: fresh)."""
        return self.service.saved_time

    @property
    def host(self) -> str:
        """The address the server listens on."""
        return str(self._httpd.server_address[0])

    @property
    def port(self) -> int:
        """The port the server listens on (the real one when started with port 0)."""
        return int(self._httpd.server_address[1])

    @property
    def open_connections(self) -> int:
        """Client connections a handler thread is still serving."""
        return self._httpd.open_connections

    @property
    def base_url(self) -> str:
        """The OPENAI_BASE_URL for clients: http://HOST:PORT/v1."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    def _start_worker(self) -> None:
        if self.work_ahead and self._worker is None:
            self._working.set()
            worker = threading.Thread(
                target=self._work, name=f"gptbatch-simulator-work:{self.port}", daemon=True
            )
            worker.start()
            self._worker = worker  # only a started thread (a signal may land in between)

    def _work(self) -> None:
        while self._working.is_set():
            try:
                more = self.service.work_ahead()
            except Exception:  # the next call meets the same error and reports it
                more = False
            if not more:
                time.sleep(0.02)

    def _stop_worker(self) -> None:
        self._working.clear()
        if self._worker is not None:
            self._worker.join()
            self._worker = None

    def start(self) -> Simulator:
        """Serve in a background thread."""
        self._start_worker()
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"gptbatch-simulator:{self.port}",
                daemon=True,
            )
            self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until interrupted; then close."""
        self._start_worker()
        try:
            self._httpd.serve_forever(poll_interval=0.1)
        finally:
            self._httpd.close_connections()
            self._httpd.server_close()

    def stop(self) -> None:
        """Stop serving, close every connection, save the time reached (with a state_dir)."""
        self._stop_worker()
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.close_connections()
        self._httpd.server_close()
        self.service.close()

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- controls for tests ------------------------------------------------------------

    def add_fault(self, fault: Fault) -> None:
        """Arm a fault."""
        self.service.add_fault(fault)

    def clear_faults(self) -> None:
        """Disarm every fault."""
        self.service.clear_faults()

    def set_token_limit(self, model: str, limit: int | None) -> None:
        """Set (None: remove) a model's enqueued-token limit."""
        self.service.set_token_limit(model, limit)

    def set_request_limit(self, model: str, limit: int | None) -> None:
        """Set (None: remove) a model's enqueued-request limit."""
        self.service.set_request_limit(model, limit)

    def expire_batch(self, batch_id: str) -> dict[str, Any]:
        """Expire a batch now, from outside."""
        return self.service.expire_batch(batch_id)

    def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        """Cancel a batch now, from outside (as if someone used the dashboard)."""
        return self.service.cancel_batch(batch_id)

    def fail_batch(
        self, batch_id: str, code: str = "server_error", message: str | None = None
    ) -> dict[str, Any]:
        """Fail a batch now, from outside."""
        return self.service.fail_batch(batch_id, code, message)

    def report_status(self, batch_id: str, status: str | None) -> None:
        """Make a batch report this status string over HTTP (None: its own again)."""
        if status is None:
            self._httpd.flavour.reported.pop(batch_id, None)
        else:
            self._httpd.flavour.reported[batch_id] = status


@contextlib.contextmanager
def run_simulator(
    config: SimConfig | None = None, *, host: str = "127.0.0.1", port: int = 0
) -> Iterator[Simulator]:
    """Run a simulator in a background thread for the duration of a with-block."""
    sim = Simulator(config, host=host, port=port)
    sim.start()
    try:
        yield sim
    finally:
        sim.stop()
