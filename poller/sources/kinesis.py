"""Kinesis Data Streams: the `ShardApi` adapter over aiobotocore, and the consumer
that runs the shared shard machinery (`poller.sources.shards`) on it.

The client makes no retries of its own: the shard machinery retries every
call with its own backoff, so each throttling error is seen and counted.

Retention gaps (see `retention`): Kinesis answers a position past its
retention without an error, from the oldest record it still holds. So every
iterator opened at a sequence number is opened AT it (AFTER_SEQUENCE_NUMBER
becomes AT, and that record is dropped here), and the first record read from
it must be that record: if it is not, the record is gone, and with it
whatever followed it up to the first record still held — a gap, reported
with the time range it covers and handled as `on_retention_gap` says. AWS
answers such a position with empty pages at MillisBehindLatest = the
retention (from DescribeStreamSummary) while it walks the trimmed stretch:
that is a gap too, and reading skips to TRIM_HORIZON. Before the shards are
opened, a running checkpoint of a shard the listing no longer shows is a gap
as well (`retention.vanished`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from poller.aws import aws_client, classify_aws, error_code, region_of
from poller.config import KinesisSource
from poller.observability.logging import get_logger
from poller.records import KINESIS, Record, TransientError
from poller.sources import fast_parse
from poller.sources.base import SourceConsumer
from poller.sources.retention import report_gap, settle_vanished
from poller.sources.shards import (
    AFTER_SEQUENCE_NUMBER,
    AT_SEQUENCE_NUMBER,
    AT_TIMESTAMP,
    TRIM_HORIZON,
    IteratorExpired,
    ReadResult,
    ShardFleet,
    ShardInfo,
    ShardStopped,
    StopReason,
    Throttled,
    retrying,
)

log = get_logger()

# Kinesis allows five GetRecords calls per second per shard.
MIN_READ_INTERVAL = 0.2

_THROTTLED = {
    "ProvisionedThroughputExceededException",
    "KMSThrottlingException",
    "LimitExceededException",
    "ThrottlingException",
}
_RETRY = {"ExpiredNextTokenException"}  # a listing that took too long: list again


def split_stream(stream: str) -> tuple[str, str | None, str | None]:
    """(name, ARN or None, region from the ARN or None) of a stream given by name or ARN."""
    if stream.startswith("arn:"):
        parts = stream.split(":", 5)
        resource = parts[5] if len(parts) == 6 else ""
        if not resource.startswith("stream/"):
            raise ValueError(f"not a Kinesis stream ARN: {stream!r}")
        return resource.removeprefix("stream/"), stream, parts[3] or None
    return stream, None, None


@dataclass(slots=True)
class _Expected:
    """An iterator opened at a sequence number: its first record must be that one."""

    shard_id: str
    sequence_number: str
    after: bool  # asked AFTER it: the record itself is dropped


class KinesisShardApi:
    """The four calls the shard machinery needs, with Kinesis errors mapped to its own.

    With `on_retention_gap` set (the daemon's streams; operator commands leave
    it None), reopening at a sequence number checks that its record is still
    there (see the module docstring)."""

    def __init__(
        self,
        client: Any,
        stream_name: str,
        stream_label: str,
        region: str,
        arn: str = "",
        *,
        on_retention_gap: str | None = None,
    ):
        self.client = client
        self.stream_name = stream_name
        self.label = stream_label
        self.region = region
        self.arn = arn
        self.on_retention_gap = on_retention_gap
        self.retention_hours: float | None = None
        # Iterators whose first record is still to be checked; one per shard at most
        # (`_checking`), so the maps stay bounded by the shard count.
        self._expected: dict[str, _Expected] = {}
        self._checking: dict[str, str] = {}

    async def _call(self, operation: str, method: Any, **kwargs: Any) -> Any:
        try:
            return await method(**kwargs)
        except Exception as e:
            code = error_code(e)
            if code in _THROTTLED:
                raise Throttled(operation, f"{operation}: {code}: {e}") from e
            if code == "ExpiredIteratorException":
                raise IteratorExpired(str(e)) from e
            if code in _RETRY:
                raise TransientError(f"{operation}: {code}: {e}") from e
            raise classify_aws(e) from e

    async def describe(self) -> str:
        """Check the stream exists and learn its ARN (records carry it as eventSourceARN)."""
        resp = await self._call(
            "DescribeStreamSummary", self.client.describe_stream_summary, StreamName=self.stream_name
        )
        summary = resp["StreamDescriptionSummary"]
        self.arn = str(summary["StreamARN"])
        hours = summary.get("RetentionPeriodHours")
        self.retention_hours = float(hours) if isinstance(hours, int | float) else None
        return self.arn

    async def list_shards(self) -> list[ShardInfo]:
        shards: list[ShardInfo] = []
        kwargs: dict[str, Any] = {"StreamName": self.stream_name}
        while True:
            resp = await self._call("ListShards", self.client.list_shards, **kwargs)
            for s in resp.get("Shards", []):
                parents = tuple(p for p in (s.get("ParentShardId"), s.get("AdjacentParentShardId")) if p)
                closed = "EndingSequenceNumber" in s.get("SequenceNumberRange", {})
                shards.append(ShardInfo(s["ShardId"], parents, closed))
            token = resp.get("NextToken")
            if not token:
                return shards
            kwargs = {"NextToken": token}  # AWS refuses StreamName together with NextToken

    async def iterator(
        self,
        shard_id: str,
        kind: str,
        sequence_number: str | None = None,
        timestamp: datetime | None = None,
    ) -> str:
        checked = self.on_retention_gap is not None and kind in (AT_SEQUENCE_NUMBER, AFTER_SEQUENCE_NUMBER)
        after = checked and kind == AFTER_SEQUENCE_NUMBER
        if after:
            kind = AT_SEQUENCE_NUMBER  # so that the record's absence shows
        kwargs: dict[str, Any] = {
            "StreamName": self.stream_name,
            "ShardId": shard_id,
            "ShardIteratorType": kind,
        }
        if kind in (AT_SEQUENCE_NUMBER, AFTER_SEQUENCE_NUMBER):
            kwargs["StartingSequenceNumber"] = sequence_number
        elif kind == AT_TIMESTAMP:
            kwargs["Timestamp"] = timestamp
        resp = await self._call("GetShardIterator", self.client.get_shard_iterator, **kwargs)
        iterator: str = resp["ShardIterator"]
        self._uncheck(shard_id)
        if checked and sequence_number is not None:
            self._expect(iterator, _Expected(shard_id, sequence_number, after))
        return iterator

    async def read(self, iterator: str, limit: int) -> ReadResult:
        resp = await self._call("GetRecords", self.client.get_records, ShardIterator=iterator, Limit=limit)
        children = tuple(c["ShardId"] for c in resp.get("ChildShards") or ())
        records: list[dict[str, Any]] = resp["Records"]
        following: str | None = resp.get("NextShardIterator")
        behind = resp.get("MillisBehindLatest")
        expected = self._expected.pop(iterator, None)
        if expected is not None:
            self._checking.pop(expected.shard_id, None)
            if not records and self._past_retention(behind):
                # AWS walks a trimmed stretch with empty answers this far behind: skip it.
                self._gap(expected, None)
                following = await self.iterator(expected.shard_id, TRIM_HORIZON)
            elif not records:
                if following:  # nothing yet: the first record to come is the one checked
                    self._expect(following, expected)
            elif records[0]["SequenceNumber"] == expected.sequence_number:
                if expected.after:
                    records = records[1:]
            else:
                self._gap(expected, records[0])
        return ReadResult(records, following, behind, children)

    def _past_retention(self, millis_behind: object) -> bool:
        """An answer this far behind is a position at the stream's retention: its
        records are gone (the first sign AWS gives of a trimmed checkpoint)."""
        if not isinstance(millis_behind, int) or not self.retention_hours:
            return False
        return millis_behind >= self.retention_hours * 3_600_000

    def _expect(self, iterator: str, expected: _Expected) -> None:
        self._uncheck(expected.shard_id)
        self._expected[iterator] = expected
        self._checking[expected.shard_id] = iterator

    def _uncheck(self, shard_id: str) -> None:
        old = self._checking.pop(shard_id, None)
        if old is not None:
            self._expected.pop(old, None)

    def _gap(self, expected: _Expected, first: dict[str, Any] | None) -> None:
        """The record reading resumed at is gone: what followed it, up to the first
        record still held (`first`; None: not read yet, the boundary is the
        retention), was lost. Report it; stop the stream if so configured."""
        policy = self.on_retention_gap or "continue"
        arrival = first.get("ApproximateArrivalTimestamp") if first is not None else None
        if first is None and self.retention_hours:
            arrival = datetime.now(UTC) - timedelta(hours=self.retention_hours)
        report_gap(
            self.label,
            expected.shard_id,
            "the record reading resumed at is gone from the stream (past its retention): the records "
            "after it up to the first record still held were lost"
            + ("; stopping the stream as configured" if policy == "stop" else "; continuing"),
            policy=policy,
            lost_until=fast_parse.epoch_seconds(arrival) if isinstance(arrival, datetime) else None,
            lost_after_sequence=expected.sequence_number,
            first_sequence=first.get("SequenceNumber") if first is not None else None,
            retention_hours=self.retention_hours,
        )
        if policy == "stop":
            raise ShardStopped(StopReason.TRIMMED, f"{expected.shard_id}: retention gap")

    def to_record(self, raw: dict[str, Any], shard_id: str) -> Record:
        data = raw["Data"]
        arrival = raw.get("ApproximateArrivalTimestamp")
        return Record(
            KINESIS,
            self.label,
            shard_id,
            raw["SequenceNumber"],
            data,
            data,
            0,
            raw["PartitionKey"],
            fast_parse.epoch_seconds(arrival) if isinstance(arrival, datetime) else float(arrival or 0.0),
            {},
            raw,
            self.arn,
            self.region,
        )


class KinesisConsumer(SourceConsumer):
    """Runs one Kinesis stream: describe it, then the shard fleet until `stop`."""

    @property
    def src(self) -> KinesisSource:
        assert isinstance(self.cfg.source, KinesisSource)
        return self.cfg.source

    async def run(self, stop: asyncio.Event) -> None:
        name, arn, arn_region = split_stream(self.src.stream)
        region = region_of(self.src.region or arn_region)
        async with aws_client("kinesis", region, self.src.endpoint_url, max_attempts=0) as client:
            fast_parse.install(client, ["GetRecords"])  # botocore's parser is most of a record's CPU
            self.clock.watch(client)
            policy = self.src.retention_gap_policy
            api = KinesisShardApi(client, name, self.cfg.name, region, arn or "", on_retention_gap=policy)
            if await retrying(stop, self.cfg.name, "DescribeStreamSummary", api.describe) is None:
                return
            log.info(
                "stream found",
                stream=self.cfg.name,
                kinesis_stream=name,
                arn=api.arn,
                retention_hours=api.retention_hours,
            )
            retention = api.retention_hours * 3600 if api.retention_hours else None
            if await settle_vanished(stop, self.cfg.name, self.sink, api, policy, retention) != "continue":
                return  # stopped, or `on_retention_gap: stop`
            fleet = ShardFleet.of(self, api, MIN_READ_INTERVAL)
            if await fleet.run(stop) is StopReason.TRIMMED:
                log.error(
                    "stream stopped after a retention gap (on_retention_gap: stop)", stream=self.cfg.name
                )
