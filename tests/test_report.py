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
    assert p.line() == ("[1 batch in flight: 1 validating] collected 3 ok, 1 failed, 2 to retry")


def test_terminal_gets_a_live_display_and_logs_do_not() -> None:
    tty, log = FakeTerminal(), io.StringIO()
    for stream in (tty, log):
        r = ConsoleReporter(stream)
        r.event("start", total=10, ok=4, failed=0, pending=6, budgets={"m": 100})
        r.event("submitted", shard="s", batch="b1", model="m", requests=2, tokens=50)
        r.event("collected", batch="b1", status="completed", ok=2, failed=0, retry=0)
    screen = tty.getvalue()
    assert "batches: 0 in flight" in screen and "\x1b[J" in screen  # redrawn in place
    assert "[###############...............] 50 / 100 tokens in flight" in screen
    assert "requests: 6 done, 0 failed, 4 pending of 10" in screen
    assert "in flight" not in log.getvalue().replace("tokens in flight", "")
    assert "submitted b1 (shard s): m, 2 requests, ~50 tokens" in log.getvalue()


def test_the_display_shows_status_counts_elapsed_and_an_eta() -> None:
    now = [0.0]
    p = Progress(clock=lambda: now[0])
    p.update("start", {"total": 100, "ok": 0, "failed": 0, "budgets": {"m": 1000}})
    p.update("submitted", {"batch": "b1", "model": "m", "tokens": 250})
    p.update("submitted", {"batch": "b2", "model": "m", "tokens": 250})
    p.update("status", {"batch": "b2", "status": "in_progress"})
    now[0] = 60.0
    p.update("collected", {"batch": "b1", "ok": 20, "failed": 0, "retry": 0})
    block = p.block(width=10)
    assert block[0].startswith("m ") and "[##........] 250 / 1,000 tokens in flight" in block[0]
    assert block[1] == "batches: 1 in flight (1 in_progress)"
    # 20 results in a minute, 80 to go: four more minutes.
    assert block[2].endswith("elapsed 0:01:00   ETA 0:04:00")
    # A finished batch frees its queue room at once, before its results are downloaded.
    p.update("status", {"batch": "b2", "status": "completed"})
    assert "0 / 1,000 tokens in flight" in p.block(width=10)[0]
    assert p.block()[1] == "batches: 0 in flight (1 completed)"


def test_a_build_in_passes_starts_again_without_counting_results_twice() -> None:
    """A build with steps reports a `start` a pass, each counting every result so far."""
    p = Progress()
    p.update("start", {"total": 6, "ok": 0, "failed": 0})
    p.update("collected", {"batch": "b1", "ok": 2, "failed": 1, "retry": 0})
    p.update("start", {"total": 8, "ok": 2, "failed": 1})  # the step grew by 2 rows
    p.update("collected", {"batch": "b2", "ok": 3, "failed": 0, "retry": 0})
    assert "requests: 5 done, 1 failed, 2 pending of 8" in p.block()[-1]
    assert p.line().endswith("collected 5 ok, 1 failed, 0 to retry")  # this run's, all passes


def test_json_reporter_writes_one_object_per_event() -> None:
    out = io.StringIO()
    JsonReporter(out).event("refused", batch="b", code="token_limit_exceeded")
    record = json.loads(out.getvalue())
    assert record["event"] == "refused" and record["code"] == "token_limit_exceeded"
