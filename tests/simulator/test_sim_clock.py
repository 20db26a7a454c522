"""The simulator's clock."""

from __future__ import annotations

import time

import pytest

from gptbatch.simulator import SimClock


def test_a_frozen_clock_moves_only_when_advanced() -> None:
    clock = SimClock(0.0, start=1000.0)
    time.sleep(0.02)
    assert clock.now() == 1000.0
    assert clock.advance(86_400) == 87_400.0
    assert clock.now() == 87_400.0
    with pytest.raises(ValueError):
        clock.advance(-1)


def test_a_scaled_clock_runs_faster_than_real_time() -> None:
    clock = SimClock(1000.0, start=0.0)
    time.sleep(0.05)
    assert 45 <= clock.now() <= 1000


def test_changing_the_scale_keeps_time_continuous() -> None:
    clock = SimClock(1000.0, start=0.0)
    time.sleep(0.02)
    clock.time_scale = 0.0
    frozen = clock.now()
    assert frozen >= 20
    time.sleep(0.02)
    assert clock.now() == frozen
    clock.time_scale = 2.0
    assert clock.now() >= frozen
    assert clock.real_seconds(10) == 5.0
    with pytest.raises(ValueError):
        clock.time_scale = -1
