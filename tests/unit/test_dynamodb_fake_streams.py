"""The fake DynamoDB Streams service answers botocore the way AWS does, for
the behaviours the DynamoDB source tests rely on (moto has none of them)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.support.fake_ddb_streams import FakeDynamoDBStreams


@pytest.fixture
def fake() -> Iterator[FakeDynamoDBStreams]:
    with FakeDynamoDBStreams("users", describe_page_size=2) as f:
        yield f


def streams(fake: FakeDynamoDBStreams) -> Any:
    return boto3.client(
        "dynamodbstreams",
        endpoint_url=fake.url,
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="x",
        config=Config(retries={"mode": "standard", "max_attempts": 0}),
    )


def code(e: pytest.ExceptionInfo[ClientError]) -> str:
    return str(e.value.response["Error"]["Code"])


def test_lineage_and_paging(fake: FakeDynamoDBStreams) -> None:
    root = fake.add_shard()
    left, right = fake.split(root)
    (grandchild,) = fake.split(right, 1)
    client = streams(fake)
    seen: list[dict[str, Any]] = []
    start: str | None = None
    pages = 0
    while True:
        kw = {"ExclusiveStartShardId": start} if start else {}
        desc = client.describe_stream(StreamArn=fake.arn, **kw)["StreamDescription"]
        pages += 1
        seen += desc["Shards"]
        start = desc.get("LastEvaluatedShardId")
        if start is None:
            break
    assert pages == 2
    assert [s["ShardId"] for s in seen] == [root, left, right, grandchild]
    assert [s.get("ParentShardId") for s in seen] == [None, root, root, right]
    assert ["EndingSequenceNumber" in s["SequenceNumberRange"] for s in seen] == [True, False, True, False]
    assert desc["StreamViewType"] == "NEW_AND_OLD_IMAGES"
    assert desc["KeySchema"] == [{"AttributeName": "id", "KeyType": "HASH"}]
    children = client.describe_stream(
        StreamArn=fake.arn, ShardFilter={"Type": "CHILD_SHARDS", "ShardId": root}
    )
    assert [s["ShardId"] for s in children["StreamDescription"]["Shards"]] == [left, right]


def test_records_read_to_the_end_of_a_closed_shard(fake: FakeDynamoDBStreams) -> None:
    shard = fake.add_shard()
    seqs = [fake.put(shard, "INSERT", {"id": i}, {"id": i, "b": b"\x01", "f": 1.5}) for i in range(3)]
    fake.close_shard(shard)
    client = streams(fake)
    it = client.get_shard_iterator(StreamArn=fake.arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON")
    resp = client.get_records(ShardIterator=it["ShardIterator"], Limit=2)
    assert [r["dynamodb"]["SequenceNumber"] for r in resp["Records"]] == seqs[:2]
    first = resp["Records"][0]
    assert first["dynamodb"]["NewImage"] == {"id": {"N": "0"}, "b": {"B": b"\x01"}, "f": {"N": "1.5"}}
    assert first["dynamodb"]["ApproximateCreationDateTime"].year >= 2024
    resp = client.get_records(ShardIterator=resp["NextShardIterator"])
    assert [r["dynamodb"]["SequenceNumber"] for r in resp["Records"]] == seqs[2:]
    assert "NextShardIterator" not in resp  # the shard has ended
    at = client.get_shard_iterator(
        StreamArn=fake.arn, ShardId=shard, ShardIteratorType="AT_SEQUENCE_NUMBER", SequenceNumber=seqs[1]
    )
    assert (
        client.get_records(ShardIterator=at["ShardIterator"])["Records"][0]["dynamodb"]["SequenceNumber"]
        == (seqs[1])
    )
    after = client.get_shard_iterator(
        StreamArn=fake.arn, ShardId=shard, ShardIteratorType="AFTER_SEQUENCE_NUMBER", SequenceNumber=seqs[1]
    )
    assert [
        r["dynamodb"]["SequenceNumber"]
        for r in client.get_records(ShardIterator=after["ShardIterator"])["Records"]
    ] == seqs[2:]


def test_an_open_shard_always_gives_a_next_iterator(fake: FakeDynamoDBStreams) -> None:
    shard = fake.add_shard()
    client = streams(fake)
    it = client.get_shard_iterator(StreamArn=fake.arn, ShardId=shard, ShardIteratorType="LATEST")
    resp = client.get_records(ShardIterator=it["ShardIterator"])
    assert resp["Records"] == [] and resp["NextShardIterator"]
    fake.put(shard, "INSERT", {"id": 1}, {"id": 1})
    assert len(client.get_records(ShardIterator=resp["NextShardIterator"])["Records"]) == 1


def test_view_type_drops_images(fake: FakeDynamoDBStreams) -> None:
    fake.view_type = "KEYS_ONLY"
    shard = fake.add_shard()
    fake.put(shard, "MODIFY", {"id": 1}, {"id": 1, "v": 2}, {"id": 1, "v": 1}, ttl=True)
    client = streams(fake)
    it = client.get_shard_iterator(StreamArn=fake.arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON")
    (rec,) = client.get_records(ShardIterator=it["ShardIterator"])["Records"]
    assert set(rec["dynamodb"]) == {
        "ApproximateCreationDateTime",
        "Keys",
        "SequenceNumber",
        "SizeBytes",
        "StreamViewType",
    }
    assert rec["userIdentity"] == {"Type": "Service", "PrincipalId": "dynamodb.amazonaws.com"}


def test_expired_trimmed_missing_and_injected_errors(fake: FakeDynamoDBStreams) -> None:
    shard = fake.add_shard()
    seqs = [fake.put(shard, "INSERT", {"id": i}, {"id": i}) for i in range(5)]
    client = streams(fake)
    it = client.get_shard_iterator(StreamArn=fake.arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON")
    assert fake.expire_iterators() == 1
    with pytest.raises(ClientError) as e:
        client.get_records(ShardIterator=it["ShardIterator"])
    assert code(e) == "ExpiredIteratorException"

    it = client.get_shard_iterator(StreamArn=fake.arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON")
    fake.trim(shard, 2)
    with pytest.raises(ClientError) as e:
        client.get_records(ShardIterator=it["ShardIterator"])
    assert code(e) == "TrimmedDataAccessException"
    with pytest.raises(ClientError) as e:
        client.get_shard_iterator(
            StreamArn=fake.arn, ShardId=shard, ShardIteratorType="AT_SEQUENCE_NUMBER", SequenceNumber=seqs[0]
        )
    assert code(e) == "TrimmedDataAccessException"
    it = client.get_shard_iterator(StreamArn=fake.arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON")
    assert (
        client.get_records(ShardIterator=it["ShardIterator"])["Records"][0]["dynamodb"]["SequenceNumber"]
        == (seqs[2])
    )

    fake.fail("GetRecords", "LimitExceededException", times=1)
    with pytest.raises(ClientError) as e:
        client.get_records(ShardIterator=it["ShardIterator"])
    assert code(e) == "LimitExceededException"
    assert client.get_records(ShardIterator=it["ShardIterator"])["Records"]

    fake.remove_shard(shard)
    with pytest.raises(ClientError) as e:
        client.get_records(ShardIterator=it["ShardIterator"])
    assert code(e) == "ResourceNotFoundException"
    with pytest.raises(ClientError) as e:
        client.get_shard_iterator(StreamArn=fake.arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON")
    assert code(e) == "ResourceNotFoundException"
    with pytest.raises(ClientError) as e:
        client.describe_stream(StreamArn=fake.arn + "x")
    assert code(e) == "ResourceNotFoundException"
    assert fake.calls["GetRecords"] == 6


def test_describe_table_gives_the_latest_stream(fake: FakeDynamoDBStreams) -> None:
    ddb = boto3.client(
        "dynamodb",
        endpoint_url=fake.url,
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="x",
    )
    table = ddb.describe_table(TableName="users")["Table"]
    assert table["LatestStreamArn"] == fake.arn
    assert table["StreamSpecification"] == {"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"}
