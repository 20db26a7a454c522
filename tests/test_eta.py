"""The forecast of when a batch in flight finishes (gptbatch/eta.py)."""

from __future__ import annotations

import pytest

from gptbatch.eta import SLACK, Forecast
from gptbatch.remote import BatchInfo


def info(status: str, done: int = 0, total: int = 100, batch: str = "batch_a") -> BatchInfo:
    return BatchInfo(
        id=batch,
        status=status,
        endpoint="/v1/chat/completions",
        input_file_id="file-in",
        output_file_id=None,
        error_file_id=None,
        created_at=0,
        total=total,
        completed=done,
    )


def test_no_forecast_before_progress_is_seen_twice() -> None:
    forecast = Forecast()
    forecast.observe(info("validating"), 0.0)
    assert forecast.next_due(0.0) is None
    forecast.observe(info("in_progress", 10), 10.0)  # first sight of progress: no rate yet
    assert forecast.next_due(10.0) is None
    forecast.observe(info("in_progress", 10), 20.0)  # no progress since: still no rate
    assert forecast.next_due(20.0) is None


def test_in_progress_rate_gives_the_finish() -> None:
    forecast = Forecast()
    forecast.observe(info("in_progress", 10), 100.0)
    forecast.observe(info("in_progress", 30), 120.0)  # 1 request/s, 70 left
    assert forecast.next_due(120.0) == pytest.approx(190.0 + SLACK * 70.0)


def test_learned_finalizing_time_is_added() -> None:
    forecast = Forecast()
    forecast.observe(info("in_progress", 50, batch="old"), 0.0)
    forecast.observe(info("finalizing", 100, batch="old"), 10.0)
    forecast.observe(info("completed", 100, batch="old"), 14.0)  # finalized in 4 s
    assert forecast.finalizing() == pytest.approx(4.0)
    forecast.observe(info("in_progress", 0), 100.0)
    forecast.observe(info("in_progress", 50), 110.0)  # done at 120, finished at 124
    assert forecast.next_due(110.0) == pytest.approx(124.0 + SLACK * 14.0)
    # Seen finalizing before the forecast: the in-progress forecast stands.
    forecast.observe(info("finalizing", 100), 121.0)
    assert forecast.next_due(121.0) == pytest.approx(124.0 + SLACK * 3.0)


def test_finalizing_without_a_forecast_counts_from_first_sight() -> None:
    forecast = Forecast(finalize_seconds=[6.0])
    forecast.observe(info("finalizing", 100), 50.0)
    assert forecast.next_due(50.0) == pytest.approx(56.0 + SLACK * 6.0)
    assert Forecast().next_due(0.0) is None  # nothing learned: no guess


def test_a_missed_forecast_is_dropped_until_new_progress() -> None:
    forecast = Forecast()
    forecast.observe(info("in_progress", 0), 0.0)
    forecast.observe(info("in_progress", 50), 10.0)  # due at 20
    assert forecast.next_due(25.0) is None  # passed without finishing: poll as usual
    assert forecast.next_due(26.0) is None
    forecast.observe(info("in_progress", 90), 30.0)  # new progress: a new forecast
    due = forecast.next_due(30.0)
    assert due is not None and due > 30.0


def test_a_finished_batch_leaves_the_forecast() -> None:
    forecast = Forecast()
    forecast.observe(info("in_progress", 0), 0.0)
    forecast.observe(info("in_progress", 50), 10.0)
    forecast.observe(info("completed", 100), 19.0)
    assert forecast.seen == {}
    assert forecast.next_due(19.0) is None


def test_the_earliest_of_several_batches_wins() -> None:
    forecast = Forecast()
    for batch, rate in (("slow", 1), ("fast", 5)):
        forecast.observe(info("in_progress", 0, batch=batch), 0.0)
        forecast.observe(info("in_progress", 10 * rate, batch=batch), 10.0)
    # fast: 50 of 100 after 10 s -> 20 s; slow: 10 of 100 -> 100 s
    assert forecast.next_due(10.0) == pytest.approx(20.0 + SLACK * 10.0)
