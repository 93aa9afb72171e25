"""boto3 clients for test set-up and assertions (the daemon uses aiobotocore)."""

from __future__ import annotations

from typing import Any

import boto3


def client(service: str, endpoint: str) -> Any:
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


def queue_depth(sqs: Any, url: str) -> int:
    a = sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(a["ApproximateNumberOfMessages"]) + int(a["ApproximateNumberOfMessagesNotVisible"])


def send_all(sqs: Any, url: str, bodies: list[str], group_of: Any = None) -> None:
    for start in range(0, len(bodies), 10):
        entries = []
        for i, body in enumerate(bodies[start : start + 10]):
            e: dict[str, Any] = {"Id": str(i), "MessageBody": body}
            if group_of is not None:
                e["MessageGroupId"] = group_of(start + i)
            entries.append(e)
        resp = sqs.send_message_batch(QueueUrl=url, Entries=entries)
        assert not resp.get("Failed"), resp["Failed"]


def streamed_table(ddb: Any, table: str, key: str = "id", key_type: str = "S") -> str:
    """A table keyed on `key` with a NEW_AND_OLD_IMAGES stream; returns the stream's ARN."""
    created = ddb.create_table(
        TableName=table,
        KeySchema=[{"AttributeName": key, "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": key, "AttributeType": key_type}],
        BillingMode="PAY_PER_REQUEST",
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
    )
    return str(created["TableDescription"]["LatestStreamArn"])
