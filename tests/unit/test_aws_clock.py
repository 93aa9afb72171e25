"""The skew arithmetic of `poller.aws_clock`: what one `Date` header tells about
AWS's clock, how sure it is, and when it is an error."""

from __future__ import annotations

import itertools
from email.utils import formatdate

from poller.aws_clock import AwsClock, Skew, endangered, skew_from
from poller.config import parse_stream

STAMP = 1_796_000_000.0  # a whole second, as `Date` has them


def date_at(aws_time: float) -> str:
    """The `Date` header AWS sends at that moment of its clock (truncated to the second)."""
    return formatdate(aws_time, usegmt=True)


def test_the_true_skew_lies_within_the_reported_uncertainty() -> None:
    """Whatever the true skew, wherever in the call AWS stamped its answer and
    wherever in its second it did: the truth is within ±`within` of the estimate."""
    for true_skew, round_trip, stamped_at, fraction in itertools.product(
        (-600.0, -1.7, -0.4, 0.0, 0.3, 0.99, 42.25),
        (0.0, 0.05, 0.8, 4.0),
        (0.0, 0.25, 0.5, 1.0),
        (0.0, 0.3, 0.999),
    ):
        sent = STAMP + fraction
        received = sent + round_trip
        aws = sent + stamped_at * round_trip + true_skew
        skew = skew_from(date_at(aws), sent, received)
        assert skew is not None
        # (1e-6: epoch seconds as floats carry about a microsecond)
        assert abs(skew.within - (0.5 + round_trip / 2)) < 1e-6
        assert abs(skew.seconds - true_skew) <= skew.within + 1e-6, (true_skew, round_trip, stamped_at)


def test_the_estimate_is_the_middle_of_what_the_header_allows() -> None:
    skew = skew_from("Tue, 30 Nov 2026 00:00:00 GMT", sent=1_795_996_800.2, received=1_795_996_800.4)
    assert skew is not None
    # AWS stamped between 00:00:00 and 00:00:01 of its clock; the host was at .2 to .4.
    assert round(skew.seconds, 6) == 0.2
    assert round(skew.within, 6) == 0.6
    assert round(skew.host_time, 6) == 1_795_996_800.3
    assert round(skew.aws_time, 6) == 1_795_996_800.5


def test_a_header_that_is_no_date_measures_nothing() -> None:
    assert skew_from("yesterday", 1.0, 2.0) is None
    assert skew_from("", 1.0, 2.0) is None


def test_within_the_resolution_nothing_is_corrected_and_nothing_is_beyond() -> None:
    noise = Skew(seconds=-0.4, within=0.55, host_time=STAMP)
    assert noise.correction == 0.0
    assert not noise.beyond(0.0)
    far = Skew(seconds=-600.2, within=0.55, host_time=STAMP)
    assert far.correction == -600.2
    assert far.beyond(60) and not far.beyond(599.7)


def test_what_a_skew_endangers_depends_on_the_stream_limits_and_its_direction() -> None:
    limits = {"latest_margin_seconds": 60.0, "retry.max_record_age_seconds": 3600.0}
    ahead = Skew(seconds=-600.0, within=0.6, host_time=STAMP)  # the host ten minutes ahead
    (only,) = endangered(ahead, limits)
    assert only.startswith("latest_margin_seconds=60:") and "skip" in only
    behind = Skew(seconds=7200.0, within=0.6, host_time=STAMP)
    both = endangered(behind, limits)
    assert [d.split("=")[0] for d in both] == ["latest_margin_seconds", "retry.max_record_age_seconds"]
    assert "keep records older" in both[1]
    assert endangered(Skew(seconds=60.5, within=0.6, host_time=STAMP), limits) == []


def test_a_stream_s_limits_come_from_its_config() -> None:
    cfg = parse_stream(
        {
            "name": "clock_limits",
            "source": {"type": "kinesis", "stream": "s", "latest_margin_seconds": 30},
            "retry": {"max_record_age_seconds": 120},
            "sink": {
                "type": "sqlite",
                "dsn": "sqlite:///x.db",
                "table": "t",
                "key": ["id"],
                "columns": {"id": "data.id"},
            },
        },
        "clock_limits.yaml",
    )
    assert AwsClock.of(cfg).limits == {"latest_margin_seconds": 30.0, "retry.max_record_age_seconds": 120.0}


def test_now_is_the_host_clock_until_a_skew_beyond_its_uncertainty_is_measured() -> None:
    host = [STAMP]
    clock = AwsClock("clock_now", host=lambda: host[0])
    assert clock.now() == STAMP
    # (the bounds below: the monotonic time the test itself takes, however loaded)
    clock.record(Skew(seconds=0.3, within=0.5, host_time=STAMP))
    assert STAMP <= clock.now() < STAMP + 30
    clock.record(Skew(seconds=-600.0, within=0.5, host_time=STAMP))
    assert STAMP - 600.0 <= clock.now() < STAMP - 570
    assert STAMP - 600.0 <= clock.now_utc().timestamp() < STAMP - 570
    # The host's clock stepped (NTP caught up): AWS's time does not move with it.
    host[0] = STAMP - 600.0
    assert STAMP - 600.0 <= clock.now() < STAMP - 570
