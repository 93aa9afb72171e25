"""The Kinesis adapter's own parts: stream names and ARNs, raw record → `Record`,
ListShards paging, and how Kinesis errors map onto the shard machinery's."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from poller.records import KINESIS, RecordError, TransientError
from poller.sources.kinesis import KinesisShardApi, split_stream
from poller.sources.shards import IteratorExpired, ShardInfo, Throttled

ARN = "arn:aws:kinesis:eu-west-1:123456789012:stream/orders"


def test_stream_by_name_or_arn() -> None:
    assert split_stream("orders") == ("orders", None, None)
    assert split_stream(ARN) == ("orders", ARN, "eu-west-1")
    with pytest.raises(ValueError):
        split_stream("arn:aws:kinesis:eu-west-1:123456789012:table/orders")


def test_to_record() -> None:
    api = KinesisShardApi(None, "orders", "orders-sync", "eu-west-1", ARN)
    when = datetime(2024, 5, 1, 12, 0, 30, 250000, tzinfo=UTC)
    raw = {
        "SequenceNumber": "4959" * 14,
        "Data": b'{"a": 1}',
        "PartitionKey": "k",
        "ApproximateArrivalTimestamp": when,
    }
    r = api.to_record(raw, "shardId-000000000001")
    assert (r.source, r.stream, r.shard_id, r.sequence_number) == (
        KINESIS,
        "orders-sync",
        "shardId-000000000001",
        "4959" * 14,
    )
    assert r.data == r.raw_data == b'{"a": 1}'
    assert r.partition_key == "k" and r.sub_sequence == 0
    assert r.arrival_time == when.timestamp()
    assert (r.event_source_arn, r.region) == (ARN, "eu-west-1")
    assert r.raw is raw and r.meta == {}


class FakeClient:
    """Answers `list_shards` in pages, or raises what it is told to."""

    def __init__(self, pages: list[dict[str, Any]] | None = None, error: Exception | None = None):
        self.pages = pages or []
        self.error = error
        self.calls: list[dict[str, Any]] = []

    async def list_shards(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(kwargs)
        if self.error is not None:
            raise self.error
        return self.pages[len(self.calls) - 1]


def shard(shard_id: str, parent: str | None = None, adjacent: str | None = None, end: bool = False) -> Any:
    s: dict[str, Any] = {"ShardId": shard_id, "SequenceNumberRange": {"StartingSequenceNumber": "1"}}
    if parent:
        s["ParentShardId"] = parent
    if adjacent:
        s["AdjacentParentShardId"] = adjacent
    if end:
        s["SequenceNumberRange"]["EndingSequenceNumber"] = "9"
    return s


async def test_list_shards_pages_with_next_token_alone() -> None:
    client = FakeClient(
        [
            {"Shards": [shard("a", end=True), shard("b", end=True)], "NextToken": "t1"},
            {"Shards": [shard("c", "a", "b")]},
        ]
    )
    api = KinesisShardApi(client, "orders", "orders", "eu-west-1")
    assert await api.list_shards() == [
        ShardInfo("a", (), True),
        ShardInfo("b", (), True),
        ShardInfo("c", ("a", "b"), False),
    ]
    assert client.calls == [{"StreamName": "orders"}, {"NextToken": "t1"}]


def client_error(code: str, status: int = 400) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Op"
    )


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (client_error("ProvisionedThroughputExceededException"), Throttled),
        (client_error("KMSThrottlingException"), Throttled),
        (client_error("ExpiredIteratorException"), IteratorExpired),
        (client_error("ExpiredNextTokenException"), TransientError),
        (client_error("InternalFailure", 500), TransientError),
        (EndpointConnectionError(endpoint_url="http://x"), TransientError),
        (client_error("ResourceNotFoundException"), RecordError),
    ],
)
async def test_errors_map_onto_the_shard_machinery(error: Exception, expected: type[Exception]) -> None:
    api = KinesisShardApi(FakeClient(error=error), "orders", "orders", "eu-west-1")
    with pytest.raises(expected) as raised:
        await api.list_shards()
    if isinstance(raised.value, Throttled):
        assert raised.value.operation == "ListShards"
