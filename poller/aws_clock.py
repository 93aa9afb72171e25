"""AWS's time, from this host's clock and the skew measured against the `Date`
header of AWS's responses: one `AwsClock` per stream, watching its AWS clients.

Why: a LATEST start is stored as a moment (the `#start` row, a DynamoDB
snapshot's start) and records are judged old by their arrival time; both are
AWS's clock. A host clock off AWS's moves the stored start (a host ahead skips
records) and makes the record-age check wrong (a host ahead drops records
younger than `max_record_age_seconds`). So the daemon takes those moments from
`AwsClock.now`, and says loudly when the host clock is far off.

Invariants:
- `Date` has one-second resolution (it is truncated) and AWS stamped it at some
  host moment between sending and receiving: the skew (AWS minus host) lies in
  `[D - received, D + 1 - sent]`. `skew_from` takes the middle of that, known
  within half its width: ±(0.5 s + half the round trip). A measurement whose
  round trip is over `MAX_ROUND_TRIP` is not used (the next call is measured).
- The correction is applied only beyond that uncertainty: a host within it is
  as right as the measurement can tell, and is not moved by the noise.
- Measured on a client's first call and on the first call after every
  `MEASURE_EVERY`, never by a call of its own. The event handlers are
  registered only while a measurement is wanted (a timer puts them back): in
  between, the hot path does not pay for them (aiobotocore's dispatch of two
  more handlers costs several µs a call). One call at a time is measured.
- Before the first measurement `now` is the host's clock; after it, the time
  then (corrected) plus the monotonic time since: a host clock stepped between
  two measurements (NTP catching up, an operator) does not move AWS's time, and
  the next measurement shows the new skew.
- Only a skew beyond its uncertainty and beyond the smallest of the stream's
  limits (`skew_limits`) is an error; every measurement sets the gauge
  `poller_clock_skew_seconds{stream}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from poller.config import DynamoDBSource, KinesisSource, StreamConfig
from poller.observability import metrics
from poller.observability.logging import get_logger

log = get_logger()

MEASURE_EVERY = 3600.0
MAX_ROUND_TRIP = 5.0  # beyond this the measurement says too little to be worth keeping
_SENT = "poller_clock_sent"  # the request context's key for the host time a measured call was sent


@dataclass(frozen=True, slots=True)
class Skew:
    """AWS's clock minus this host's, in seconds (positive: AWS ahead), known within ±`within`."""

    seconds: float
    within: float
    host_time: float  # this host's clock in the middle of the measured call

    @property
    def aws_time(self) -> float:
        return self.host_time + self.seconds

    @property
    def correction(self) -> float:
        """What to add to the host's clock: the skew, or 0 while it is within its uncertainty."""
        return self.seconds if abs(self.seconds) > self.within else 0.0

    def beyond(self, limit: float) -> bool:
        """Whether the skew surely exceeds `limit`, whatever its uncertainty."""
        return abs(self.seconds) - self.within > limit


def skew_from(date_header: str, sent: float, received: float) -> Skew | None:
    """The skew measured by one call sent and answered at these host times, whose
    response said `Date: date_header`; None for a header that is not an HTTP date."""
    try:
        stamped = parsedate_to_datetime(date_header)
    except (TypeError, ValueError, IndexError):
        return None
    if stamped.tzinfo is None:  # "-0000": RFC 5322's UTC of unknown origin
        stamped = stamped.replace(tzinfo=UTC)
    seconds = stamped.timestamp()
    round_trip = max(0.0, received - sent)
    middle = sent + round_trip / 2
    return Skew(seconds + 0.5 - middle, 0.5 + round_trip / 2, middle)


def skew_limits(cfg: StreamConfig) -> dict[str, float]:
    """The stream's settings a skew can defeat, by name, with the skew each tolerates."""
    limits: dict[str, float] = {}
    src = cfg.source
    if isinstance(src, KinesisSource | DynamoDBSource):
        limits["latest_margin_seconds"] = src.latest_margin_seconds
    if cfg.retry.max_record_age_seconds is not None:
        limits["retry.max_record_age_seconds"] = float(cfg.retry.max_record_age_seconds)
    return limits


