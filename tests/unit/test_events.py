"""Lambda event shapes: the documented sample events are reproduced from raw API records.

Fixtures in tests/fixtures/esm_events are the sample events of the AWS Lambda
Developer Guide ("Using Lambda with Kinesis / DynamoDB / Amazon SQS"). Each test
rebuilds the raw record botocore would return (bytes, datetimes, PascalCase) and
checks `lambda_record` gives the sample record back exactly.
"""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from poller.events import filter_view, lambda_event, lambda_record
from poller.records import DYNAMODB, KINESIS, SQS, Record

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "esm_events"
ROLE_ARN = "arn:aws:iam::123456789012:role/lambda-role"


def sample(name: str) -> dict[str, Any]:
    event: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return event


# -- raw records as botocore returns them --------------------------------------------


def kinesis_from_event(rec: dict[str, Any], tz: timezone = UTC) -> Record:
    k = rec["kinesis"]
    shard_id, _, seq = rec["eventID"].partition(":")
    data = base64.b64decode(k["data"])
    raw = {
        "SequenceNumber": k["sequenceNumber"],
        "ApproximateArrivalTimestamp": datetime.fromtimestamp(k["approximateArrivalTimestamp"], tz),
        "Data": data,
        "PartitionKey": k["partitionKey"],
    }
    return Record(
        source=KINESIS,
        stream="lambda-stream",
        shard_id=shard_id,
        sequence_number=seq,
        data=data,
        raw_data=data,
        partition_key=k["partitionKey"],
        arrival_time=k["approximateArrivalTimestamp"],
        raw=raw,
        event_source_arn=rec["eventSourceARN"],
        region=rec["awsRegion"],
    )


def dynamodb_from_event(rec: dict[str, Any]) -> Record:
    raw = {k: v for k, v in rec.items() if k != "eventSourceARN"}  # not in the API record
    return Record(
        source=DYNAMODB,
        stream="TestTable",
        shard_id="shardId-00000001",
        sequence_number=rec["dynamodb"]["SequenceNumber"],
        data=None,
        raw=raw,
        event_source_arn=rec["eventSourceARN"],
        region=rec["awsRegion"],
    )


def sqs_from_event(rec: dict[str, Any]) -> Record:
    attributes = {
        name: {"StringValue": a["stringValue"], "DataType": a["dataType"]}
        for name, a in rec["messageAttributes"].items()
    }
    raw: dict[str, Any] = {
        "MessageId": rec["messageId"],
        "ReceiptHandle": rec["receiptHandle"],
        "MD5OfBody": rec["md5OfBody"],
        "Body": rec["body"],
        "Attributes": rec["attributes"],
    }
    if attributes:
        raw["MessageAttributes"] = attributes
    return Record(
        source=SQS,
        stream="my-queue",
        shard_id="my-queue",
        sequence_number=rec["messageId"],
        data=rec["body"].encode(),
        raw_data=rec["body"].encode(),
        raw=raw,
        event_source_arn=rec["eventSourceARN"],
        region=rec["awsRegion"],
    )


# -- documented samples, field by field ---------------------------------------------------


@pytest.mark.parametrize("index", [0, 1])
def test_kinesis_sample_record(index: int) -> None:
    expected = sample("kinesis")["Records"][index]
    got = lambda_record(kinesis_from_event(expected), function_arn=ROLE_ARN)
    assert got == expected
    assert list(got) == list(expected)
    assert list(got["kinesis"]) == list(expected["kinesis"])


@pytest.mark.parametrize("index", [0, 1])
def test_dynamodb_sample_record(index: int) -> None:
    expected = sample("dynamodb")["Records"][index]
    assert lambda_record(dynamodb_from_event(expected)) == expected


@pytest.mark.parametrize("index", [0, 1])
def test_sqs_sample_record(index: int) -> None:
    expected = sample("sqs")["Records"][index]
    assert lambda_record(sqs_from_event(expected)) == expected


@pytest.mark.parametrize(
    ("name", "build"),
    [("kinesis", kinesis_from_event), ("dynamodb", dynamodb_from_event), ("sqs", sqs_from_event)],
)
def test_sample_events_whole(name: str, build: Any) -> None:
    expected = sample(name)
    records = [build(r) for r in expected["Records"]]
    event = lambda_event(records, function_arn=ROLE_ARN)
    assert event == expected
    assert json.loads(json.dumps(event)) == expected  # plain JSON, nothing left to encode


# -- Kinesis details ---------------------------------------------------------------------


