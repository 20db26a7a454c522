"""Fault specs, limits and configs of the simulator."""

from __future__ import annotations

import pytest

from gptbatch.errors import UsageError
from gptbatch.simulator import FAULT_HELP, Fault, SimConfig, parse_fault, parse_limit


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            "http:status=429,method=post,path=/v1/batches,count=2,retry_after=1.5",
            Fault.http(429, method="POST", path="/v1/batches", count=2, retry_after=1.5),
        ),
        ("http", Fault.http()),
        ("drop:after_bytes=1000", Fault.drop_download(1000)),
        ("slow:delay=2,path=/v1/batches*", Fault.slow(2.0, path="/v1/batches*")),
        ("lost-reply", Fault.lost_reply()),
        ("lost_reply:count=3", Fault.lost_reply(count=3)),
        ("request:custom_id=req-1*", Fault.request_error("req-1*")),
        (
            "request:custom_id=r*,status=500,attempts=2",
            Fault.request_error("r*", status=500, attempts=2),
        ),
        ("batch-fail:code=server_error,message=boom", Fault.batch_fail(message="boom")),
        ("batch_expire:after_requests=3", Fault.batch_expire(after_requests=3)),
        ("batch_cancel:custom_id=x*,count=0", Fault.batch_cancel("x*", count=0)),
    ],
)
def test_parse_fault_builds_the_same_fault_as_the_constructors(spec, expected) -> None:
    assert parse_fault(spec) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("boom", "unknown kind 'boom'"),
        ("http:status=abc", "status='abc' is not a number"),
        ("http:custom_id=x", "'custom_id=x' is not KEY=VALUE with a key of http"),
        ("http:status", "'status' is not KEY=VALUE"),
        ("http:status=42", "not an HTTP status"),
        ("http:count=-1", "must be >= 0"),
        ("request:attempts=0", "attempts must be >= 1"),
    ],
)
def test_bad_fault_specs_say_what_is_wrong(spec, message) -> None:
    with pytest.raises(UsageError) as info:
        parse_fault(spec)
    assert message in str(info.value)
    assert spec in str(info.value)


def test_every_kind_is_documented_in_the_help() -> None:
    for kind in (
        "http",
        "drop",
        "slow",
        "lost_reply",
        "request",
        "batch_fail",
        "batch_expire",
        "batch_cancel",
    ):
        assert f"\n  {kind}:" in FAULT_HELP
        parse_fault(kind)  # every kind parses with its defaults


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("gpt-4o-mini=2000000", ("gpt-4o-mini", 2_000_000)),
        ("m=1,000", ("m", 1000)),
        ("ft:gpt-4o:org=2_000", ("ft:gpt-4o:org", 2000)),
    ],
)
def test_parse_limit(text, expected) -> None:
    assert parse_limit(text, "--token-limit") == expected


@pytest.mark.parametrize("text", ["gpt-4o", "=5", "m=", "m=-1", "m=lots"])
def test_parse_limit_rejects_malformed(text) -> None:
    with pytest.raises(UsageError):
        parse_limit(text, "--token-limit")


def test_fast_config_overrides_and_replace() -> None:
    fast = SimConfig.fast(seed=3)
    assert fast.time_scale == 100.0 and fast.seed == 3
    assert fast.replace(time_scale=0.0).time_scale == 0.0
    assert fast.time_scale == 100.0  # configs are immutable
    with pytest.raises(ValueError):
        Fault("nonsense")
