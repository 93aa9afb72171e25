"""DynamoDB Streams records → plain-valued `Record`s: numbers, sets, binaries,
maps, which image `data` is, and TTL deletes. The raw records are shaped as
botocore returns them (bytes for B, datetimes for ApproximateCreationDateTime)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from poller.events import filter_view, lambda_record
from poller.jsonenc import dumps
from poller.processing.filters import compile_patterns
from poller.processing.mapping import Mapper
from poller.records import DYNAMODB
from poller.sources.dynamodb_records import (
    deserialize_image,
    is_ttl_delete,
    item_key,
    plain_number,
    to_record,
)

ARN = "arn:aws:dynamodb:eu-west-1:123456789012:table/users/stream/2024-01-01T00:00:00.000"
WHEN = datetime(2024, 5, 1, 12, 0, 30, tzinfo=UTC)


def raw(
    event: str,
    keys: dict[str, Any],
    new: dict[str, Any] | None = None,
    old: dict[str, Any] | None = None,
    view: str = "NEW_AND_OLD_IMAGES",
    seq: str = "4100000000000000000001",
    **extra: Any,
) -> dict[str, Any]:
    ddb: dict[str, Any] = {
        "ApproximateCreationDateTime": WHEN,
        "Keys": keys,
        "SequenceNumber": seq,
        "SizeBytes": 42,
        "StreamViewType": view,
    }
    if new is not None:
        ddb["NewImage"] = new
    if old is not None:
        ddb["OldImage"] = old
    return {
        "eventID": "e1",
        "eventName": event,
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": "eu-west-1",
        "dynamodb": ddb,
        **extra,
    }


def record(r: dict[str, Any]) -> Any:
    return to_record(r, stream="users", shard_id="shardId-0001", stream_arn=ARN, region="us-east-1")


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("7", 7),
        ("-12", -12),
        ("0", 0),
        ("-0", 0),
        ("2.0", 2),
        ("1.5", 1.5),
        ("-1.25E-3", -0.00125),
        ("1E+30", 10**30),
        ("12345678901234567890123456789012345678", 12345678901234567890123456789012345678),
        ("9.9999999999999999999999999999999999999E+125", 99999999999999999999999999999999999999 * 10**88),
        ("1E-130", 1e-130),
    ],
)
def test_numbers_are_int_when_integral_else_float(text: str, value: int | float) -> None:
    got = plain_number(text)
    assert got == value
    assert type(got) is type(value)


def test_a_big_integer_is_exact_not_rounded_through_float() -> None:
    big = "123456789012345678901234567890"
    assert plain_number(big) == int(big)
    assert plain_number(big) != int(float(big))


def test_sets_become_sorted_lists() -> None:
    image = deserialize_image(
        {
            "ss": {"SS": ["pear", "apple", "fig"]},
            "ns": {"NS": ["10", "2", "1.5", "-3"]},
            "bs": {"BS": [b"\x02", b"\x00\x01", b"\x01"]},
        }
    )
    assert image == {
        "ss": ["apple", "fig", "pear"],
        "ns": [-3, 1.5, 2, 10],
        "bs": [b"\x00\x01", b"\x01", b"\x02"],
    }
    assert [type(v) for v in image["ns"]] == [int, float, int, int]


def test_binary_is_bytes_from_botocore_or_from_the_json_wire_form() -> None:
    assert deserialize_image({"b": {"B": b"\xff\x00"}}) == {"b": b"\xff\x00"}
    wire = base64.b64encode(b"\xff\x00").decode()
    assert deserialize_image({"b": {"B": wire}, "bs": {"BS": [wire]}}) == {
        "b": b"\xff\x00",
        "bs": [b"\xff\x00"],
    }


def test_maps_lists_null_and_bool_nest() -> None:
    image = deserialize_image(
        {
            "profile": {
                "M": {
                    "age": {"N": "41"},
                    "score": {"N": "9.75"},
                    "tags": {"L": [{"S": "a"}, {"N": "2"}, {"NULL": True}, {"BOOL": False}]},
                    "inner": {"M": {"set": {"SS": ["z", "y"]}}},
                }
            },
            "active": {"BOOL": True},
            "nothing": {"NULL": True},
        }
    )
    assert image == {
        "profile": {
            "age": 41,
            "score": 9.75,
            "tags": ["a", 2, None, False],
            "inner": {"set": ["y", "z"]},
        },
        "active": True,
        "nothing": None,
    }
    assert deserialize_image(None) is None


def test_insert_becomes_a_record_with_plain_new_image() -> None:
    r = record(
        raw(
            "INSERT",
            {"id": {"N": "101"}},
            new={"id": {"N": "101"}, "name": {"S": "ann"}, "avatar": {"B": b"\x89PNG"}},
        )
    )
    assert r.source == DYNAMODB
    assert r.stream == "users"
    assert r.shard_id == "shardId-0001"
    assert r.sequence_number == "4100000000000000000001"
    assert r.arrival_time == WHEN.timestamp()
    assert r.event_source_arn == ARN
    assert r.region == "eu-west-1"  # the record's own region wins over the default
    assert r.data == {"id": 101, "name": "ann", "avatar": b"\x89PNG"}
    assert r.meta == {
        "event_name": "INSERT",
        "event_id": "e1",
        "keys": {"id": 101},
        "new": {"id": 101, "name": "ann", "avatar": b"\x89PNG"},
        "old": None,
        "ttl_delete": False,
        "stream_view_type": "NEW_AND_OLD_IMAGES",
    }
    view = r.normalized()
    assert view["keys"] == {"id": 101} and view["new"]["name"] == "ann" and view["old"] is None
    # Everything the mapper may hand a JSON column serializes (no Decimal, no set).
    assert json.loads(dumps(view))["new"]["avatar"] == base64.b64encode(b"\x89PNG").decode()


def test_raw_data_is_the_typed_record_as_lambda_delivers_it() -> None:
    r = record(raw("INSERT", {"id": {"N": "1"}}, new={"id": {"N": "1"}, "b": {"B": b"\x00"}}))
    assert json.loads(r.raw_data) == lambda_record(r)
    typed = json.loads(r.raw_data)["dynamodb"]
    assert typed["NewImage"]["b"] == {"B": "AA=="}
    assert typed["ApproximateCreationDateTime"] == WHEN.timestamp()


def test_remove_carries_the_old_image_as_data() -> None:
    r = record(raw("REMOVE", {"id": {"N": "5"}}, old={"id": {"N": "5"}, "name": {"S": "bob"}}))
    assert r.data == {"id": 5, "name": "bob"}
    assert r.meta["new"] is None
    assert r.meta["old"] == {"id": 5, "name": "bob"}


def test_modify_uses_the_new_image_never_the_old() -> None:
    r = record(
        raw(
            "MODIFY",
            {"id": {"S": "k"}},
            new={"id": {"S": "k"}, "v": {"N": "2"}},
            old={"id": {"S": "k"}, "v": {"N": "1"}},
        )
    )
    assert r.data == {"id": "k", "v": 2}
    # OLD_IMAGE streams have no new image: data is the keys, not stale values.
    r = record(raw("MODIFY", {"id": {"S": "k"}}, old={"id": {"S": "k"}, "v": {"N": "1"}}, view="OLD_IMAGE"))
    assert r.data == {"id": "k"}


def test_keys_only_records_carry_the_keys_as_data() -> None:
    r = record(raw("INSERT", {"pk": {"S": "a"}, "sk": {"N": "3"}}, view="KEYS_ONLY"))
    assert r.data == {"pk": "a", "sk": 3}
    assert r.meta["new"] is None and r.meta["old"] is None
    assert r.meta["stream_view_type"] == "KEYS_ONLY"


def test_ttl_delete_is_flagged() -> None:
    ttl = raw(
        "REMOVE",
        {"id": {"N": "9"}},
        old={"id": {"N": "9"}},
        userIdentity={"Type": "Service", "PrincipalId": "dynamodb.amazonaws.com"},
    )
    assert record(ttl).meta["ttl_delete"] is True
    assert json.loads(record(ttl).raw_data)["userIdentity"] == {
        "type": "Service",
        "principalId": "dynamodb.amazonaws.com",
    }
    assert is_ttl_delete({"userIdentity": {"type": "Service", "principalId": "dynamodb.amazonaws.com"}})
    assert not is_ttl_delete({"userIdentity": {"Type": "Service", "PrincipalId": "other.amazonaws.com"}})
    assert not is_ttl_delete(raw("REMOVE", {"id": {"N": "9"}}, old={"id": {"N": "9"}}))


def test_arrival_time_from_epoch_seconds_too() -> None:
    r = raw("INSERT", {"id": {"N": "1"}}, new={"id": {"N": "1"}})
    r["dynamodb"]["ApproximateCreationDateTime"] = 1714564830.0
    assert record(r).arrival_time == 1714564830.0


def test_mapper_upserts_and_deletes_from_normalized_records() -> None:
    mapper = Mapper({"id": "keys.id", "name": "data.name", "was": "old.name"}, ["id"])
    put = record(
        raw(
            "MODIFY",
            {"id": {"N": "3"}},
            new={"id": {"N": "3"}, "name": {"S": "b"}},
            old={
                "id": {"N": "3"},
                "name": {"S": "a"},
            },
        )
    )
    assert [(op.key, op.values) for op in mapper.ops(put)] == [((3,), (3, "b", "a"))]
    gone = record(raw("REMOVE", {"id": {"N": "3"}}, old={"id": {"N": "3"}, "name": {"S": "b"}}))
    assert [(op.key, op.values) for op in mapper.ops(gone)] == [((3,), None)]


def test_filters_match_the_typed_event_record() -> None:
    matcher = compile_patterns([{"eventName": ["INSERT", "MODIFY"]}])
    insert = record(raw("INSERT", {"id": {"N": "1"}}, new={"id": {"N": "1"}}))
    remove = record(raw("REMOVE", {"id": {"N": "1"}}, old={"id": {"N": "1"}}))
    assert matcher.matches(filter_view(insert))
    assert not matcher.matches(filter_view(remove))
    typed = compile_patterns([{"dynamodb": {"NewImage": {"id": {"N": ["1"]}}}}])
    assert typed.matches(filter_view(insert))


def test_partition_key_is_the_whole_item_key_in_a_stable_form() -> None:
    a = record(raw("INSERT", {"sk": {"N": "2"}, "pk": {"B": b"\x01"}}, new={"pk": {"B": b"\x01"}}))
    b = record(raw("REMOVE", {"pk": {"B": b"\x01"}, "sk": {"N": "2"}}, old={"pk": {"B": b"\x01"}}))
    assert a.partition_key == b.partition_key == '{"pk":"AQ==","sk":2}'
    assert item_key({"id": 1}) != item_key({"id": "1"})
