"""The event shapes AWS Lambda event source mappings deliver, rebuilt from raw AWS records.

Handlers written for Lambda get byte-for-byte the records they would get from an
event source mapping, and FilterCriteria patterns are matched against the same
view Lambda matches, so both move between Lambda and the poller unchanged.

`record.raw` is the record as botocore returned it (bytes for blobs, `datetime`
for timestamps); everything here turns it into the JSON wire form Lambda sends.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from poller.records import DYNAMODB, KINESIS, SQS, Record

__all__ = ["filter_view", "lambda_event", "lambda_record", "window_fields"]


def lambda_event(records: list[Record], *, function_arn: str = "") -> dict[str, Any]:
    """`{"Records": [...]}`, the payload a Lambda handler is invoked with."""
    return {"Records": [lambda_record(r, function_arn=function_arn) for r in records]}


def window_fields(
    start: float,
    end: float,
    state: dict[str, Any],
    shard_id: str,
    event_source_arn: str,
    *,
    final: bool,
    terminated_early: bool,
) -> dict[str, Any]:
    """What a tumbling window adds to the event, after `Records`, in Lambda's order
    (`KinesisTimeWindowEvent`, `DynamodbTimeWindowEvent`): the window's bounds as
    ISO-8601 UTC seconds, the state the function returned last in this window on
    this shard, and the two flags."""
    return {
        "window": {"start": _iso_seconds(start), "end": _iso_seconds(end)},
        "state": state,
        "shardId": shard_id,
        "eventSourceARN": event_source_arn,
        "isFinalInvokeForWindow": final,
        "isWindowTerminatedEarly": terminated_early,
    }


def lambda_record(record: Record, *, function_arn: str = "") -> dict[str, Any]:
    """One element of `event["Records"]` for `record`'s source.

    `function_arn` only appears in Kinesis records, as `invokeIdentityArn` (on
    Lambda that is the execution role's ARN; pass whichever identity fits).
    """
    if record.source == KINESIS:
        return _kinesis_record(record, function_arn)
    if record.source == DYNAMODB:
        return _dynamodb_record(record)
    if record.source == SQS:
        return _sqs_record(record)
    raise ValueError(f"no Lambda event shape for record source {record.source!r}")


def filter_view(record: Record) -> dict[str, Any]:
    """The document Lambda matches FilterCriteria patterns against.

    - Kinesis: the `kinesis` object's fields (`partitionKey`, `sequenceNumber`, ...)
      with `data` replaced by the decoded payload when it is a JSON object or array;
      otherwise `data` stays the base64 string, so object patterns on it never match.
    - SQS: the event record with `body` replaced by the parsed JSON object or array;
      any other body stays the plain string.
    - DynamoDB: the whole event record (`eventName`, typed `dynamodb.NewImage`, ...).

    The cost is the record's own size: a decoded payload is used as it is, and
    the children of one aggregate share the work on their parent's bytes (see
    `_payload_field`), so filtering N user records is not N times the aggregate.
    """
    if record.source == KINESIS:
        # After a decoder ran, `data` is the parsed payload (of a KPL user record
        # too, whose bytes are no longer the raw aggregate's).
        data = record.data
        if isinstance(data, dict | list):
            return _kinesis_fields(record, data)
        return _kinesis_fields(record, _payload_field(_kinesis_payload(record)))
    event = lambda_record(record)
    if record.source == SQS:
        parsed = record.data if isinstance(record.data, dict | list) else _json_container(event["body"])
        if parsed is not None:
            event["body"] = parsed
    return event


# -- Kinesis -----------------------------------------------------------------


def _kinesis_record(record: Record, function_arn: str) -> dict[str, Any]:
    kinesis = _kinesis_fields(record, _b64_payload(_kinesis_payload(record)))
    return {
        "kinesis": kinesis,
        "eventSource": KINESIS,
        "eventVersion": "1.0",
        "eventID": f"{record.shard_id}:{kinesis['sequenceNumber']}",
        "eventName": "aws:kinesis:record",
        "invokeIdentityArn": function_arn,
        "awsRegion": record.region,
        "eventSourceARN": record.event_source_arn,
    }


def _kinesis_fields(record: Record, data: Any) -> dict[str, Any]:
    """The event record's `kinesis` object, with `data` as given."""
    raw = record.raw
    partition_key = record.partition_key
    if partition_key is None:
        partition_key = raw.get("PartitionKey", "")
    kinesis: dict[str, Any] = {
        "kinesisSchemaVersion": "1.0",
        "partitionKey": partition_key,
        "sequenceNumber": raw.get("SequenceNumber") or record.sequence_number,
        "data": data,
        "approximateArrivalTimestamp": _epoch(raw.get("ApproximateArrivalTimestamp"), record.arrival_time),
    }
    if encryption := raw.get("EncryptionType"):
        kinesis["encryptionType"] = encryption
    return kinesis


def _kinesis_payload(record: Record) -> bytes:
    """The payload bytes a handler sees.

    `data` while it is still bytes: the record's own payload, or for a KPL user
    record the user record's bytes (Lambda itself would deliver the aggregate
    once; here each user record becomes its own event record, with its own
    partition key). Once a decoder has replaced `data`, `raw_data`: the original
    bytes, which for a KPL user record is the whole aggregate — the same object
    for all its user records, which is what the caches below key on.
    """
    data = record.data
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    if record.raw_data:
        return record.raw_data
    raw = record.raw.get("Data")
    if isinstance(raw, bytes | bytearray):
        return bytes(raw)
    return b""