def endangered(skew: Skew, limits: dict[str, float]) -> list[str]:
    """What a skew this large would break if moments were taken from this host's clock."""
    ahead = skew.seconds < 0  # the host ahead of AWS
    found = []
    for name, limit in sorted(limits.items()):
        if not skew.beyond(limit):
            continue
        if name == "latest_margin_seconds":
            found.append(
                f"{name}={limit:g}: a LATEST start taken from this host's clock would "
                + ("skip the records written in between" if ahead else "lie before the start")
                + " (the daemon takes its own from AWS's clock; `checkpoints rewind --latest` does not)"
            )
        else:
            found.append(
                f"{name}={limit:g}: an age check against this host's clock would "
                + ("drop records younger than that" if ahead else "keep records older than that")
                + " (the daemon's check uses AWS's clock)"
            )
    return found


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")


class AwsClock:
    """One stream's AWS time: `now()` is the host's clock corrected by the skew
    last measured on the stream's AWS clients (`watch`)."""

    def __init__(
        self,
        stream: str,
        limits: dict[str, float] | None = None,
        every: float = MEASURE_EVERY,
        host: Callable[[], float] = time.time,
    ):
        self.stream = stream
        self.limits = limits or {}
        self.every = every
        self.host = host
        self.last: Skew | None = None
        self._offset = 0.0
        self._base: float | None = None  # the host's clock minus the monotonic one when measured
        self._clients: weakref.WeakSet[Any] = weakref.WeakSet()
        self._armed = True  # a measurement is wanted: the first call is measured
        self._marked_until = 0.0  # monotonic time until which a measured call may still answer
        self._gauge = metrics.CLOCK_SKEW.labels(stream)

    @classmethod
    def of(cls, cfg: StreamConfig) -> AwsClock:
        return cls(cfg.name, skew_limits(cfg))

    def now(self) -> float:
        """AWS's time as well as this host can tell (epoch seconds)."""
        if self._base is None:
            return self.host()
        return time.monotonic() + self._base + self._offset

    def now_utc(self) -> datetime:
        return datetime.fromtimestamp(self.now(), UTC)

    def watch(self, client: Any) -> None:
        """Measure the skew on this aiobotocore client's calls (first, then hourly)."""
        self._clients.add(client)
        if self._armed:
            self._hook(client, True)

    def _hook(self, client: Any, on: bool) -> None:
        events = client.meta.events
        change = events.register if on else events.unregister
        change("before-call", self._before_call)
        change("after-call", self._after_call)

    def _arm(self, on: bool) -> None:
        if on != self._armed:
            self._armed = on
            for client in list(self._clients):
                self._hook(client, on)

    def _before_call(self, context: dict[str, Any], **_: Any) -> None:
        mono = time.monotonic()
        if mono >= self._marked_until:
            # One call at a time is measured: if it is never answered, the next
            # is, once its round trip could no longer be used anyway.
            self._marked_until = mono + MAX_ROUND_TRIP
            context[_SENT] = self.host()

    def _after_call(self, context: dict[str, Any], parsed: Any, **_: Any) -> None:
        sent = context.pop(_SENT, None)
        if sent is None:
            return
        received = self.host()
        headers = (
            parsed.get("ResponseMetadata", {}).get("HTTPHeaders", {}) if isinstance(parsed, dict) else {}
        )
        date = headers.get("date")
        skew = skew_from(date, sent, received) if isinstance(date, str) else None
        if skew is None or received - sent > MAX_ROUND_TRIP:
            return  # the next call is measured instead
        self.record(skew)

    def record(self, skew: Skew) -> None:
        """Keep a measurement: the correction, the gauge, and an error if the skew endangers anything."""
        first = self.last is None
        self.last = skew
        self._offset = skew.correction
        self._base = self.host() - time.monotonic()
        self._marked_until = 0.0
        self._arm(False)
        with contextlib.suppress(RuntimeError):  # no loop: a measurement recorded by hand
            asyncio.get_running_loop().call_later(self.every, self._arm, True)
        self._gauge.set(round(skew.seconds, 3))
        fields = {
            "stream": self.stream,
            "host_time": _iso(skew.host_time),
            "aws_time": _iso(skew.aws_time),
            "skew_seconds": round(skew.seconds, 3),
            "within_seconds": round(skew.within, 3),
        }
        danger = endangered(skew, self.limits)
        if danger:
            log.error(
                "this host's clock is off AWS's by more than the stream allows: fix its time "
                "synchronisation (NTP); the daemon uses AWS's clock meanwhile",
                endangers=danger,
                **fields,
            )
        elif first or skew.correction:
            log.info("clock measured against AWS's", corrected=bool(skew.correction), **fields)
