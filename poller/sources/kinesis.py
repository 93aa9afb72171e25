"""Kinesis Data Streams: the `ShardApi` adapter over aiobotocore, and the consumer
that runs the shared shard machinery (`poller.sources.shards`) on it.

The client makes no retries of its own: the shard machinery retries every
call with its own backoff, so each throttling error is seen and counted.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from poller.aws import aws_client, classify_aws, error_code, region_of
from poller.config import KinesisSource
from poller.observability.logging import get_logger
from poller.records import KINESIS, Record, TransientError
from poller.sources import fast_parse
from poller.sources.base import SourceConsumer
from poller.sources.shards import (
    AFTER_SEQUENCE_NUMBER,
    AT_SEQUENCE_NUMBER,
    AT_TIMESTAMP,
    IteratorExpired,
    ReadResult,
    ShardFleet,
    ShardInfo,
    ShardOptions,
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


class KinesisShardApi:
    """The four calls the shard machinery needs, with Kinesis errors mapped to its own."""

    def __init__(self, client: Any, stream_name: str, stream_label: str, region: str, arn: str = ""):
        self.client = client
        self.stream_name = stream_name
        self.label = stream_label
        self.region = region
        self.arn = arn

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
        self.arn = str(resp["StreamDescriptionSummary"]["StreamARN"])
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
        return iterator

    async def read(self, iterator: str, limit: int) -> ReadResult:
        resp = await self._call("GetRecords", self.client.get_records, ShardIterator=iterator, Limit=limit)
        children = tuple(c["ShardId"] for c in resp.get("ChildShards") or ())
        return ReadResult(
            resp["Records"], resp.get("NextShardIterator"), resp.get("MillisBehindLatest"), children
        )

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
            api = KinesisShardApi(client, name, self.cfg.name, region, arn or "")
            if await retrying(stop, self.cfg.name, "DescribeStreamSummary", api.describe) is None:
                return
            log.info("stream found", stream=self.cfg.name, kinesis_stream=name, arn=api.arn)
            fleet = ShardFleet(
                api,
                ShardOptions.from_config(self.cfg, min_read_interval=MIN_READ_INTERVAL),
                self.cfg,
                self.sink,
                self.destination,
                self.preparer,
                self.on_source_ready,
                self.on_health,
            )
            await fleet.run(stop)
