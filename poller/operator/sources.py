"""The stream services as operator commands read them: the same adapters the
daemon reads through (`ShardApi`), asked a few bounded questions.

- `first_unread`: the first record at or after a position, or None when the
  shard has nothing there yet (caught up, or ended).
- `last_record`: the newest record of a shard (read forward to its end as of
  now), for a rewind to LATEST of one shard.

Every loop here is bounded by a number of calls: a command never reads a
whole stream by surprise; past the bound it says so.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from poller.aws import aws_client, classify_aws, error_code, region_of
from poller.config import DynamoDBSource, KinesisSource, StreamConfig
from poller.operator.errors import OperatorError
from poller.records import RecordError, TransientError
from poller.sources.shards.api import AT_TIMESTAMP, ShardApi, ShardInfo, StartAt

FIRST_READ_CALLS = 50
LAST_READ_CALLS = 1000
_EMPTY_READS_AT_TIP = 3  # DynamoDB Streams may answer empty before the tip of an open shard


@dataclass(slots=True)
class Found:
    raw: dict[str, Any]
    sequence_number: str
    arrival: float  # epoch seconds, 0 when unknown
    millis_behind: int | None  # Kinesis: MillisBehindLatest of the read that found it


@asynccontextmanager
async def shard_api(cfg: StreamConfig) -> AsyncIterator[ShardApi]:
    """The stream's adapter, its stream found (Kinesis: described; DynamoDB: its ARN)."""
    src = cfg.source
    try:
        if isinstance(src, KinesisSource):
            from poller.sources.kinesis import KinesisShardApi, split_stream

            name, arn, arn_region = split_stream(src.stream)
            region = region_of(src.region or arn_region)
            async with aws_client("kinesis", region, src.endpoint_url) as client:
                kinesis = KinesisShardApi(client, name, cfg.name, region, arn or "")
                await kinesis.describe()
                yield kinesis
            return
        assert isinstance(src, DynamoDBSource)
        from poller.sources.dynamodb_streams import DynamoDBShardApi, split_stream_arn

        arn_region = split_stream_arn(src.stream_arn)[1] if src.stream_arn else None
        region = region_of(src.region or arn_region)
        stream_arn = src.stream_arn or await _latest_stream_arn(src, region)
        async with aws_client("dynamodbstreams", region, src.endpoint_url) as client:
            ddb = DynamoDBShardApi(client, stream_arn, cfg.name, region)
            await ddb.describe()
            yield ddb
    except (TransientError, RecordError, ValueError) as e:
        raise OperatorError(f"{cfg.name}: the source cannot be read: {e}") from e


async def _latest_stream_arn(src: DynamoDBSource, region: str) -> str:
    assert src.table is not None
    async with aws_client("dynamodb", region, src.endpoint_url) as ddb:
        try:
            table = (await ddb.describe_table(TableName=src.table))["Table"]
        except Exception as e:
            if error_code(e) == "ResourceNotFoundException":
                raise OperatorError(f"table {src.table!r} not found") from e
            raise classify_aws(e) from e
    arn = table.get("LatestStreamArn")
    if not arn:
        raise OperatorError(f"table {src.table!r} has no stream")
    return str(arn)


async def first_unread(api: ShardApi, shard: ShardInfo, start: StartAt) -> Found | None:
    """The first record at `start`, or None if the shard holds none there now."""
    iterator: str | None = await api.iterator(
        shard.shard_id, start.kind, start.sequence_number, start.timestamp
    )
    empty = 0
    for _ in range(FIRST_READ_CALLS):
        if iterator is None:
            return None
        result = await api.read(iterator, 1 if start.kind != AT_TIMESTAMP else 100)
        if result.records:
            return _found(api, shard, result.records[0], result.millis_behind)
        if result.millis_behind == 0:
            return None  # Kinesis says this is the tip
        empty += 1
        if result.millis_behind is None and empty >= _EMPTY_READS_AT_TIP:
            return None
        iterator = result.next_iterator
    raise OperatorError(f"shard {shard.shard_id}: no record found within {FIRST_READ_CALLS} reads; try again")


async def last_record(api: ShardApi, shard: ShardInfo, start: StartAt) -> Found | None:
    """The newest record from `start` to the shard's end as of now."""
    iterator: str | None = await api.iterator(
        shard.shard_id, start.kind, start.sequence_number, start.timestamp
    )
    last: Found | None = None
    empty = 0
    for _ in range(LAST_READ_CALLS):
        if iterator is None:
            return last
        result = await api.read(iterator, 1000)  # the most DynamoDB Streams returns
        if result.records:
            last = _found(api, shard, result.records[-1], result.millis_behind)
            empty = 0
        else:
            empty += 1
        if result.millis_behind == 0 or (result.millis_behind is None and empty >= _EMPTY_READS_AT_TIP):
            return last
        iterator = result.next_iterator
    raise OperatorError(
        f"shard {shard.shard_id} is more than {LAST_READ_CALLS} reads from its end: "
        "rewind the whole stream with --latest instead"
    )


def _found(api: ShardApi, shard: ShardInfo, raw: dict[str, Any], millis_behind: int | None) -> Found:
    record = api.to_record(raw, shard.shard_id)
    return Found(raw, record.sequence_number, record.arrival_time, millis_behind)


def moment(value: datetime) -> StartAt:
    return StartAt(AT_TIMESTAMP, timestamp=value)
