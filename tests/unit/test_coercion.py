"""Coercion contains every error and bounds every conversion: whatever JSON-ish
value reaches a column, its converter returns or raises `CoercionError`, fast;
and what the database or its driver would refuse at commit is refused here,
per dialect and per column type."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from poller.config import StreamConfig
from poller.jsonenc import dumps, json_default
from poller.processing.pipeline import Preparer
from poller.records import KINESIS, MappingError, Record
from poller.sinks.coercion import (
    CONVERTERS,
    CoercionError,
    Column,
    coerce_row,
    column_converter,
    row_coercer,
)
from poller.sinks.column_types import mariadb_json_columns, mysql_column, postgres_column, sqlite_column
from poller.sinks.factory import build_sink

# CPU seconds of this process (time.process_time, not the wall clock, which other
# processes on a shared machine stretch): only catches work that grows without bound.
UNBOUNDED = 0.5


def pg(kind: str, typname: str, typmod: int = -1) -> Column:
    return postgres_column(kind, typname, typmod)


def pg_numeric(precision: int, scale: int) -> Column:
    return pg("decimal", "numeric", ((precision << 16) | (scale & 0x7FF)) + 4)


def my(kind: str, data_type: str, column_type: str = "", *, mariadb: bool = True, **kw: Any) -> Column:
    args: dict[str, Any] = {
        "char_max": None,
        "octet_max": None,
        "precision": None,
        "scale": None,
        "fsp": None,
    }
    args.update(kw)
    return mysql_column(kind, data_type, column_type or data_type, mariadb=mariadb, **args)


COLUMNS: dict[str, Column] = {f"default {kind}": Column(kind) for kind in CONVERTERS}
COLUMNS.update(
    {
        "pg int2": pg("int", "int2"),
        "pg int4": pg("int", "int4"),
        "pg int8": pg("int", "int8"),
        "pg float4": pg("float", "float4"),
        "pg float8": pg("float", "float8"),
        "pg numeric": pg("decimal", "numeric"),
        "pg numeric(12,2)": pg_numeric(12, 2),
        "pg numeric(5,2)": pg_numeric(5, 2),
        "pg numeric(2,-3)": pg_numeric(2, -3),
        "pg text": pg("text", "text"),
        "pg varchar(3)": pg("text", "varchar", 3 + 4),
        "pg bpchar(3)": pg("text", "bpchar", 3 + 4),
        "pg json": pg("json_text", "json"),
        "pg jsonb": pg("json_text", "jsonb"),
        "pg bool": pg("bool", "bool"),
        "pg timestamptz": pg("timestamptz", "timestamptz"),
        "pg timestamp": pg("timestamp", "timestamp"),
        "pg date": pg("date", "date"),
        "pg uuid": pg("uuid", "uuid"),
        "pg bytea": pg("bytes", "bytea"),
        "mariadb tinyint": my("int", "tinyint", "tinyint(4)"),
        "mariadb tinyint unsigned": my("int", "tinyint", "tinyint(3) unsigned"),
        "mariadb bigint": my("int", "bigint", "bigint(20)"),
        "mariadb bigint unsigned": my("int", "bigint", "bigint(20) unsigned"),
        "mariadb float": my("float", "float"),
        "mariadb double": my("float", "double"),
        "mariadb decimal(5,2)": my("decimal", "decimal", precision=5, scale=2),
        "mariadb decimal(65,30)": my("decimal", "decimal", precision=65, scale=30),
        "mariadb varchar(3)": my("text", "varchar", char_max=3, octet_max=12),
        "mariadb tinytext": my("text", "tinytext", char_max=255, octet_max=255),
        "mariadb json": my("json_text", "longtext", char_max=2**32 - 1, octet_max=2**32 - 1),
        "mysql json": my("json_text", "json", mariadb=False),
        "mariadb datetime": my("timestamp", "datetime", fsp=0),
        "mysql datetime": my("timestamp", "datetime", fsp=0, mariadb=False),
        "mariadb timestamp(3)": my("timestamp", "timestamp", "timestamp(3)", fsp=3),
        "mysql timestamp": my("timestamp", "timestamp", fsp=0, mariadb=False),
        "mariadb date": my("date", "date"),
        "mariadb tinyblob": my("bytes", "tinyblob", char_max=255, octet_max=255),
        "mariadb enum": my("other", "enum", "enum('a','b')", char_max=1, octet_max=4),
        "sqlite int": sqlite_column("int"),
        "sqlite other": sqlite_column("other"),
        "sqlite float": sqlite_column("float"),
        "sqlite text": sqlite_column("text"),
    }
)
CONVERTERS_BY_NAME = {name: column_converter(col) for name, col in COLUMNS.items()}


# --------------------------------------------------------------------------- values


def nested(depth: int, as_object: bool) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value} if as_object else [value]
    return value


@dataclass(frozen=True)
class Built:
    """A value too big or too deep for hypothesis to print, built in the test."""

    make: Callable[[], Any] = field(repr=False)
    label: str

    def __repr__(self) -> str:
        return self.label


def built(value: Any) -> Any:
    return value.make() if isinstance(value, Built) else value


_NAMED_TEXT = [
    "",
    "abc",
    "NaN",
    "-Infinity",
    "sNaN",
    "1_000",
    "0x10",
    "١٢٣",
    "a\x00b",
    "\x00",
    "\ud800",
    "x\udfff",
    " 12 ",
    "1e3",
    "true",
    "2024-02-30",
    "2024-01-01T00:00:00Z",
    "0001-01-01T00:00:00+14:00",
    "9999-12-31T23:59:59.999999-14:00",
    "10000-01-01",
    "1969-12-31T23:59:59Z",
    "2038-01-19T03:14:08Z",
    "00000000-0000-0000-0000-000000000000",
    "abc   ",
    "9999999999.995",
    "1E+131071",
    "1e-16384",
]


_LONG_NUMBERS = [
    Built(lambda: "1" + "0" * 131071, "'1' + '0' * 131071"),
    Built(lambda: "0." + "1" * 5000, "'0.' + '1' * 5000"),
    Built(lambda: "9" * 4301, "'9' * 4301"),
]


def _numeric_text() -> st.SearchStrategy[str]:
    mantissa = st.sampled_from(["1", "-1", "9.99", "0", "-0.5", "999.995", "123456789012345678901234567890"])
    return st.builds(lambda m, e: f"{m}e{e}", mantissa, st.integers(-2_000_000, 2_000_000))


def _long_text() -> st.SearchStrategy[Built]:
    unit = st.sampled_from(["x", "é", "😀", "\x00", " ", "9", "\ud800"])
    return st.builds(
        lambda u, n: Built(lambda: u * n, f"{u!r} * {n}"),
        unit,
        st.sampled_from([17, 256, 4301, 70_000, 300_000]),
    )


_EDGES = [2**7, 2**8, 2**15, 2**31, 2**32, 2**63, 2**64, 2**70, 10**38, 2**1024]


def _ints() -> st.SearchStrategy[int | Built]:
    near = st.builds(
        lambda e, d, s: s * (e + d), st.sampled_from(_EDGES), st.integers(-2, 1), st.sampled_from([1, -1])
    )
    digits = st.integers(0, 4300).map(lambda n: 10**n - 1)
    return st.integers() | near | digits | st.just(Built(lambda: 10**5000, "10**5000"))


def _decimals() -> st.SearchStrategy[Decimal]:
    exponents = st.builds(
        lambda m, e: Decimal(f"{m}E{e}"),
        st.sampled_from(["1", "-9.5", "0", "12345678901234567890"]),
        st.integers(-(10**15), 10**15),
    )
    return st.decimals(allow_nan=True, allow_infinity=True) | exponents | st.sampled_from([Decimal("sNaN")])


def _scalars() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(),
        st.booleans(),
        _ints(),
        st.floats(),
        st.text(max_size=30),
        st.sampled_from(_NAMED_TEXT),
        st.sampled_from(_LONG_NUMBERS),
        _numeric_text(),
        st.binary(max_size=40),
        _decimals(),
        st.datetimes(
            timezones=st.none()
            | st.builds(timezone, st.timedeltas(-timedelta(hours=23), timedelta(hours=23)))
        ),
        st.dates(),
    )


def json_ish() -> st.SearchStrategy[Any]:
    """What a mapped column can hold: decoded JSON, DynamoDB values, record
    metadata, and every wrong type and size of it."""
    tree = st.recursive(
        _scalars(),
        lambda children: (
            st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
        ),
        max_leaves=10,
    )
    deep = st.builds(
        lambda d, o: Built(lambda: nested(d, o), f"nested({d}, {o})"),
        st.sampled_from([30, 31, 32, 99, 100, 101, 511, 512, 513, 985, 5000, 100_000]),
        st.booleans(),
    )
    return st.one_of(tree, _long_text(), deep)


def _key(v: Any) -> Any:
    """A value as compared between the two coercers (NaN equal to itself)."""
    if isinstance(v, Decimal):
        return repr(v)
    return "nan" if isinstance(v, float) and v != v else v


def outcome(fn: Callable[[], tuple[Any, ...]]) -> tuple[str, Any]:
    start = time.process_time()
    try:
        out = fn()
    except CoercionError as e:
        result: tuple[str, Any] = ("refused", str(e))
    else:
        result = ("ok", [(type(v), id(v) if isinstance(v, list | dict) else _key(v)) for v in out])
    elapsed = time.process_time() - start
    assert elapsed < UNBOUNDED, f"{elapsed:.2f} s"
    return result


FUZZ = settings(
    max_examples=300,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@FUZZ
@given(value=json_ish())
def test_any_value_converts_or_is_refused_quickly(value: Any) -> None:
    value = built(value)
    for name, conv in CONVERTERS_BY_NAME.items():
        row = (1, value)
        convs = [CONVERTERS["int"], conv]
        slow = outcome(lambda: coerce_row(row, convs, ["id", "c"]))  # noqa: B023 - called at once
        fast = outcome(lambda: row_coercer(convs, ["id", "c"])(row))  # noqa: B023
        assert slow == fast, name


# --------------------------------------------------------------------------- examples


def convert(column: str, value: Any) -> Any:
    start = time.process_time()
    try:
        return coerce_row((value,), [CONVERTERS_BY_NAME[column]], ["c"])[0]
    finally:
        assert time.process_time() - start < UNBOUNDED


def refused(column: str, value: Any, match: str | None = None) -> None:
    with pytest.raises(CoercionError, match=match) as info:
        convert(column, value)
    assert str(info.value).startswith("column 'c': ")


@pytest.mark.parametrize("column", ["pg int4", "pg numeric", "mariadb bigint", "mariadb decimal(5,2)"])
@pytest.mark.parametrize(
    "value", ["abc", "1e999999", "-1e999999", "1e1000000", "1e999999999999", "NaN", "sNaN"]
)
def test_numbers_in_text_are_refused_without_expanding_them(column: str, value: str) -> None:
    refused(column, value)


def test_numbers_in_text_still_convert() -> None:
    assert convert("pg int4", "1e3") == 1000
    assert convert("pg int4", " 12 ") == 12
    assert convert("pg int8", "9223372036854775807") == 2**63 - 1
    assert convert("pg numeric", "1E+131071") == Decimal("1E+131071")
    assert convert("pg float8", "1.5") == 1.5
    refused("pg int4", "1.5", "an integer")


@pytest.mark.parametrize(
    ("column", "good", "bad"),
    [
        ("pg int2", [2**15 - 1, -(2**15)], [2**15, -(2**15) - 1]),
        ("pg int4", [2**31 - 1, "-2147483648"], [3_000_000_000, 2**31]),
        ("pg int8", [2**63 - 1, -(2**63), 1e18], [2**63, 2**70, 1e19, "1e19"]),
        ("mariadb tinyint", [127, -128, True], [128, -129]),
        ("mariadb tinyint unsigned", [0, 255], [-1, 256]),
        ("mariadb bigint unsigned", [2**64 - 1], [2**64, -1]),
        ("sqlite int", [2**63 - 1], [2**63, 2**70]),
        ("sqlite other", [2**63 - 1, "x", 1.5], [2**70, -(2**63) - 1]),
    ],
)
def test_integers_outside_the_column_type_are_refused(column: str, good: list[Any], bad: list[Any]) -> None:
    for v in good:
        convert(column, v)
    for v in bad:
        refused(column, v)


def test_numeric_precision_and_scale() -> None:
    assert convert("pg numeric(5,2)", Decimal("999.994")) == Decimal("999.99")
    refused("pg numeric(5,2)", Decimal("999.995"), "at most 3 digits before the point")
    refused("pg numeric(5,2)", 1000)
    assert convert("pg numeric(2,-3)", 99499) == 99000  # rounded to thousands, as the server does
    refused("pg numeric(2,-3)", 99500)
    assert convert("pg numeric(12,2)", "1e-999999") == 0  # rounded to the scale, as the server would
    assert convert("mariadb decimal(5,2)", "1.005") == Decimal("1.01")
    refused("mariadb decimal(5,2)", "999.995")
    assert convert("mariadb decimal(65,30)", Decimal("1E+34")) == Decimal("1E+34")
    refused("mariadb decimal(65,30)", Decimal("1E+35"))


def test_unconstrained_numeric_stays_within_what_asyncpg_encodes() -> None:
    assert convert("pg numeric", "1e-16383") == Decimal("1e-16383")
    refused("pg numeric", "1e-16384", "16383 digits after the point")
    refused("pg numeric", "1.5e-16383")
    refused("pg numeric", "1E+131072", "131072 digits before the point")
    # 131072 digits in the coefficient: asyncpg writes the digit count as int16 and corrupts it.
    refused("pg numeric", "1" + "0" * 131071, "significant digits")


@pytest.mark.parametrize(
    "value", [math.nan, math.inf, -math.inf, Decimal("NaN"), Decimal("-Infinity"), "NaN", "inf"]
)
def test_non_finite_numbers(value: Any) -> None:
    for column in (
        "mariadb double",
        "mariadb float",
        "mariadb decimal(5,2)",
        "pg numeric",
        "pg numeric(12,2)",
    ):
        refused(column, value)
    refused("mariadb enum", value if not isinstance(value, str) else math.nan)
    refused("mariadb json", [value] if not isinstance(value, str) else [math.nan])
    if not isinstance(value, Decimal):
        assert convert("pg float8", value) != 0  # PostgreSQL's float types hold them
        assert convert("pg float4", value) != 0


def test_float_ranges() -> None:
    assert convert("pg float4", 3.4028235e38) == 3.4028235e38  # rounds to FLT_MAX
    refused("pg float4", 3.5e38)
    refused("pg float4", float.fromhex("0x1.ffffffp+127"))
    assert convert("mariadb float", float.fromhex("0x1.fffffep+127"))
    refused("mariadb float", 3.4028235e38)
    refused("pg float8", 10**400)
    refused("pg float8", "1e400", "range of a double")  # a finite number, not infinity spelt out
    assert convert("pg float8", "-Infinity") == -math.inf
    assert convert("mariadb double", 1.7976931348623157e308)


def test_nul_in_postgresql_text_and_json() -> None:
    for column in ("pg text", "pg varchar(3)", "pg json", "pg jsonb"):
        refused(column, "a\x00b", "U\\+0000")
    refused("pg jsonb", {"k": ["\x00"]}, "U\\+0000")
    refused("pg jsonb", {"\x00": 1}, "U\\+0000")
    refused("pg text", b"a\x00b")
    # a backslash and `u0000` are text, not NUL
    assert convert("pg jsonb", {"k": "\\u0000"}) == '{"k":"\\\\u0000"}'
    assert convert("mariadb tinytext", "a\x00b") == "a\x00b"
    assert convert("mariadb json", "a\x00b") == '"a\\u0000b"'


@pytest.mark.parametrize(
    "column", ["pg text", "pg json", "pg bytea", "mariadb tinytext", "mariadb json", "sqlite text"]
)
def test_lone_surrogates_are_refused(column: str) -> None:
    refused(column, "x\ud800")
    refused(column, {"k": "\udfff"} if "json" in column else "\udfff")


def test_text_lengths() -> None:
    assert convert("pg varchar(3)", "abc") == "abc"
    assert convert("pg varchar(3)", "abc   ") == "abc   "  # the server drops excess spaces
    refused("pg varchar(3)", "abcd", "at most 3 characters")
    refused("pg bpchar(3)", "ééé é")
    assert convert("mariadb varchar(3)", "😀😀😀") == "😀😀😀"
    assert convert("mariadb tinytext", "é" * 127) == "é" * 127
    refused("mariadb tinytext", "é" * 128, "at most 255 bytes")
    refused("mariadb tinyblob", b"x" * 256)


def test_timestamps_and_dates_out_of_range() -> None:
    refused("pg timestamptz", 1e20, "years 1 to 9999")
    refused("pg timestamptz", -1e18)
    refused("pg timestamptz", 10**400)
    refused("pg timestamptz", math.nan)
    refused("pg timestamptz", "0001-01-01T00:00:00+14:00", "in UTC")
    refused("pg timestamptz", "9999-12-31T23:59:59.999999-14:00")
    refused("pg timestamp", "0001-01-01T00:00:00+14:00")
    assert convert("pg timestamptz", 1700000000000) == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    refused("mariadb datetime", "0999-12-31T23:59:59Z")
    assert convert("mariadb datetime", "9999-12-31T23:59:59.999999Z")  # MariaDB truncates
    refused("mysql datetime", "9999-12-31T23:59:59.5Z")  # MySQL rounds it to year 10000
    refused("mariadb timestamp(3)", "1970-01-01T00:00:00Z")
    assert convert("mariadb timestamp(3)", "1970-01-01T00:00:01Z") == datetime(1970, 1, 1, 0, 0, 1)
    assert convert("mariadb timestamp(3)", "2038-01-19T03:14:07.999999Z")
    refused("mariadb timestamp(3)", "2038-01-19T03:14:08Z")
    refused("mysql timestamp", "2038-01-19T03:14:07.5Z")
    refused("mariadb date", "0999-01-01")
    assert convert("mariadb date", "9999-12-31") == date(9999, 12, 31)


@pytest.mark.parametrize(("column", "limit"), [("pg jsonb", 512), ("mariadb json", 31), ("mysql json", 100)])
def test_json_nesting_is_bounded(column: str, limit: int) -> None:
    for as_object in (False, True):
        json.loads(convert(column, nested(limit, as_object)))
        refused(column, nested(limit + 1, as_object), f"nested at most {limit} levels")
    refused(column, nested(985, False))  # deeper than the encoder's own recursion in places
    refused(column, nested(100_000, True))
    # Many containers, none deep: the walk that counts levels is linear.
    wide = [{"a": [i]} for i in range(100_000)]
    assert len(convert(column, wide)) > 100_000


def test_json_text_of_deep_values_in_text_columns() -> None:
    refused("pg text", nested(985, False), "nested at most 512 levels")
    assert convert("pg text", nested(512, False)).startswith("[[[")


def test_json_numbers_mysql_cannot_hold() -> None:
    refused("mysql json", [10**400], "double")
    refused("mysql json", {"a": -(10**309)})
    assert convert("mysql json", [10**300, "9" * 400]) == f'[{10**300},"{"9" * 400}"]'
    assert convert("mariadb json", [10**400]) == f"[{10**400}]"
    refused("pg json", [math.nan], "JSON")
    refused("pg json", [10**5000])


def test_conversions_of_a_mebibyte_are_bounded() -> None:
    mib = 1 << 20
    for column in CONVERTERS_BY_NAME:
        for value in ("9" * mib, "1e" + "9" * mib, "é" * (mib // 2), [1] * (mib // 2), b"x" * mib):
            try:
                convert(column, value)
            except CoercionError:
                pass


def test_any_exception_of_a_converter_is_a_coercion_error_naming_its_column() -> None:
    def broken(v: Any) -> Any:
        return {}[v]

    for coerce in (lambda row: coerce_row(row, [broken], ["k"]), row_coercer([broken], ["k"])):
        with pytest.raises(CoercionError, match="column 'k': KeyError: 'x'"):
            coerce(("x",))


def test_json_default_and_dumps_keep_their_output() -> None:
    value = {
        "d": Decimal("1.5"),
        "i": Decimal("10"),
        "b": b"x",
        "s": {2, 1},
        "t": date(2024, 1, 2),
        "n": 1e400,
    }
    assert dumps(value) == '{"d":1.5,"i":10,"b":"eA==","s":[1,2],"t":"2024-01-02","n":Infinity}'
    start = time.process_time()
    assert json_default(Decimal("1E+999999")) == math.inf  # never int() of a huge exponent
    assert time.process_time() - start < UNBOUNDED


def test_mariadb_json_columns_are_found_by_their_check() -> None:
    checks = [
        ("j", "json_valid(`j`)"),
        ("a`b", "json_valid(`a``b`)"),
        ("n", "`n` > 0"),
        ("x", "json_valid(`y`)"),
    ]
    assert mariadb_json_columns(checks) == {"j", "a`b"}


async def test_prepare_turns_a_refused_value_into_a_mapping_error(tmp_path: Path) -> None:
    cfg = StreamConfig.model_validate(
        {
            "name": "coercion",
            "source": {"type": "kinesis", "stream": "s"},
            "sink": {
                "type": "sqlite",
                "dsn": f"sqlite:///{tmp_path / 'db.sqlite'}",
                "table": "t",
                "key": ["id"],
                "columns": {"id": "data.id", "n": "data.n"},
            },
        }
    )
    import sqlite3

    with sqlite3.connect(tmp_path / "db.sqlite") as conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER)")
    sink = build_sink(cfg, None)
    rows = Preparer(cfg, sink).rows
    await sink.open()
    try:

        def record(data: Any) -> Record:
            return Record(source=KINESIS, stream="s", shard_id="shardId-0", sequence_number="1", data=data)

        assert [op.values for op in rows(record({"id": 1, "n": "1e3"}))] == [(1, 1000)]
        for bad in ("1e1000000", 2**70, "abc", [1], math.inf):
            with pytest.raises(MappingError, match="column 'n'"):
                rows(record({"id": 1, "n": bad}))
    finally:
        await sink.close()
