"""Lambda FilterCriteria matching, table-driven from the Lambda "Event filtering" docs.

Each row of the documented comparison-operator table runs against all three
sources: Kinesis (JSON in `Data`, pattern under `data`), SQS (JSON in `Body`,
pattern under `body`) and DynamoDB (typed `NewImage`, pattern under
`dynamodb.NewImage` with the attribute type key, as Lambda requires).
DynamoDB expectations marked below were validated against AWS by LocalStack's
test suite (tests/aws/services/lambda_/event_source_mapping/
test_lambda_integration_dynamodbstreams.py::test_dynamodb_event_filter).

The last part runs each difference between a plain reading of the docs and
AWS's own engine (dotted keys, anything-but lists, numbers by value, range
order, JSON numbers in YAML) on patterns read from stream files by the real
loader.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from poller.config import ConfigError, load_path
from poller.events import filter_view
from poller.processing.filters import MAX_PATTERNS, compile_patterns
from poller.records import DYNAMODB, KINESIS, SQS, Record

# -- records of each source ---------------------------------------------------------------


def kinesis_record(payload: bytes, partition_key: str = "1") -> Record:
    raw: dict[str, Any] = {
        "SequenceNumber": "49590338271490256608559692538361571095921575989136588898",
        "ApproximateArrivalTimestamp": datetime(2018, 12, 17, 22, 10, 50, 987000, tzinfo=UTC),
        "Data": payload,
        "PartitionKey": partition_key,
    }
    return Record(
        source=KINESIS,
        stream="lambda-stream",
        shard_id="shardId-000000000006",
        sequence_number=raw["SequenceNumber"],
        data=payload,
        raw_data=payload,
        partition_key=partition_key,
        raw=raw,
        event_source_arn="arn:aws:kinesis:us-east-2:123456789012:stream/lambda-stream",
        region="us-east-2",
    )


def sqs_record(body: str) -> Record:
    raw: dict[str, Any] = {
        "MessageId": "059f36b4-87a3-44ab-83d2-661975830a7d",
        "ReceiptHandle": "AQEBwJnKyrHigUMZj6rYigCgxlaS3SLy0a...",
        "MD5OfBody": "0" * 32,
        "Body": body,
        "Attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": "1545082649183"},
        "MessageAttributes": {"kind": {"StringValue": "order", "DataType": "String"}},
    }
    return Record(
        source=SQS,
        stream="my-queue",
        shard_id="my-queue",
        sequence_number=raw["MessageId"],
        data=body.encode(),
        raw_data=body.encode(),
        raw=raw,
        event_source_arn="arn:aws:sqs:us-east-2:123456789012:my-queue",
        region="us-east-2",
    )


def dynamodb_record(new_image: dict[str, Any] | None, event_name: str = "INSERT", **extra: Any) -> Record:
    stream: dict[str, Any] = {
        "ApproximateCreationDateTime": datetime(2023, 3, 14, 22, 0, 18, tzinfo=UTC),
        "Keys": {"Id": {"N": "101"}},
        "SequenceNumber": "111",
        "SizeBytes": 26,
        "StreamViewType": "NEW_AND_OLD_IMAGES",
        **extra,
    }
    if new_image is not None:
        stream["NewImage"] = new_image
    raw = {
        "eventID": "1",
        "eventName": event_name,
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": "us-west-2",
        "dynamodb": stream,
    }
    return Record(
        source=DYNAMODB,
        stream="TestTable",
        shard_id="shardId-1",
        sequence_number="111",
        data=None,
        raw=raw,
        event_source_arn="arn:aws:dynamodb:us-west-2:111122223333:table/TestTable/stream/x",
        region="us-west-2",
    )


def typed(item: dict[str, Any]) -> dict[str, Any]:
    """A plain item as a DynamoDB image (numbers travel as strings)."""
    out: dict[str, Any] = {}
    for name, value in item.items():
        if value is None:
            out[name] = {"NULL": True}
        elif isinstance(value, bool):
            out[name] = {"BOOL": value}
        elif isinstance(value, int | float):
            out[name] = {"N": str(value)}
        else:
            out[name] = {"S": value}
    return out


def matches(pattern: dict[str, Any], record: Record) -> bool:
    return compile_patterns([pattern]).matches(filter_view(record))


# -- the documented operator table --------------------------------------------------------


@dataclass(frozen=True)
class Example:
    name: str
    rule: dict[str, Any]  # over the payload's fields (what goes under data / body)
    ddb_rule: dict[str, Any]  # the same over a typed NewImage
    hit: dict[str, Any]  # a payload the rule matches
    miss: dict[str, Any]  # a payload it does not
    ddb: tuple[bool, bool] = (True, False)  # DynamoDB outcome for (hit, miss)


def _s(rules: list[Any]) -> dict[str, Any]:
    return {"S": rules}


EXAMPLES = [
    Example(
        "null",
        {"UserID": [None]},
        {"UserID": {"NULL": [True]}},
        {"UserID": None},
        {"UserID": "u-1"},
    ),
    Example("empty", {"LastName": [""]}, {"LastName": _s([""])}, {"LastName": ""}, {"LastName": "D"}),
    Example("equals", {"Name": ["Alice"]}, {"Name": _s(["Alice"])}, {"Name": "Alice"}, {"Name": "alice"}),
    Example(
        "equals ignore case",
        {"Name": [{"equals-ignore-case": "alice"}]},
        {"Name": _s([{"equals-ignore-case": "alice"}])},
        {"Name": "ALICE"},
        {"Name": "Alicia"},
    ),
    Example(
        "and",
        {"Location": ["New York"], "Day": ["Monday"]},
        {"Location": _s(["New York"]), "Day": _s(["Monday"])},
        {"Location": "New York", "Day": "Monday"},
        {"Location": "New York", "Day": "Tuesday"},
    ),
    Example(
        "or",
        {"PaymentType": ["Credit", "Debit"]},
        {"PaymentType": _s(["Credit", "Debit"])},
        {"PaymentType": "Debit"},
        {"PaymentType": "Cash"},
    ),
    Example(
        "or, multiple fields ($or)",
        {"$or": [{"Location": ["New York"]}, {"Day": ["Monday"]}]},
        {"$or": [{"Location": _s(["New York"])}, {"Day": _s(["Monday"])}]},
        {"Location": "Boston", "Day": "Monday"},
        {"Location": "Boston", "Day": "Tuesday"},
    ),
    Example(
        "not (anything-but)",
        {"Weather": [{"anything-but": ["Raining"]}]},
        {"Weather": _s([{"anything-but": ["Raining"]}])},
        {"Weather": "Sunny"},
        {"Weather": "Raining"},
    ),
    Example(
        "numeric equals",
        {"Price": [{"numeric": ["=", 100]}]},
        {"Price": {"N": [{"numeric": ["=", 100]}]}},
        {"Price": 100},
        {"Price": 101},
        ddb=(False, False),  # N values are strings: numeric never matches them (AWS-validated)
    ),
    Example(
        "numeric range",
        {"Price": [{"numeric": [">", 10, "<=", 20]}]},
        {"Price": {"N": [{"numeric": [">", 10, "<=", 20]}]}},
        {"Price": 20},
        {"Price": 10},
        ddb=(False, False),
    ),
    Example(
        "exists",
        {"ProductName": [{"exists": True}]},
        {"ProductName": _s([{"exists": True}])},
        {"ProductName": "Widget"},
        {"Other": "x"},
    ),
    Example(
        "does not exist",
        {"ProductName": [{"exists": False}]},
        {"ProductName": _s([{"exists": False}])},
        {"Other": "x"},
        {"ProductName": "Widget"},
    ),
    Example(
        "begins with (prefix)",
        {"Region": [{"prefix": "us-"}]},
        {"Region": _s([{"prefix": "us-"}])},
        {"Region": "us-east-1"},
        {"Region": "eu-west-1"},
    ),
    Example(
        "ends with (suffix)",
        {"FileName": [{"suffix": ".png"}]},
        {"FileName": _s([{"suffix": ".png"}])},
        {"FileName": "photo.png"},
        {"FileName": "photo.jpg"},
    ),
]


def _case(source: str, ex: Example, payload: dict[str, Any]) -> tuple[dict[str, Any], Record]:
    if source == "kinesis":
        return {"data": ex.rule}, kinesis_record(json.dumps(payload).encode())
    if source == "sqs":
        return {"body": ex.rule}, sqs_record(json.dumps(payload))
    return {"dynamodb": {"NewImage": ex.ddb_rule}}, dynamodb_record(typed(payload))


@pytest.mark.parametrize("source", ["kinesis", "sqs", "dynamodb"])
@pytest.mark.parametrize("ex", EXAMPLES, ids=[e.name for e in EXAMPLES])
def test_documented_operators(source: str, ex: Example) -> None:
    expected = ex.ddb if source == "dynamodb" else (True, False)
    pattern, hit = _case(source, ex, ex.hit)
    _, miss = _case(source, ex, ex.miss)
    assert (matches(pattern, hit), matches(pattern, miss)) == expected


# -- DynamoDB ---------------------------------------------------------------------------


@pytest.mark.parametrize(("event_name", "expected"), [("INSERT", 1), ("MODIFY", 1), ("REMOVE", 0)])
def test_dynamodb_insert_and_modify_only(event_name: str, expected: int) -> None:
    record = dynamodb_record(typed({"Id": 101}), event_name)
    assert matches({"eventName": ["INSERT", "MODIFY"]}, record) is bool(expected)


def test_dynamodb_documented_key_and_attribute_filters() -> None:
    image = typed({"CustomerName": "AnyCompany Industries", "AccountManager": "Pat Candella"})
    record = dynamodb_record(image, Keys={"CustomerName": {"S": "AnyCompany Industries"}})
    keys = {"dynamodb": {"Keys": {"CustomerName": {"S": ["AnyCompany Industries"]}}}}
    managers = {"dynamodb": {"NewImage": {"AccountManager": {"S": ["Pat Candella", "Shirley Rodriguez"]}}}}
    assert matches(keys, record) and matches(managers, record)
    other = dynamodb_record(typed({"AccountManager": "Someone Else"}))
    assert not matches(keys, other) and not matches(managers, other)


def test_dynamodb_attribute_type_key_is_required() -> None:
    """AWS-validated: omitting the type key (S) matches nothing, even with exists: true."""
    record = dynamodb_record(typed({"presentKey": "presentValue"}))
    assert not matches({"dynamodb": {"NewImage": {"presentKey": ["presentValue"]}}}, record)
    assert not matches({"dynamodb": {"NewImage": {"presentKey": [{"exists": True}]}}}, record)
    assert matches({"dynamodb": {"NewImage": {"presentKey": {"S": ["presentValue"]}}}}, record)


def test_dynamodb_exists_false_on_attribute_matches_either_way() -> None:
    """AWS-validated: an attribute is an object, not a leaf, so exists: false holds for it."""
    pattern = {"dynamodb": {"NewImage": {"presentKey": [{"exists": False}]}}}
    assert matches(pattern, dynamodb_record(typed({"id": "a"})))
    assert matches(pattern, dynamodb_record(typed({"id": "b", "presentKey": "x"})))


def test_dynamodb_numeric_on_n_never_matches_but_anything_but_does() -> None:
    """AWS-validated: of N "42" and "101" only "42" passes [numeric > 100, anything-but "101"]."""
    pattern = {
        "dynamodb": {"NewImage": {"numericFilter": {"N": [{"numeric": [">", 100]}, {"anything-but": "101"}]}}}
    }
    assert matches(pattern, dynamodb_record({"numericFilter": {"N": "42"}}))
    assert not matches(pattern, dynamodb_record({"numericFilter": {"N": "101"}}))


def test_dynamodb_creation_time_is_numeric() -> None:
    """AWS-validated: ApproximateCreationDateTime is a number before filtering."""
    pattern = {"dynamodb": {"ApproximateCreationDateTime": [{"numeric": [">", 0]}]}}
    assert matches(pattern, dynamodb_record(typed({"Id": 1})))


def test_dynamodb_old_image_and_event_name_together() -> None:
    pattern = {
        "eventName": ["MODIFY"],
        "dynamodb": {
            "NewImage": {"state": {"S": ["DONE"]}},
            "OldImage": {"state": {"S": [{"anything-but": ["DONE"]}]}},
        },
    }
    changed = dynamodb_record(typed({"state": "DONE"}), "MODIFY", OldImage=typed({"state": "RUN"}))
    same = dynamodb_record(typed({"state": "DONE"}), "MODIFY", OldImage=typed({"state": "DONE"}))
    assert matches(pattern, changed)
    assert not matches(pattern, same)


# -- Kinesis ------------------------------------------------------------------------------


def test_kinesis_documented_metadata_and_data_example() -> None:
    pattern = {"partitionKey": ["1"], "data": {"Location": ["Los Angeles"]}}
    assert matches(pattern, kinesis_record(b'{"Location": "Los Angeles"}'))
    assert not matches(pattern, kinesis_record(b'{"Location": "Los Angeles"}', partition_key="2"))
    assert not matches(pattern, kinesis_record(b'{"Location": "Seattle"}'))


def test_kinesis_non_json_data() -> None:
    """Lambda drops a non-JSON record for a data pattern but still filters it on metadata."""
    record = kinesis_record(b"Hello, this is a test.")
    assert matches({"partitionKey": ["1"]}, record)
    assert not matches({"data": {"Location": ["Los Angeles"]}}, record)
    assert not matches({"data": {"Location": [{"exists": False}]}}, record)
    assert not matches({"partitionKey": ["1"], "data": {"a": [{"exists": False}]}}, record)


def test_kinesis_numeric_data_and_arrival_time() -> None:
    pattern = {"data": {"Temperature": [{"numeric": [">", 50, "<=", 60]}]}}
    assert matches(pattern, kinesis_record(b'{"Temperature": 55}'))
    assert not matches(pattern, kinesis_record(b'{"Temperature": "55"}'))  # a string
    assert matches({"approximateArrivalTimestamp": [{"numeric": [">", 1.5e9]}]}, kinesis_record(b""))


# -- SQS ----------------------------------------------------------------------------------


def test_sqs_body_format_table() -> None:
    """The documented SQS table: body and pattern must agree on plain string vs JSON."""
    plain, json_body = sqs_record("hello world"), sqs_record('{"greeting": "hello world"}')
    assert matches({"body": ["hello world"]}, plain)  # plain / plain: filtered
    assert not matches({"body": {"greeting": ["hello world"]}}, plain)  # plain / JSON: dropped
    assert not matches({"body": {"greeting": [{"exists": False}]}}, plain)
    assert not matches({"body": [{"prefix": "{"}]}, json_body)  # JSON / plain: dropped
    assert matches({"body": {"greeting": ["hello world"]}}, json_body)  # JSON / JSON: filtered
    metadata_only = {"attributes": {"ApproximateReceiveCount": ["1"]}}
    assert matches(metadata_only, plain) and matches(metadata_only, json_body)


def test_sqs_message_attributes() -> None:
    pattern = {"messageAttributes": {"kind": {"stringValue": ["order"]}}}
    assert matches(pattern, sqs_record("x"))


# -- matcher semantics ---------------------------------------------------------------------


def view(data: dict[str, Any]) -> dict[str, Any]:
    return filter_view(kinesis_record(json.dumps(data).encode()))


def test_arrays_match_if_any_element_matches() -> None:
    m = compile_patterns([{"data": {"tags": ["b"]}}])
    assert m.matches(view({"tags": ["a", "b"]}))
    assert m.matches(view({"tags": [["x"], ["b"]]}))
    assert not m.matches(view({"tags": ["a", "c"]}))
    assert not m.matches(view({"tags": []}))
    nested = compile_patterns([{"data": {"items": {"sku": [{"prefix": "A-"}]}}}])
    assert nested.matches(view({"items": [{"sku": "B-1"}, {"sku": "A-2"}]}))
    assert not nested.matches(view({"items": [{"sku": "B-1"}]}))
    anything_but = compile_patterns([{"data": {"tags": [{"anything-but": "a"}]}}])
    assert anything_but.matches(view({"tags": ["a", "z"]}))  # EventBridge: z is not a
    assert not anything_but.matches(view({"tags": ["a"]}))


def test_exact_numbers_booleans_and_null_are_typed() -> None:
    m = compile_patterns([{"data": {"v": [100]}}])
    assert m.matches(view({"v": 100}))
    assert m.matches(view({"v": 100.0}))  # compared by value, as AWS's engine does
    assert not m.matches(view({"v": "100"}))
    b = compile_patterns([{"data": {"v": [True]}}])
    assert b.matches(view({"v": True}))
    assert not b.matches(view({"v": 1})) and not b.matches(view({"v": "true"}))
    one = compile_patterns([{"data": {"v": [1]}}])
    assert not one.matches(view({"v": True}))
    null = compile_patterns([{"data": {"v": [None]}}])
    assert null.matches(view({"v": None}))
    assert not null.matches(view({})) and not null.matches(view({"v": ""}))


def test_numeric_bounds() -> None:
    m = compile_patterns([{"data": {"n": [{"numeric": [">=", 0, "<", 5]}]}}])
    assert [m.matches(view({"n": n})) for n in (-1, 0, 4.99, 5)] == [False, True, True, False]
    assert not m.matches(view({"n": True}))  # booleans are not numbers
    with pytest.raises(ValueError, match="a range starts with its lower bound"):
        compile_patterns([{"data": {"n": [{"numeric": ["<=", 5, ">", 0]}]}}])  # AWS refuses upper-first
    single = compile_patterns([{"data": {"n": [{"numeric": ["<", 0]}]}}])
    assert single.matches(view({"n": -0.5})) and not single.matches(view({"n": 0}))


def test_anything_but_forms() -> None:
    def ok(rule: Any, value: Any) -> bool:
        return compile_patterns([{"data": {"v": [{"anything-but": rule}]}}]).matches(view({"v": value}))

    assert ok("a", "b") and not ok("a", "a")
    assert ok(["a", "b"], "c") and not ok(["a", "b"], "b")
    assert ok([1, 2], 3) and not ok([1, 2], 2) and ok([1, 2], "1")
    assert ok({"prefix": "init"}, "done") and not ok({"prefix": "init"}, "initial")
    assert ok({"suffix": ".tmp"}, "a.txt") and not ok({"suffix": ".tmp"}, "a.tmp")
    assert not ok({"equals-ignore-case": ["ABC", "xyz"]}, "abc") and ok({"equals-ignore-case": "x"}, "y")
    assert not compile_patterns([{"data": {"v": [{"anything-but": "a"}]}}]).matches(view({}))


def test_prefix_and_suffix_ignoring_case() -> None:
    m = compile_patterns([{"data": {"v": [{"prefix": {"equals-ignore-case": "US-"}}]}}])
    assert m.matches(view({"v": "us-east-1"})) and not m.matches(view({"v": "eu-us-1"}))
    s = compile_patterns([{"data": {"v": [{"suffix": {"equals-ignore-case": ".PNG"}}]}}])
    assert s.matches(view({"v": "a.png"})) and not s.matches(view({"v": "a.jpg"}))


def test_or_nested_and_combined_with_fields() -> None:
    m = compile_patterns(
        [
            {
                "data": {
                    "kind": ["order"],
                    "$or": [{"total": [{"numeric": [">", 100]}]}, {"vip": [True]}],
                }
            }
        ]
    )
    assert m.matches(view({"kind": "order", "total": 500}))
    assert m.matches(view({"kind": "order", "total": 5, "vip": True}))
    assert not m.matches(view({"kind": "order", "total": 5}))
    assert not m.matches(view({"kind": "refund", "total": 500}))


def test_patterns_are_ored_and_none_means_everything() -> None:
    m = compile_patterns([{"data": {"a": [1]}}, {"data": {"b": [2]}}])
    assert m.matches(view({"a": 1})) and m.matches(view({"b": 2}))
    assert not m.matches(view({"a": 2, "b": 1}))
    assert compile_patterns([]).matches(view({"anything": 1}))


def test_mixed_rules_in_one_list_are_ored() -> None:
    m = compile_patterns([{"data": {"v": ["x", 7, None, {"prefix": "ab"}, {"exists": False}]}}])
    for value in ("x", 7, None, "abc"):
        assert m.matches(view({"v": value}))
    assert m.matches(view({}))
    assert not m.matches(view({"v": "zz"}))


# -- invalid patterns ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "where"),
    [
        ({"data": {"status": "paid"}}, r"data\.status: .*bare value"),
        ({"eventName": "INSERT"}, r"eventName: .*bare value"),
        ({"eventName": []}, r"eventName: an empty rule list"),
        ({}, "top level: an empty object"),
        ({"data": {}}, "data: an empty object"),
        ({"v": [{"wildcard": "a*"}]}, r"v\[0\]\.wildcard: unknown operator"),
        ({"v": [{"prefix": "a", "suffix": "b"}]}, r"v\[0\]: .*exactly one operator"),
        ({"v": [{"prefix": 1}]}, r"v\[0\]\.prefix: expected a string"),
        ({"v": [{"equals-ignore-case": ["a"]}]}, r"v\[0\]\.equals-ignore-case: expected a string"),
        ({"v": [{"numeric": ["=", "5"]}]}, r"v\[0\]\.numeric\[1\]: expected a number"),
        ({"v": [{"numeric": ["=", True]}]}, r"v\[0\]\.numeric\[1\]: expected a number"),
        ({"v": [{"numeric": [">"]}]}, r"v\[0\]\.numeric: expected \[op, number\]"),
        ({"v": [{"numeric": "> 5"}]}, r"v\[0\]\.numeric: expected"),
        ({"v": [{"numeric": ["~", 5]}]}, r"v\[0\]\.numeric\[0\]: unknown comparison"),
        ({"v": [{"numeric": [">", 1, ">", 2]}]}, r"v\[0\]\.numeric\[2\]: a range ends with its upper"),
        ({"v": [{"numeric": ["<", 1, "<=", 2]}]}, r"v\[0\]\.numeric\[0\]: a range starts with its lower"),
        ({"v": [{"numeric": ["=", 1, "<", 2]}]}, r"v\[0\]\.numeric\[0\]: a range starts with its lower"),
        ({"v": [{"numeric": [">", 5, "<", 1]}]}, r"v\[0\]\.numeric: the range is empty"),
        ({"v": [{"numeric": [">", 5, "<=", 5]}]}, r"v\[0\]\.numeric: the range is empty"),
        ({"v": [{"exists": "yes"}]}, r"v\[0\]\.exists: expected true or false"),
        ({"v": [{"anything-but": []}]}, r"v\[0\]\.anything-but: an empty list"),
        ({"v": [{"anything-but": [None]}]}, r"v\[0\]\.anything-but\[0\]: .*strings or numbers"),
        (
            {"v": [{"anything-but": {"numeric": [">", 1]}}]},
            r"v\[0\]\.anything-but\.numeric: anything-but takes",
        ),
        ({"v": [["nested"]]}, r"v\[0\]: expected a string, number"),
        ({"v": [float("nan")]}, r"v\[0\]: nan is not a JSON number"),
        ({"$or": {"a": ["x"]}}, r"\$or: \$or takes a list of at least two"),
        ({"$or": []}, r"\$or: \$or takes a list of at least two"),
        ({"$or": [{"a": ["x"]}, "b"]}, r"\$or\[1\]: expected a pattern object"),
        ({"$or": [{"a": "x"}, {"b": ["y"]}]}, r"\$or\[0\]\.a: .*bare value"),
    ],
)
def test_invalid_patterns(pattern: dict[str, Any], where: str) -> None:
    with pytest.raises(ValueError, match=rf"^filter pattern 1: at {where}"):
        compile_patterns([{"ok": ["fine"]}, pattern])


def test_pattern_must_be_an_object() -> None:
    with pytest.raises(ValueError, match="filter pattern 0: at top level: a pattern must be an object"):
        compile_patterns(["single-string"])  # type: ignore[list-item]


def test_more_than_ten_patterns() -> None:
    compile_patterns([{"a": [i]} for i in range(MAX_PATTERNS)])
    with pytest.raises(ValueError, match="11 filter patterns given; Lambda allows at most 10"):
        compile_patterns([{"a": [i]} for i in range(MAX_PATTERNS + 1)])


def test_patterns_must_be_a_list() -> None:
    with pytest.raises(ValueError, match="must be a list"):
        compile_patterns({"a": ["x"]})  # type: ignore[arg-type]


def test_binary_dynamodb_values_match_as_base64() -> None:
    record = dynamodb_record({"blob": {"B": b"\x00\x01"}})
    expected = base64.b64encode(b"\x00\x01").decode()
    assert matches({"dynamodb": {"NewImage": {"blob": {"B": [expected]}}}}, record)


# -- AWS's engine, where it differs from a plain reading of the docs ------------------------
#
# Each case is a pattern as a user pastes it into a stream file (JSON from the Lambda
# console, or YAML), read through the real loader, and matched against Kinesis records
# whose `data` holds the payloads. Expectations follow AWS's event-ruler.


@dataclass(frozen=True)
class Difference:
    name: str
    pattern: str  # one item of `filters:`, as written in the stream file
    hits: tuple[Any, ...]  # payloads it matches
    misses: tuple[Any, ...]  # payloads it does not


DIFFERENCES = [
    Difference(
        "a dotted key in the pattern is a path",
        '{"data": {"detail": {"state.status": ["running"]}}}',
        hits=({"detail": {"state": {"status": "running"}}}, {"detail": {"state.status": "running"}}),
        misses=({"detail": {"state": {"status": "stopped"}}}, {"detail": {"state": "running"}}),
    ),
    Difference(
        "a dotted key in the event is a path",
        '{"data": {"detail": {"state": {"status": ["running"]}}}}',
        hits=(
            {"detail": {"state.status": "running"}},
            {"detail.state.status": "running"},
            {"detail.state": {"status": "running"}},
        ),
        misses=({"detail": {"state.status": "stopped"}}, {"detail": {"state.statuses": "running"}}),
    ),
    Difference(
        "dotted and nested keys meet under one path",
        '{"data": {"a.b": ["x"], "a": {"c": [1]}}}',
        hits=({"a": {"b": "x", "c": 1}}, {"a.b": "x", "a.c": 1}, {"a": {"c": 1}, "a.b": "x"}),
        misses=({"a": {"b": "x"}}, {"a.b": "x", "a": {"c": 2}}),
    ),
    Difference(
        "two rules for one path: the later one wins",
        '{"data": {"a.b": ["x"], "a": {"b": ["y"]}}}',
        hits=({"a": {"b": "y"}},),
        misses=({"a": {"b": "x"}},),
    ),
    Difference(
        "a field and a dotted field under it are two paths",
        '{"data": {"a": ["x"], "a.b": ["y"]}}',
        hits=({"a": "x", "a.b": "y"},),
        misses=({"a": "x"}, {"a": {"b": "y"}}),
    ),
    Difference(
        "anything-but a list of prefixes",
        '{"data": {"v": [{"anything-but": {"prefix": ["init", "tmp-"]}}]}}',
        hits=({"v": "done"}, {"v": "tmp"}),
        misses=({"v": "initial"}, {"v": "tmp-1"}),
    ),
    Difference(
        "anything-but a list of suffixes",
        '{"data": {"v": [{"anything-but": {"suffix": [".tmp", ".bak"]}}]}}',
        hits=({"v": "a.txt"},),
        misses=({"v": "a.tmp"}, {"v": "a.bak"}),
    ),
    Difference(
        "anything-but a list ignoring case",
        '{"data": {"v": [{"anything-but": {"equals-ignore-case": ["Paid", "REFUNDED"]}}]}}',
        hits=({"v": "open"},),
        misses=({"v": "PAID"}, {"v": "refunded"}),
    ),
    Difference(
        "anything-but one prefix, as a string",
        '{"data": {"v": [{"anything-but": {"prefix": "init"}}]}}',
        hits=({"v": "done"},),
        misses=({"v": "initial"},),
    ),
    Difference(
        "an exact number matches the same value written otherwise",
        '{"data": {"v": [300]}}',
        hits=({"v": 300}, {"v": 300.0}, {"v": 3e2}),
        misses=({"v": "300"}, {"v": 300.5}, {"v": True}),
    ),
    Difference(
        "a pattern number with a fraction matches the integer",
        '{"data": {"v": [300.0], "w": [1E-3]}}',
        hits=({"v": 300, "w": 0.001},),
        misses=({"v": 300, "w": "1E-3"},),
    ),
    Difference(
        "anything-but a number excludes it however written",
        '{"data": {"v": [{"anything-but": [300, 301]}]}}',
        hits=({"v": 302}, {"v": "300"}),
        misses=({"v": 300.0}, {"v": 301}),
    ),
    Difference(
        "-4e-6 and 1E3 pasted from JSON stay numbers",
        '{"data": {"v": [{"numeric": [">", -4e-6, "<=", 1E3]}]}}',
        hits=({"v": 0}, {"v": -3e-6}, {"v": 1000}),
        misses=({"v": -1e-5}, {"v": 1000.5}, {"v": "5"}),
    ),
    Difference(
        "numbers in YAML flow style are read as JSON reads them",
        "{data: {v: [1e3, -4e-6, 1E+2]}}",
        hits=({"v": 1000}, {"v": -0.000004}, {"v": 100}),
        misses=({"v": "1e3"},),
    ),
    Difference(
        "words YAML 1.1 would turn into booleans or dates stay strings",
        "{data: {v: [yes, on, off, 2024-01-01], w: [true]}}",
        hits=({"v": "yes", "w": True}, {"v": "on", "w": True}, {"v": "2024-01-01", "w": True}),
        misses=({"v": True, "w": True}, {"v": "yes", "w": "true"}),
    ),
    Difference(
        "a quoted number is a string",
        '{"data": {"v": ["1e3", "300"]}}',
        hits=({"v": "1e3"}, {"v": "300"}),
        misses=({"v": 1000}, {"v": 300}),
    ),
]

INVALID = [
    (
        "an empty prefix in anything-but",
        '{"data": {"v": [{"anything-but": {"prefix": ""}}]}}',
        "empty string",
    ),
    (
        "an empty prefix in a list",
        '{"data": {"v": [{"anything-but": {"prefix": ["a", ""]}}]}}',
        "empty string",
    ),
    (
        "an empty suffix in anything-but",
        '{"data": {"v": [{"anything-but": {"suffix": [""]}}]}}',
        "empty string",
    ),
    ("a range given upper bound first", '{"data": {"v": [{"numeric": ["<", 10, ">", 0]}]}}', "lower bound"),
    ("a range that is one point", '{"data": {"v": [{"numeric": [">=", 5, "<=", 5]}]}}', "range is empty"),
    ("strings and numbers in one anything-but", '{"data": {"v": [{"anything-but": ["a", 1]}]}}', "not both"),
    ("$or with one alternative", '{"data": {"$or": [{"v": ["a"]}]}}', "at least two"),
    ("a number no double holds", '{"data": {"v": [{"numeric": [">", 12345678901234567891]}]}}', "exact"),
]


def _stream_file(name: str, pattern: str) -> str:
    return (
        f"name: {name}\n"
        "source: {type: kinesis, stream: s}\n"
        "filters:\n"
        f"  - {pattern}\n"
        "on_failure: {type: table}\n"
        "sink: {type: sqlite, dsn: x.sqlite, table: t}\n"
    )


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """The `filters` of one stream file per case, read by the real loader."""
    folder = tmp_path_factory.mktemp("differences")
    for i, case in enumerate(DIFFERENCES):
        (folder / f"case{i}.yaml").write_text(_stream_file(f"case{i}", case.pattern))
    return {s.name: s.filters for s in load_path(folder, env={})}


@pytest.mark.parametrize("index", range(len(DIFFERENCES)), ids=[d.name for d in DIFFERENCES])
def test_filters_read_from_a_stream_file_match_as_aws_does(
    loaded: dict[str, list[dict[str, Any]]], index: int
) -> None:
    case = DIFFERENCES[index]
    matcher = compile_patterns(loaded[f"case{index}"])
    assert [matcher.matches(view(p)) for p in case.hits] == [True] * len(case.hits)
    assert [matcher.matches(view(p)) for p in case.misses] == [False] * len(case.misses)


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None  # written in YAML, not JSON


PASTED_JSON = [i for i, d in enumerate(DIFFERENCES) if _json_or_none(d.pattern) is not None]


@pytest.mark.parametrize("index", PASTED_JSON, ids=[DIFFERENCES[i].name for i in PASTED_JSON])
def test_a_json_pattern_pasted_into_yaml_is_unchanged(
    loaded: dict[str, list[dict[str, Any]]], index: int
) -> None:
    as_json = _json_or_none(DIFFERENCES[index].pattern)
    assert loaded[f"case{index}"] == [as_json]
    assert [type(v) for v in _scalars(loaded[f"case{index}"])] == [type(v) for v in _scalars([as_json])]


def _scalars(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _scalars(v)]
    if isinstance(value, list):
        return [s for v in value for s in _scalars(v)]
    return [value]


@pytest.mark.parametrize(("name", "pattern", "reason"), INVALID, ids=[c[0] for c in INVALID])
def test_patterns_aws_refuses_are_refused_by_poller_check(
    tmp_path: Path, name: str, pattern: str, reason: str
) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(_stream_file("s", pattern))
    with pytest.raises(ConfigError) as refused:
        load_path(path, env={})
    assert f"{path}: filters: filter pattern 0: at data" in str(refused.value)
    assert reason in str(refused.value)


def test_yaml_numbers_outside_filters_are_left_to_the_usual_rules(tmp_path: Path) -> None:
    """Only `filters` is read as JSON: elsewhere `1e3` stays what YAML 1.1 makes of it."""
    path = tmp_path / "s.yaml"
    path.write_text(
        _stream_file("s", '{"data": {"v": [1e3]}}').replace("table: t", "table: t, pool_size: 1e3")
    )
    with pytest.raises(ConfigError, match=r"sink\.pool_size"):
        load_path(path, env={})


def test_dotted_event_keys_do_not_change_the_event(tmp_path: Path) -> None:
    payload = {"a.b": 1, "a": {"c": 2}}
    record = kinesis_record(json.dumps(payload).encode())
    event = filter_view(record)
    before = json.dumps(event, sort_keys=True, default=str)
    assert compile_patterns([{"data": {"a": {"b": [1], "c": [2]}}}]).matches(event)
    assert json.dumps(event, sort_keys=True, default=str) == before
