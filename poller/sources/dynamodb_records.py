"""DynamoDB Streams records → `Record`s with plain Python values.

Columns and JSON targets want `{"id": 7, "tags": ["a", "b"]}`, not DynamoDB's
typed `{"id": {"N": "7"}, "tags": {"SS": [...]}}`, and drivers and `json`
refuse `Decimal` and `set`. So images go through boto3's `TypeDeserializer`
with three changes: numbers become `int` when integral (exactly, however big)
and `float` otherwise; sets become sorted lists (a stable JSON form); binaries
become `bytes`. The record as botocore returned it stays in `Record.raw` for
Lambda event shapes and filters, which use DynamoDB's typed form.
"""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer

from poller.events import lambda_record
from poller.records import DYNAMODB, Record

__all__ = [
    "deserialize_image",
    "is_ttl_delete",
    "item_key",
    "plain_number",
    "snapshot_record",
    "to_record",
]

_INTEGER = re.compile(r"^-?[0-9]+$")


def plain_number(text: str) -> int | float:
    """A DynamoDB number (up to 38 digits, exponent to ±125) as int or float.

    Integral values go through `Decimal` → `int`, never through float, so
    `12345678901234567890123` and `1E+30` stay exact.
    """
    if _INTEGER.match(text):
        return int(text)
    d = Decimal(text)  # exact whatever the context precision
    if d == d.to_integral_value():
        return int(d)
    return float(d)


def _sorted(values: list[Any]) -> list[Any]:
    try:
        return sorted(values)
    except TypeError:  # cannot happen for homogeneous DynamoDB sets; keep the order then
        return values


class _PlainDeserializer(TypeDeserializer):  # type: ignore[misc]
    """boto3's deserializer, with values a database driver and `json` accept."""

    def _deserialize_n(self, value: str) -> int | float:
        return plain_number(value)

    def _deserialize_b(self, value: bytes | str) -> bytes:
        # botocore has already base64-decoded blobs; the JSON wire form has not.
        return base64.b64decode(value) if isinstance(value, str) else bytes(value)

    def _deserialize_ns(self, value: list[str]) -> list[int | float]:
        return _sorted([plain_number(v) for v in value])

    def _deserialize_ss(self, value: list[str]) -> list[str]:
        return sorted(value)

    def _deserialize_bs(self, value: list[bytes | str]) -> list[bytes]:
        return sorted(self._deserialize_b(v) for v in value)


_DESERIALIZER = _PlainDeserializer()


def _binary(value: bytes | str) -> bytes:
    return base64.b64decode(value) if isinstance(value, str) else bytes(value)


_CONVERT: dict[str, Any] = {
    "BOOL": lambda v: v,
    "NULL": lambda v: None,
    "B": _binary,
    "SS": sorted,
    "NS": lambda v: _sorted([plain_number(x) for x in v]),
    "BS": lambda v: sorted(_binary(x) for x in v),
    "L": lambda v: [plain_value(x) for x in v],
    "M": lambda v: {k: plain_value(x) for k, x in v.items()},
}


def plain_value(value: dict[str, Any]) -> Any:
    """One typed attribute value as a plain one: `_PlainDeserializer`'s answer,
    without its per-value method lookup (a third of a snapshot item's decoding).
    Anything unusual (no key, an unknown type) goes to it, errors included."""
    for kind, item in value.items():  # the first key, as boto3 takes it
        if kind == "S":
            return item
        if kind == "N":
            return plain_number(item)
        convert = _CONVERT.get(kind)
        if convert is not None:
            return convert(item)
        break
    return _DESERIALIZER.deserialize(value)


def deserialize_image(image: dict[str, Any] | None) -> dict[str, Any] | None:
    """A typed image (`Keys`, `NewImage`, `OldImage`) as a plain dict; None stays None."""
    if image is None:
        return None
    return {name: plain_value(value) for name, value in image.items()}


def is_ttl_delete(raw: dict[str, Any]) -> bool:
    """True for a REMOVE done by DynamoDB's TTL sweeper rather than by a client.

    AWS marks those with `userIdentity {Type: Service, PrincipalId:
    dynamodb.amazonaws.com}` (Lambda's event form spells the keys in camelCase).
    """
    identity = raw.get("userIdentity")
    if not isinstance(identity, dict):
        return False
    kind = identity.get("Type", identity.get("type"))
    principal = identity.get("PrincipalId", identity.get("principalId"))
    return kind == "Service" and principal == "dynamodb.amazonaws.com"


def _blob_text(value: object) -> str:
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode()
    raise TypeError(f"{type(value).__name__} in a key")


def item_key(keys: dict[str, Any]) -> str:
    """The item's primary key as one stable string (canonical JSON).

    It is the record's `partition_key`: with a parallelization factor above
    one, records are spread over lanes by it, so each item's changes stay in
    order — Lambda's guarantee for DynamoDB (item level).
    """
    return json.dumps(keys, sort_keys=True, separators=(",", ":"), default=_blob_text)