# One entry each: consecutive calls for the user records (or log events) of one
# aggregate pass the same parent bytes, and bytes cache their hash, so every call
# after the first costs O(1) instead of a pass over the parent.
@functools.lru_cache(maxsize=1)
def _b64_payload(payload: bytes) -> str:
    return _b64(payload)


@functools.lru_cache(maxsize=1)
def _payload_field(payload: bytes) -> Any:
    """A filter view's `data`: the payload's JSON object or array, else its base64.
    The value may be shared by several views: it is only read."""
    parsed = _json_container(payload)
    return parsed if parsed is not None else _b64(payload)


# -- DynamoDB Streams ----------------------------------------------------------


def _dynamodb_record(record: Record) -> dict[str, Any]:
    raw = record.raw
    event: dict[str, Any] = {
        "eventID": raw.get("eventID", record.sequence_number),
        "eventName": raw.get("eventName", ""),
        "eventVersion": raw.get("eventVersion", "1.1"),
        "eventSource": raw.get("eventSource", DYNAMODB),
        "awsRegion": raw.get("awsRegion") or record.region,
        "dynamodb": _stream_record(raw.get("dynamodb", {})),
        "eventSourceARN": record.event_source_arn,
    }
    identity = raw.get("userIdentity")
    if identity:
        # The API says PrincipalId/Type; Lambda events say principalId/type.
        event["userIdentity"] = {_lower_first(k): v for k, v in identity.items()}
    return event


_IMAGES = frozenset({"Keys", "NewImage", "OldImage"})


def _stream_record(stream: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in stream.items():
        if key == "ApproximateCreationDateTime":
            out[key] = _epoch(value, 0.0)
        elif key in _IMAGES:
            out[key] = {name: _attribute(av) for name, av in value.items()}
        else:
            out[key] = value
    return out


def _attribute(value: dict[str, Any]) -> dict[str, Any]:
    """A typed attribute value in JSON wire form: binaries base64, M and L recursed."""
    out: dict[str, Any] = {}
    for kind, item in value.items():
        if kind == "B":
            out[kind] = _b64(item)
        elif kind == "BS":
            out[kind] = [_b64(b) for b in item]
        elif kind == "M":
            out[kind] = {k: _attribute(v) for k, v in item.items()}
        elif kind == "L":
            out[kind] = [_attribute(v) for v in item]
        else:
            out[kind] = item
    return out


# -- SQS -----------------------------------------------------------------------


def _sqs_record(record: Record) -> dict[str, Any]:
    raw = record.raw
    body = raw.get("Body")
    if body is None:
        body = record.raw_data.decode("utf-8", "replace")
    event: dict[str, Any] = {
        "messageId": raw.get("MessageId", record.sequence_number),
        "receiptHandle": raw.get("ReceiptHandle", ""),
        "body": body,
        "attributes": dict(raw.get("Attributes", {})),
        "messageAttributes": {
            name: _message_attribute(attr) for name, attr in raw.get("MessageAttributes", {}).items()
        },
    }
    if md5_attributes := raw.get("MD5OfMessageAttributes"):
        event["md5OfMessageAttributes"] = md5_attributes
    event["md5OfBody"] = raw.get("MD5OfBody") or hashlib.md5(body.encode()).hexdigest()
    event["eventSource"] = SQS
    event["eventSourceARN"] = record.event_source_arn
    event["awsRegion"] = record.region
    return event


def _message_attribute(attr: dict[str, Any]) -> dict[str, Any]:
    """ReceiveMessage's attribute form to Lambda's: camelCase, both list fields always present."""
    out: dict[str, Any] = {}
    if "StringValue" in attr:
        out["stringValue"] = attr["StringValue"]
    if "BinaryValue" in attr:
        out["binaryValue"] = _b64(attr["BinaryValue"])
    out["stringListValues"] = list(attr.get("StringListValues", []))
    out["binaryListValues"] = [_b64(b) for b in attr.get("BinaryListValues", [])]
    out["dataType"] = attr.get("DataType", "String")
    return out


# -- helpers -------------------------------------------------------------------


def _b64(value: Any) -> str:
    """Blob to base64 text; text is taken to be base64 already (JSON wire form)."""
    if isinstance(value, str):
        return value
    return base64.b64encode(bytes(value)).decode("ascii")


def _epoch(value: object, default: float) -> float:
    """botocore timestamps are aware datetimes; a naive one is taken as UTC."""
    if isinstance(value, datetime):
        moment = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return moment.timestamp()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return default
    return default


def _iso_seconds(epoch: float) -> str:
    """`2020-07-30T17:00:00Z`, as Lambda writes a window's bounds."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _lower_first(name: str) -> str:
    return name[:1].lower() + name[1:]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_container(payload: bytes | str) -> dict[str, Any] | list[Any] | None:
    """The parsed payload if it is a JSON object or array, else None.

    Scalars (`"x"`, `42`) count as not JSON: only containers can hold the fields
    a pattern names. NaN/Infinity, which Python's json accepts, are rejected.
    """
    text = payload.lstrip() if isinstance(payload, str) else payload.lstrip(b" \t\r\n")
    if not text or text[:1] not in ("{", "[", b"{", b"["):
        return None
    try:
        parsed = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return None
    if isinstance(parsed, dict | list):
        return parsed
    return None
