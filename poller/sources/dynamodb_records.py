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

__all__ = ["deserialize_image", "is_ttl_delete", "item_key", "plain_number", "to_record"]

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


def deserialize_image(image: dict[str, Any] | None) -> dict[str, Any] | None:
    """A typed image (`Keys`, `NewImage`, `OldImage`) as a plain dict; None stays None."""
    if image is None:
        return None
    return {name: _DESERIALIZER.deserialize(value) for name, value in image.items()}


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
