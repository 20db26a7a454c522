"""The forecast of when a batch in flight finishes (gptbatch/engine/eta.py)."""

from __future__ import annotations

import pytest
from batchinfo import batch_info

from gptbatch.api.remote import BatchInfo
from gptbatch.engine.eta import STEPS, Forecast


def info(status: str, done: int = 0, total: int = 100, batch: str = "batch_a") -> BatchInfo:
    return batch_info(batch, status, total=total, completed=done)


def test_no_forecast_before_progress_is_seen_twice() -> None:
    forecast = Forecast()
    forecast.observe(info("validating"), 0.0)
    assert forecast.next_poll(0.0) is None
    forecast.observe(info("in_progress", 10), 10.0)  # first sight of progress: no rate yet
    assert forecast.next_poll(10.0) is None
    forecast.observe(info("in_progress", 10), 20.0)  # no progress since: still no rate
    assert forecast.next_poll(20.0) is None


def test_in_progress_rate_gives_a_window_one_request_wide_each_side() -> None:
    forecast = Forecast()
    forecast.observe(info("in_progress", 10), 100.0)
    forecast.observe(info("in_progress", 30), 120.0)  # 1 request/s, 70 left: done at 190
    assert forecast.seen["batch_a"].window == pytest.approx((189.0, 191.0))
    assert forecast.next_poll(120.0) == pytest.approx(189.0)  # wake as the window opens
    assert forecast.next_poll(189.5) == pytest.approx(189.5 + 2.0 / STEPS)  # then poll across it


def test_learned_finalizing_time_is_added() -> None:
    forecast = Forecast()
    forecast.observe(info("in_progress", 50, batch="old"), 0.0)
    forecast.observe(info("finalizing", 100, batch="old"), 10.0)  # began in [0, 10]: ~5
    forecast.observe(info("completed", 100, batch="old"), 14.0)  # ended in [10, 14]: ~12
    assert forecast.finalizing() == pytest.approx(7.0)
    forecast.observe(info("in_progress", 0), 100.0)
    forecast.observe(info("in_progress", 50), 110.0)  # 0.2 s a request: done at 120
    assert forecast.seen["batch_a"].window == pytest.approx((126.8, 127.2))


def test_finalizing_window_spans_the_poll_gap_plus_the_learned_time() -> None:
    forecast = Forecast(finalize_seconds=[6.0])
    forecast.observe(info("in_progress", 100), 40.0)
    forecast.observe(info("finalizing", 100), 50.0)  # began between 40 and 50
    assert forecast.seen["batch_a"].window == pytest.approx((46.0, 56.0))
    assert forecast.next_poll(50.0) == pytest.approx(50.0 + 10.0 / STEPS)
    unknown = Forecast()
    unknown.observe(info("finalizing", 100), 0.0)
    assert unknown.next_poll(0.0) is None  # nothing learned: no guess


def test_a_missed_window_is_dropped_until_new_progress() -> None:
    forecast = Forecast()
    forecast.observe(info("in_progress", 0), 0.0)
    forecast.observe(info("in_progress", 50), 10.0)  # done at 20 +- 0.2
    assert forecast.next_poll(25.0) is None  # passed without finishing: poll as usual
    assert forecast.next_poll(26.0) is None
    forecast.observe(info("in_progress", 90), 30.0)  # new progress: a new forecast
    wake = forecast.next_poll(30.0)
    assert wake is not None and wake > 30.0


def test_a_stalled_batch_spaces_its_polls_out() -> None:
    forecast = Forecast()
    forecast.observe(info("in_progress", 0), 0.0)
    forecast.observe(info("in_progress", 99), 99.0)
    gaps = []
    for now in (100.0, 200.0, 400.0):  # no more progress: one request takes longer and longer
        forecast.observe(info("in_progress", 99), now)
        wake = forecast.next_poll(now)
        assert wake is not None
        gaps.append(wake - now)
    assert gaps == sorted(gaps) and gaps[0] > 0


def test_a_finished_batch_leaves_the_forecast() -> None:
    forecast = Forecast()
    forecast.observe(info("in_progress", 0), 0.0)
    forecast.observe(info("in_progress", 50), 10.0)
    forecast.observe(info("completed", 100), 19.0)
    assert forecast.seen == {}
    assert forecast.next_poll(19.0) is None


def test_the_earliest_of_several_batches_wins() -> None:
    forecast = Forecast()
    for batch, rate in (("slow", 1), ("fast", 5)):
        forecast.observe(info("in_progress", 0, batch=batch), 0.0)
        forecast.observe(info("in_progress", 10 * rate, batch=batch), 10.0)
    # fast: 50 of 100 after 10 s -> 20 s (+- 0.2); slow: 10 of 100 -> 100 s
    assert forecast.next_poll(10.0) == pytest.approx(19.8)
