"""The compiled response parsers return exactly what botocore's own JSON parser
returns, for random documents of the real output shapes (unknown keys, nulls,
nested and recursive shapes included), and hook in only where they can."""

from __future__ import annotations

import base64
import json
import random
from typing import Any

import botocore.session
import pytest
from botocore.model import Shape
from botocore.parsers import JSONParser

from poller.sources.fast_parse import body_parser, compile_shape

OPERATIONS = [
    ("sqs", "ReceiveMessage"),
    ("sqs", "DeleteMessageBatch"),
    ("sqs", "ChangeMessageVisibilityBatch"),
    ("sqs", "GetQueueAttributes"),
    ("kinesis", "GetRecords"),
    ("kinesis", "ListShards"),
    ("kinesis", "GetShardIterator"),
    ("dynamodbstreams", "GetRecords"),
    ("dynamodbstreams", "DescribeStream"),
]


def output_shape(service: str, op: str) -> Shape:
    model = botocore.session.get_session().get_service_model(service)
    shape = model.operation_model(op).output_shape
    assert shape is not None
    return shape


def sample(shape: Shape, rng: random.Random, depth: int = 0) -> Any:
    kind = shape.type_name
    if kind == "structure":
        out: dict[str, Any] = {}
        for name, member in shape.members.items():  # type: ignore[attr-defined]
            key = member.serialization.get("name", name)
            roll = rng.random()
            if roll < 0.15 or depth > 4:
                continue
            out[key] = None if roll < 0.25 else sample(member, rng, depth + 1)
        if rng.random() < 0.3:
            out["SomeFutureField"] = {"x": 1}
        return out
    if kind == "list":
        return [
            None if rng.random() < 0.1 else sample(shape.member, rng, depth + 1)  # type: ignore[attr-defined]
            for _ in range(rng.randint(0, 3 if depth < 3 else 0))
        ]
    if kind == "map":
        return {
            f"k{i}": sample(shape.value, rng, depth + 1)  # type: ignore[attr-defined]
            for i in range(rng.randint(0, 3 if depth < 3 else 0))
        }
    if kind == "blob":
        return base64.b64encode(rng.randbytes(rng.randint(0, 40))).decode()
    if kind == "timestamp":
        return rng.choice([1714564830.123, 1714564830, "2024-05-01T12:00:30.5Z"])
    if kind in ("integer", "long"):
        return rng.randint(-5, 10**12)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind in ("double", "float"):
        return rng.random() * 1000
    return "".join(rng.choice('abcé✓ 0"\\') for _ in range(rng.randint(0, 12)))


@pytest.mark.parametrize(("service", "op"), OPERATIONS)
def test_compiled_parser_equals_botocore(service: str, op: str) -> None:
    shape = output_shape(service, op)
    fast = compile_shape(shape)
    reference = JSONParser()
    rng = random.Random(f"{service}.{op}")
    for _ in range(300):
        doc = json.loads(json.dumps(sample(shape, rng)))
        assert fast(doc) == reference._parse_shape(shape, doc)


def test_handler_feeds_botocore_and_leaves_errors_alone() -> None:
    shape = output_shape("sqs", "ReceiveMessage")
    handler = body_parser(shape)
    assert handler is not None
    body = {
        "Messages": [
            {
                "MessageId": "m1",
                "ReceiptHandle": "r1",
                "Body": '{"a":1}',
                "Attributes": {"SentTimestamp": "1"},
                "MessageAttributes": {"b": {"DataType": "Binary", "BinaryValue": "AAE="}},
            }
        ]
    }
    response = {"status_code": 200, "headers": {}, "body": json.dumps(body).encode()}
    custom: dict[str, Any] = {}
    handler(response_dict=response, customized_response_dict=custom)
    assert response["body"] == b"{}"
    assert custom["Messages"][0]["MessageAttributes"]["b"]["BinaryValue"] == b"\x00\x01"
    error = {"status_code": 400, "headers": {}, "body": b'{"__type":"X","message":"no"}'}
    custom = {}
    handler(response_dict=error, customized_response_dict=custom)
    assert custom == {} and error["body"] == b'{"__type":"X","message":"no"}'
    malformed = {"status_code": 200, "headers": {}, "body": b'{"Messages": 5}'}
    handler(response_dict=malformed, customized_response_dict=custom)
    assert custom == {} and malformed["body"] == b'{"Messages": 5}'


def test_timestamps_are_botocores_datetimes() -> None:
    from botocore.utils import parse_timestamp as botocore_parse

    from poller.sources.fast_parse import epoch_seconds, parse_timestamp

    values: list[Any] = [0, 1, 1714564830, 1714564830.123456, 1714564830.9999996, 2**31 + 0.5, 1e-7]
    values += [1714564830.1 + i / 997 for i in range(200)]
    values += ["2024-05-01T12:00:30.5Z", "1714564830", "Wed, 01 May 2024 12:00:30 GMT"]
    for v in values:
        ours, theirs = parse_timestamp(v), botocore_parse(v)
        assert repr(ours) == repr(theirs) and ours.fold == theirs.fold, v
        assert type(ours.tzinfo) is type(theirs.tzinfo)
        assert epoch_seconds(ours) == theirs.timestamp()
