"""Reporters render build events; a terminal also gets a live status line."""

from __future__ import annotations

import io
import json

from gptbatch.report import ConsoleReporter, JsonReporter, Progress


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_tallies_events() -> None:
    p = Progress()
    p.update("submitted", {"batch": "b1"})
    p.update("submitted", {"batch": "b2"})
    p.update("status", {"batch": "b1", "status": "in_progress"})
    assert p.line().startswith("[2 batches in flight: 1 in_progress, 1 validating]")
    p.update("collected", {"batch": "b1", "ok": 3, "failed": 1, "retry": 2})
    assert p.line() == ("[1 batches in flight: 1 validating] collected 3 ok, 1 failed, 2 to retry")


def test_terminal_gets_a_status_line_and_logs_do_not() -> None:
    tty, log = FakeTerminal(), io.StringIO()
    for stream in (tty, log):
        r = ConsoleReporter(stream)
        r.event("submitted", shard="s", batch="b1", model="m", requests=2, tokens=9)
        r.event("collected", batch="b1", status="completed", ok=2, failed=0, retry=0)
    assert "batches in flight" in tty.getvalue() and "\x1b[K" in tty.getvalue()
    assert "batches in flight" not in log.getvalue()
    assert "submitted b1 (shard s): m, 2 requests, ~9 tokens" in log.getvalue()


def test_json_reporter_writes_one_object_per_event() -> None:
    out = io.StringIO()
    JsonReporter(out).event("refused", batch="b", code="token_limit_exceeded")
    record = json.loads(out.getvalue())
    assert record["event"] == "refused" and record["code"] == "token_limit_exceeded"
