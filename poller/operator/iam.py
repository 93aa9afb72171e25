"""`poller iam-policy`: the least-privilege IAM policy for exactly the given streams.

Each part of a stream names the actions it really calls, on the ARNs it names:

| part | actions (IAM names) | resource |
|---|---|---|
| kinesis source | DescribeStreamSummary, ListShards, GetShardIterator, GetRecords | the stream |
| dynamodb source | DescribeTable (only when found by `table`) | the table |
|  | DescribeStream, GetShardIterator, GetRecords | the table's streams (or `stream_arn`) |
| sqs source | ReceiveMessage, DeleteMessage, ChangeMessageVisibility, GetQueueAttributes | the queue |
| sqs on_failure | SendMessage, GetQueueAttributes | the failure queue |
| lambda sink | InvokeFunction | the function (with its qualifier) |
| lease_store dynamodb | DescribeTable, CreateTable, Query, Get/Put/Update/DeleteItem, | the lease table |
|  | ConditionCheckItem | |

Batch calls are authorised by their single action (DeleteMessageBatch by
sqs:DeleteMessage, SendMessageBatch by sqs:SendMessage); a rewind's
TransactWriteItems by the actions of its items (Put/Update/DeleteItem,
ConditionCheckItem: all granted on the lease table; `iam_action` counts it
as UpdateItem). DynamoDB Streams'
calls are `dynamodb:` actions, and Lambda's Invoke is `lambda:InvokeFunction`
(`iam_action`). The region and account come from the ARN or queue URL, else
the configured region, else `*`. KMS is an option (`--kms-key`): kms:Decrypt
(and kms:GenerateDataKey where a stream sends to a queue) on those keys, only
through the services the streams use.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from poller.config import (
    DynamoDBSource,
    KinesisSource,
    LambdaSinkConfig,
    SqsDestination,
    SqsSource,
    StreamConfig,
)

KINESIS_READ = ("DescribeStreamSummary", "ListShards", "GetShardIterator", "GetRecords")
DYNAMODB_STREAM_READ = ("DescribeStream", "GetShardIterator", "GetRecords")
SQS_CONSUME = ("ReceiveMessage", "DeleteMessage", "ChangeMessageVisibility", "GetQueueAttributes")
SQS_SEND = ("SendMessage", "GetQueueAttributes")
# What `coordination/dynamodb_store.py` calls on its table (the operator commands: a subset).
LEASE_TABLE = (
    "DescribeTable",
    "CreateTable",
    "Query",
    "GetItem",
    "PutItem",
    "UpdateItem",
    "DeleteItem",
    "ConditionCheckItem",
)

_SINGLE = {
    "SendMessageBatch": "SendMessage",
    "DeleteMessageBatch": "DeleteMessage",
    "ChangeMessageVisibilityBatch": "ChangeMessageVisibility",
    "Invoke": "InvokeFunction",
    "TransactWriteItems": "UpdateItem",
}
_PREFIX = {"dynamodbstreams": "dynamodb", "streams.dynamodb": "dynamodb"}


def iam_action(service: str, operation: str) -> str:
    """The IAM action that authorises one API call, e.g. (`sqs`, `DeleteMessageBatch`)
    → `sqs:DeleteMessage`; `service` is botocore's service name or signing name."""
    return f"{_PREFIX.get(service, service)}:{_SINGLE.get(operation, operation)}"


def _queue(url: str, region: str | None) -> tuple[str, str, str]:
    """(region, account, name) of a queue URL: `https://sqs.REGION.amazonaws.com/ACCOUNT/NAME`
    (or an endpoint's `/ACCOUNT/NAME`)."""
    parts = urlsplit(url)
    path = [p for p in parts.path.split("/") if p]
    host = re.match(r"^(?:sqs\.)?([a-z]{2}(?:-[a-z]+)+-\d)\.", parts.hostname or "")
    account = path[-2] if len(path) >= 2 and path[-2].isdigit() else "*"
    return region or (host.group(1) if host else "*"), account, path[-1] if path else "*"


def _arn_parts(arn: str) -> tuple[str, str]:
    """(region, account) of an ARN."""
    parts = arn.split(":", 5)
    return (parts[3] or "*", parts[4] or "*") if len(parts) == 6 else ("*", "*")


def _sid(stream: str, part: str) -> str:
    words = re.split(r"[^A-Za-z0-9]+", stream)
    return "".join(w[:1].upper() + w[1:] for w in words if w) + part