def test_kinesis_arrival_time_any_timezone_or_epoch() -> None:
    expected = sample("kinesis")["Records"][0]
    plus_two = timezone(timedelta(hours=2))
    assert lambda_record(kinesis_from_event(expected, plus_two), function_arn=ROLE_ARN) == expected
    record = kinesis_from_event(expected)
    record.raw["ApproximateArrivalTimestamp"] = 1545084650.987
    assert lambda_record(record)["kinesis"]["approximateArrivalTimestamp"] == 1545084650.987
    naive = datetime(2018, 12, 17, 22, 10, 50, 987000)  # taken as UTC
    record.raw["ApproximateArrivalTimestamp"] = naive
    assert lambda_record(record)["kinesis"]["approximateArrivalTimestamp"] == 1545084650.987


def test_kinesis_invoke_identity_defaults_to_empty() -> None:
    record = kinesis_from_event(sample("kinesis")["Records"][0])
    assert lambda_record(record)["invokeIdentityArn"] == ""


def test_kinesis_encryption_type_passed_through() -> None:
    record = kinesis_from_event(sample("kinesis")["Records"][0])
    record.raw["EncryptionType"] = "KMS"
    assert lambda_record(record)["kinesis"]["encryptionType"] == "KMS"


def test_kinesis_kpl_user_record_uses_its_own_data_and_partition_key() -> None:
    parent = kinesis_from_event(sample("kinesis")["Records"][0])
    parent.raw_data = b"\xf3\x89\x9a\xc2aggregate"
    child = parent.child(b'{"user": 2}', 2, partition_key="user-pk")
    got = lambda_record(child)
    assert got["kinesis"]["partitionKey"] == "user-pk"
    assert base64.b64decode(got["kinesis"]["data"]) == b'{"user": 2}'
    assert got["kinesis"]["sequenceNumber"] == parent.raw["SequenceNumber"]
    assert got["eventID"] == f"shardId-000000000006:{parent.raw['SequenceNumber']}"


def test_kinesis_decoded_record_falls_back_to_original_bytes() -> None:
    record = kinesis_from_event(sample("kinesis")["Records"][0])
    record.data = {"decoded": True}
    assert lambda_record(record)["kinesis"]["data"] == "SGVsbG8sIHRoaXMgaXMgYSB0ZXN0Lg=="


# -- DynamoDB details --------------------------------------------------------------------


def test_dynamodb_timestamps_binaries_and_identity() -> None:
    created = datetime(2024, 6, 10, 19, 26, 16, tzinfo=UTC)
    raw: dict[str, Any] = {
        "eventID": "c81e728d9d4c2f636f067f89cc14862c",
        "eventName": "REMOVE",
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": "eu-west-1",
        "dynamodb": {
            "ApproximateCreationDateTime": created,
            "Keys": {"pk": {"B": b"\x00\x01"}},
            "OldImage": {
                "pk": {"B": b"\x00\x01"},
                "tags": {"BS": [b"a", b"b"]},
                "nested": {"M": {"blob": {"B": b"\xff"}, "list": {"L": [{"B": b"x"}, {"N": "1"}]}}},
                "n": {"N": "1.5"},
                "flag": {"BOOL": False},
                "nothing": {"NULL": True},
                "ss": {"SS": ["a"]},
            },
            "SequenceNumber": "400000000008367680596",
            "SizeBytes": 40,
            "StreamViewType": "OLD_IMAGE",
        },
        "userIdentity": {"PrincipalId": "dynamodb.amazonaws.com", "Type": "Service"},
    }
    record = Record(
        source=DYNAMODB,
        stream="t",
        shard_id="s",
        sequence_number="400000000008367680596",
        data=None,
        raw=raw,
        event_source_arn="arn:aws:dynamodb:eu-west-1:111122223333:table/t/stream/x",
        region="eu-west-1",
    )
    got = lambda_record(record)
    ddb = got["dynamodb"]
    assert ddb["ApproximateCreationDateTime"] == created.timestamp()
    assert isinstance(ddb["ApproximateCreationDateTime"], float)
    assert ddb["Keys"] == {"pk": {"B": "AAE="}}
    old = ddb["OldImage"]
    assert old["tags"] == {"BS": ["YQ==", "Yg=="]}
    assert old["nested"] == {"M": {"blob": {"B": "/w=="}, "list": {"L": [{"B": "eA=="}, {"N": "1"}]}}}
    assert old["n"] == {"N": "1.5"} and old["flag"] == {"BOOL": False}
    assert old["nothing"] == {"NULL": True} and old["ss"] == {"SS": ["a"]}
    assert got["userIdentity"] == {"principalId": "dynamodb.amazonaws.com", "type": "Service"}
    assert got["eventSourceARN"] == record.event_source_arn
    assert raw["dynamodb"]["Keys"] == {"pk": {"B": b"\x00\x01"}}  # raw left untouched
    json.dumps(got)