def creation_time(raw: dict[str, Any]) -> float:
    """A stream record's ApproximateCreationDateTime in epoch seconds (0 if absent)."""
    return _epoch(raw.get("dynamodb", {}).get("ApproximateCreationDateTime"))


def _epoch(value: object) -> float:
    """ApproximateCreationDateTime: a datetime from botocore, epoch seconds on the wire."""
    if isinstance(value, datetime):
        return (value if value.tzinfo is not None else value.replace(tzinfo=UTC)).timestamp()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return 0.0


def to_record(
    raw: dict[str, Any],
    *,
    stream: str,
    shard_id: str,
    stream_arn: str,
    region: str = "",
) -> Record:
    """One GetRecords record → a `Record`.

    `data` is the fullest image the event carries for a row's current state:
    the new image (INSERT, MODIFY), the old one on REMOVE, and only the keys
    when the stream's view type leaves that image out (KEYS_ONLY, or OLD_IMAGE
    for an INSERT) — never the old image of a MODIFY, which would write stale
    values. `partition_key` is the item's key (`item_key`). `raw_data` is the
    record in Lambda's JSON event form, so a failed record reaches the failure
    destination as a Lambda consumer would see it.
    """
    ddb: dict[str, Any] = raw.get("dynamodb", {})
    event_name = str(raw.get("eventName", ""))
    keys = deserialize_image(ddb.get("Keys")) or {}
    new = deserialize_image(ddb.get("NewImage"))
    old = deserialize_image(ddb.get("OldImage"))
    image = old if event_name == "REMOVE" else new
    record = Record(
        source=DYNAMODB,
        stream=stream,
        shard_id=shard_id,
        sequence_number=str(ddb.get("SequenceNumber", "")),
        data=image if image is not None else dict(keys),
        partition_key=item_key(keys),
        arrival_time=_epoch(ddb.get("ApproximateCreationDateTime")),
        meta={
            "event_name": event_name,
            "event_id": raw.get("eventID"),
            "keys": keys,
            "new": new,
            "old": old,
            "ttl_delete": is_ttl_delete(raw),
            "stream_view_type": ddb.get("StreamViewType"),
        },
        raw=raw,
        event_source_arn=stream_arn,
        region=str(raw.get("awsRegion") or region),
    )
    record.raw_data = json.dumps(lambda_record(record), separators=(",", ":")).encode()
    return record


def snapshot_record(
    item: dict[str, Any],
    key_attributes: list[str],
    *,
    stream: str,
    shard_id: str,
    source_arn: str,
    region: str,
    read_at: float,
    view_type: str = "NEW_AND_OLD_IMAGES",
) -> Record:
    """One item of a table's Scan → the `Record` of an INSERT whose new image is
    the item, so it goes through the filters and `columns` as a stream record
    would (`meta.snapshot` tells them apart).

    Its sequence number is the item's key (`item_key`): unique within the
    table and the same however often the item is read, so append-mode rows of
    a snapshot read twice are written once. `raw` has the shape of a stream
    record (Lambda's event form for the handler sink and the filters).
    """
    new = deserialize_image(item) or {}
    keys = {name: new[name] for name in key_attributes if name in new}
    key_text = item_key(keys)
    raw: dict[str, Any] = {
        "eventID": key_text,
        "eventName": "INSERT",
        "eventVersion": "1.1",
        "eventSource": DYNAMODB,
        "awsRegion": region,
        "dynamodb": {
            "ApproximateCreationDateTime": read_at,
            "Keys": {name: item[name] for name in key_attributes if name in item},
            "NewImage": item,
            "SequenceNumber": key_text,
            "StreamViewType": view_type,
        },
    }
    return SnapshotRecord(
        source=DYNAMODB,
        stream=stream,
        shard_id=shard_id,
        sequence_number=key_text,
        data=new,
        partition_key=key_text,
        arrival_time=read_at,
        meta={
            "event_name": "INSERT",
            "event_id": key_text,
            "keys": keys,
            "new": new,
            "old": None,
            "ttl_delete": False,
            "stream_view_type": view_type,
            "snapshot": True,
        },
        raw=raw,
        event_source_arn=source_arn,
        region=region,
    )


_RAW_DATA = Record.__dict__["raw_data"]  # the slot that `Record.raw_data` names


class SnapshotRecord(Record):
    """A snapshot item's record, whose `raw_data` (the Lambda event form of the
    record, only ever read when the record fails) is built on first use: it
    costs more than the rest of the record (16 of 27 µs for a 7-attribute item)."""

    __slots__ = ()

    @property
    def raw_data(self) -> bytes:
        value: bytes = _RAW_DATA.__get__(self)
        if not value:
            value = json.dumps(lambda_record(self), separators=(",", ":")).encode()
            _RAW_DATA.__set__(self, value)
        return value

    @raw_data.setter
    def raw_data(self, value: bytes) -> None:
        _RAW_DATA.__set__(self, value)