def _statement(sid: str, service: str, actions: tuple[str, ...], resources: list[str]) -> dict[str, Any]:
    return {
        "Sid": sid,
        "Effect": "Allow",
        "Action": sorted(f"{service}:{a}" for a in actions),
        "Resource": resources[0] if len(resources) == 1 else resources,
    }


def stream_statements(cfg: StreamConfig) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    src = cfg.source
    if isinstance(src, KinesisSource):
        if src.stream.startswith("arn:"):
            arn = src.stream
        else:
            arn = f"arn:aws:kinesis:{src.region or '*'}:*:stream/{src.stream}"
        out.append(_statement(_sid(cfg.name, "ReadKinesis"), "kinesis", KINESIS_READ, [arn]))
    elif isinstance(src, DynamoDBSource):
        if src.stream_arn:
            streams = [src.stream_arn]
        else:
            table = f"arn:aws:dynamodb:{src.region or '*'}:*:table/{src.table}"
            out.append(_statement(_sid(cfg.name, "FindStream"), "dynamodb", ("DescribeTable",), [table]))
            streams = [f"{table}/stream/*"]
        out.append(_statement(_sid(cfg.name, "ReadStream"), "dynamodb", DYNAMODB_STREAM_READ, streams))
        if src.snapshot.mode != "none" or src.retention_gap_policy == "snapshot":
            table_arn = streams[0].split("/stream/")[0]  # a snapshot scans the table
            scan = ("DescribeTable", "Scan")
            out.append(_statement(_sid(cfg.name, "ScanTable"), "dynamodb", scan, [table_arn]))
    elif isinstance(src, SqsSource):
        region, account, name = _queue(src.queue_url, src.region)
        arn = f"arn:aws:sqs:{region}:{account}:{name}"
        out.append(_statement(_sid(cfg.name, "ConsumeQueue"), "sqs", SQS_CONSUME, [arn]))
    if isinstance(cfg.on_failure, SqsDestination):
        region, account, name = _queue(cfg.on_failure.queue_url, cfg.on_failure.region)
        arn = f"arn:aws:sqs:{region}:{account}:{name}"
        out.append(_statement(_sid(cfg.name, "FailureQueue"), "sqs", SQS_SEND, [arn]))
    if isinstance(cfg.sink, LambdaSinkConfig):
        out.append(
            _statement(_sid(cfg.name, "InvokeFunction"), "lambda", ("InvokeFunction",), [_function(cfg.sink)])
        )
    c = cfg.coordination
    if c is not None and c.lease_store == "dynamodb":
        leases = f"arn:aws:dynamodb:{c.region or '*'}:*:table/{c.table}"
        out.append(_statement(_sid(cfg.name, "Leases"), "dynamodb", LEASE_TABLE, [leases]))
    return out


def _function(sink: LambdaSinkConfig) -> str:
    name = sink.function
    if name.startswith("arn:"):
        arn = name
    else:
        base, _, alias = name.partition(":")
        arn = f"arn:aws:lambda:{sink.region or '*'}:*:function:{base}" + (f":{alias}" if alias else "")
    return f"{arn}:{sink.qualifier}" if sink.qualifier and arn.count(":") == 6 else arn


def _kms(streams: list[StreamConfig], keys: list[str]) -> dict[str, Any]:
    services: set[str] = set()
    sends = False
    for cfg in streams:
        src = cfg.source
        region = src.region or "*"
        services.add(f"{'dynamodb' if isinstance(src, DynamoDBSource) else src.type}.{region}.amazonaws.com")
        if isinstance(cfg.on_failure, SqsDestination):
            sends = True
            services.add(f"sqs.{cfg.on_failure.region or region}.amazonaws.com")
    actions = ("Decrypt", "GenerateDataKey") if sends else ("Decrypt",)
    statement = _statement("DecryptEncryptedSources", "kms", actions, sorted(keys))
    test = "StringLike" if any("*" in s for s in services) else "StringEquals"
    statement["Condition"] = {test: {"kms:ViaService": sorted(services)}}
    return statement


def policy(streams: list[StreamConfig], kms_keys: list[str] | None = None) -> dict[str, Any]:
    statements = [s for cfg in sorted(streams, key=lambda c: c.name) for s in stream_statements(cfg)]
    if kms_keys:
        statements.append(_kms(streams, kms_keys))
    return {"Version": "2012-10-17", "Statement": statements}


def actions(document: dict[str, Any]) -> set[str]:
    """Every action a policy document allows."""
    out: set[str] = set()
    for s in document["Statement"]:
        a = s["Action"]
        out.update([a] if isinstance(a, str) else a)
    return out