# -- SQS details -------------------------------------------------------------------------


def test_sqs_binary_attributes_and_attributes_digest() -> None:
    expected = sample("sqs")["Records"][0]
    record = sqs_from_event(expected)
    record.raw["MessageAttributes"]["blob"] = {"BinaryValue": b"1100", "DataType": "Binary"}
    record.raw["MD5OfMessageAttributes"] = "582c92c5c5b6ac403040a4f3ab3115c9"
    got = lambda_record(record)
    assert got["messageAttributes"]["blob"] == {
        "binaryValue": "MTEwMA==",
        "stringListValues": [],
        "binaryListValues": [],
        "dataType": "Binary",
    }
    assert got["md5OfMessageAttributes"] == "582c92c5c5b6ac403040a4f3ab3115c9"
    assert "md5OfMessageAttributes" not in lambda_record(sqs_from_event(expected))


def test_sqs_without_raw_body_uses_payload() -> None:
    record = Record(
        source=SQS,
        stream="q",
        shard_id="q",
        sequence_number="m-1",
        data={"decoded": 1},
        raw_data=b"test",
        raw={"MessageId": "m-1", "ReceiptHandle": "rh"},
    )
    got = lambda_record(record)
    assert got["body"] == "test"
    assert got["md5OfBody"] == hashlib.md5(b"test").hexdigest()
    assert got["attributes"] == {} and got["messageAttributes"] == {}


def test_unknown_source_is_an_error() -> None:
    record = Record(source="aws:kafka", stream="s", shard_id="0", sequence_number="1", data=b"")
    with pytest.raises(ValueError, match="aws:kafka"):
        lambda_record(record)


# -- filter views ------------------------------------------------------------------------


def test_filter_view_kinesis_json_data_is_parsed() -> None:
    record = kinesis_from_event(sample("kinesis")["Records"][0])
    record.data = record.raw_data = b' {"City": "Seattle", "Temperature": 46}'
    view = filter_view(record)
    assert view["data"] == {"City": "Seattle", "Temperature": 46}
    assert view["partitionKey"] == "1"
    assert view["approximateArrivalTimestamp"] == 1545084650.987
    assert "eventSource" not in view  # the kinesis object's fields only


@pytest.mark.parametrize(
    "payload", [b"Hello, this is a test.", b'"a JSON string"', b"42", b'{"a": NaN}', b"\xff{"]
)
def test_filter_view_kinesis_non_json_keeps_base64(payload: bytes) -> None:
    record = kinesis_from_event(sample("kinesis")["Records"][0])
    record.data = record.raw_data = payload
    assert filter_view(record)["data"] == base64.b64encode(payload).decode()


def test_filter_view_sqs_body() -> None:
    record = sqs_from_event(sample("sqs")["Records"][0])
    assert filter_view(record)["body"] == "Test message."
    record.raw["Body"] = '{"status": "paid", "amount": 12.5}'
    view = filter_view(record)
    assert view["body"] == {"status": "paid", "amount": 12.5}
    assert view["messageId"] == "059f36b4-87a3-44ab-83d2-661975830a7d"
    assert view["messageAttributes"]["myAttribute"]["stringValue"] == "myValue"
    record.raw["Body"] = "123"
    assert filter_view(record)["body"] == "123"


def test_filter_view_dynamodb_is_the_event_record() -> None:
    record = dynamodb_from_event(sample("dynamodb")["Records"][1])
    assert filter_view(record) == lambda_record(record)


def test_events_validate_against_powertools_models() -> None:
    """An independent reading of the same shapes: Powertools' parser models accept them."""
    models = pytest.importorskip("aws_lambda_powertools.utilities.parser.models")
    kinesis = models.KinesisDataStreamModel.model_validate(sample("kinesis"))
    assert kinesis.Records[0].kinesis.data == b"Hello, this is a test."
    models.DynamoDBStreamModel.model_validate(sample("dynamodb"))
    models.SqsModel.model_validate(sample("sqs"))
    kinesis_record = kinesis_from_event(sample("kinesis")["Records"][0])
    event = lambda_event([kinesis_record], function_arn=ROLE_ARN)
    assert models.KinesisDataStreamModel.model_validate(event).Records[0].kinesis.partitionKey == "1"
