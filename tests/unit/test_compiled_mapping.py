"""The compiled hot paths (mapping and coercion) give exactly what the plain,
obviously-correct versions give: values, types and error messages."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from poller.processing.mapping import Mapper, compile_path, compile_values
from poller.records import KINESIS, SQS, MappingError, Record
from poller.sinks.coercion import CONVERTERS, CoercionError, coerce_row, converter, row_coercer

EXPRESSIONS = [
    "data",
    "data.id",
    "data.a.b",
    "data.a.b.c",
    "data.missing.x",
    "sequence_number",
    "sub_sequence",
    "shard_id",
    "arrival_time",
    "source",
    "stream",
    "partition_key",
    "message_id",
    "attributes.SentTimestamp",
    "group_id",
    "nothing",
    "nothing.at.all",
    "data.tags[0]",
    "to_string(data.id)",
    "data.items[?qty > `1`].sku",
    "keys.id",
]

DATAS: list[Any] = [
    {"id": 7, "a": {"b": {"c": 1}}, "tags": ["x", "y"], "items": [{"sku": "s1", "qty": 2}]},
    {"id": "7", "a": {"b": 3}},
    {"id": None, "a": [1, 2]},
    {"a": "str"},
    [1, 2, 3],
    "plain text",
    b"bytes",
    42,
    None,
]


def records() -> list[Record]:
    out = []
    for i, data in enumerate(DATAS):
        out.append(Record(KINESIS, "s", "shardId-1", str(100 + i), data, partition_key=f"pk{i}"))
        out.append(Record(KINESIS, "s", "shardId-1", str(200 + i), data, partition_key=None))
        out.append(
            Record(
                SQS,
                "q",
                "",
                f"m{i}",
                data,
                meta={
                    "message_id": f"m{i}",
                    "group_id": None,
                    "attributes": {"SentTimestamp": "1700000000000"},
                    "receive_count": 1,
                },
            )
        )
        # meta overrides the record's own fields in the normalized view
        out.append(
            Record(KINESIS, "s", "shardId-1", "9", {"id": 1}, meta={"data": data, "partition_key": "meta"})
        )
    return out


def test_compiled_values_equal_paths_over_the_normalized_view() -> None:
    fn = compile_values([*EXPRESSIONS, None])
    for r in records():
        view = r.normalized()
        expected = [compile_path(e)(view) for e in EXPRESSIONS] + [None]
        assert fn(r) == expected, (r, expected)


def test_mapper_ops_and_errors_unchanged() -> None:
    m = Mapper({"id": "data.id", "name": "data.name"}, ["id"])
    r = Record(KINESIS, "s", "sh", "1", {"id": 3, "name": "x"})
    assert [(op.key, op.values) for op in m.ops(r)] == [((3,), (3, "x"))]
    with pytest.raises(MappingError, match=r"key column\(s\) \['id'\] evaluated to null"):
        m.ops(Record(KINESIS, "s", "sh", "1", {"name": "x"}))
    bad = Mapper({"id": "data.id", "n": "length(data.id)"}, ["id"])
    with pytest.raises(MappingError, match="mapping failed"):
        bad.ops(Record(KINESIS, "s", "sh", "1", {"id": 5}))


VALUES: list[Any] = [
    None,
    0,
    1,
    -5,
    2**70,
    True,
    False,
    1.0,
    1.5,
    0.1,
    float("inf"),
    float("nan"),
    "12",
    "1.50",
    "abc",
    "",
    "true",
    "2024-05-01T12:34:56.123456Z",
    "2024-05-01T12:34:56Z",
    " 2024-05-01T12:34:56Z ",
    "2024-05-01",
    "2024-05-01T12:34:56+02:00",
    "2024-05-01T12:34:56",
    "2024-05-01 12:34:56",
    "20240501T123456Z",
    "2024-05-01T12:34:56.1234567Z",
    "2024-13-01T00:00:00Z",
    "12:34",
    "1714564830",
    1714564830,
    1714564830123,
    Decimal("1.25"),
    Decimal("3"),
    datetime(2024, 5, 1, 12, tzinfo=UTC),
    datetime(2024, 5, 1, 12, tzinfo=timezone(timedelta(hours=2))),
    datetime(2024, 5, 1, 12),
    date(2024, 5, 1),
    uuid.UUID(int=5),
    "00000000-0000-0000-0000-000000000005",
    b"raw",
    {"a": 1},
    [1, "x"],
]


def _outcome(fn: Any, *args: Any) -> Any:
    try:
        out = fn(*args)
    except Exception as e:
        return ("error", type(e), str(e))
    return ("ok", [(type(v), v if v == v else "nan") for v in out])


@pytest.mark.parametrize("kind", sorted(CONVERTERS))
def test_compiled_coercer_equals_coerce_row(kind: str) -> None:
    conv = converter(kind)
    convs, cols = [converter("int"), conv, converter("text")], ["k", "c", "t"]
    fast = row_coercer(convs, cols)
    for v in VALUES:
        row = (1, v, "t")
        assert _outcome(fast, row) == _outcome(coerce_row, row, convs, cols), (kind, v)


def test_compiled_coercer_names_the_column() -> None:
    fast = row_coercer([converter("int"), converter("timestamptz")], ["id", "at"])
    with pytest.raises(CoercionError, match="column 'at': expected a timestamp"):
        fast((1, "yesterday"))
    with pytest.raises(ValueError):
        fast((1,))  # wrong arity is not a coercion error, as before


def _reference_datetime(v: Any) -> datetime:
    """The converter as first written, before its fast path for ISO strings."""
    if isinstance(v, datetime):
        return v if v.tzinfo else v.replace(tzinfo=UTC)
    if isinstance(v, int | float | Decimal) and not isinstance(v, bool):
        seconds = float(v)
        if seconds > 1e11:
            seconds /= 1000.0
        return datetime.fromtimestamp(seconds, UTC)
    if isinstance(v, str):
        s = v.strip().replace("Z", "+00:00")
        try:
            d = datetime.fromisoformat(s)
        except ValueError:
            raise CoercionError("bad") from None
        return d if d.tzinfo else d.replace(tzinfo=UTC)
    raise CoercionError("bad")


def _reference_decimal(v: Any) -> Any:
    if isinstance(v, Decimal):
        return v
    if isinstance(v, int | float | str) and not isinstance(v, bool):
        return Decimal(str(v))
    raise CoercionError("bad")


@pytest.mark.parametrize(
    ("kind", "reference"),
    [
        ("timestamptz", _reference_datetime),
        ("timestamp", lambda v: _reference_datetime(v).astimezone(UTC).replace(tzinfo=None)),
        ("decimal", _reference_decimal),
    ],
)
def test_fast_converters_equal_their_first_versions(kind: str, reference: Any) -> None:
    conv = converter(kind)
    for v in VALUES:
        got, want = _outcome(lambda x: [conv(x)], v), _outcome(lambda x: [reference(x)], v)
        if want[0] == "error":
            assert got[0] == "error", (kind, v, got)
        else:
            assert got == want, (kind, v)
            assert [conv(v)][0].__repr__() == [reference(v)][0].__repr__()
