"""What coercion lets through, the database stores: against real PostgreSQL and
MariaDB, every generated value that the real sink's `prepare` accepts for a
column of any supported type commits. A value either is refused by `prepare`
(a MappingError, for that record alone) or is written; never refused at commit
time by the driver or the server, where it would block the batch."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from poller.config import StreamConfig
from poller.processing.pipeline import Preparer
from poller.records import KINESIS, MappingError, Record
from poller.sinks.base import SqlSink, Transaction
from poller.sinks.factory import build_sink
from tests.support import db

pytestmark = pytest.mark.integration

TABLE = "coercion_fuzz"

COLUMNS = {
    "postgres": {
        "c_int2": "int2",
        "c_int4": "int4",
        "c_int8": "int8",
        "c_float4": "float4",
        "c_float8": "float8",
        "c_numeric": "numeric",
        "c_numeric_12_2": "numeric(12,2)",
        "c_numeric_neg": "numeric(3,-2)",
        "c_text": "text",
        "c_varchar": "varchar(8)",
        "c_char": "char(4)",
        "c_bool": "bool",
        "c_tstz": "timestamptz",
        "c_ts": "timestamp",
        "c_date": "date",
        "c_uuid": "uuid",
        "c_bytea": "bytea",
        "c_json": "json",
        "c_jsonb": "jsonb",
    },
    "mysql": {
        "c_tinyint": "TINYINT",
        "c_utinyint": "TINYINT UNSIGNED",
        "c_smallint": "SMALLINT",
        "c_mediumint": "MEDIUMINT",
        "c_int": "INT",
        "c_bigint": "BIGINT",
        "c_ubigint": "BIGINT UNSIGNED",
        "c_float": "FLOAT",
        "c_double": "DOUBLE",
        "c_decimal": "DECIMAL(12,2)",
        "c_decimal_wide": "DECIMAL(65,30)",
        "c_char": "CHAR(4)",
        "c_varchar": "VARCHAR(8)",
        "c_text": "TEXT",
        "c_tinytext": "TINYTEXT",
        "c_json": "JSON",
        "c_datetime": "DATETIME",
        "c_datetime6": "DATETIME(6)",
        "c_timestamp": "TIMESTAMP NULL",
        "c_timestamp3": "TIMESTAMP(3) NULL",
        "c_date": "DATE",
        "c_blob": "BLOB",
        "c_tinyblob": "TINYBLOB",
        "c_varbinary": "VARBINARY(8)",
    },
}


def create_table(kind: str, dsn: str) -> None:
    cols = ", ".join(f"{name} {sql}" for name, sql in COLUMNS[kind].items())
    suffix = " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4" if kind == "mysql" else ""
    db.execute(
        kind,
        dsn,
        f"DROP TABLE IF EXISTS {TABLE}",
        f"CREATE TABLE {TABLE} (id bigint PRIMARY KEY, {cols}){suffix}",
    )


def config(kind: str, dsn: str) -> StreamConfig:
    columns = {"id": "data.id"} | {c: f"data.{c}" for c in COLUMNS[kind]}
    return StreamConfig.model_validate(
        {
            "name": TABLE,
            "source": {"type": "kinesis", "stream": "s"},
            "sink": {"type": kind, "dsn": dsn, "table": TABLE, "key": ["id"], "columns": columns},
        }
    )


# --------------------------------------------------------------------------- values


def nested(depth: int, as_object: bool) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"k": value} if as_object else [value]
    return value


# JSON text Python's decoder reads into values no column holds as they are.
_FRAGMENTS = [
    "NaN",
    "-Infinity",
    "1e400",
    "-1e999999",
    "1e-400",
    "-0",
    '"a\\u0000b"',
    '"\\ud800"',
    '"x\\udfff"',
    '"\\ud83d\\ude00"',
    '"1e999999"',
    '"-1e-999999"',
    '"NaN"',
    '"sNaN"',
    '"Infinity"',
    '"0001-01-01T00:00:00+14:00"',
    '"9999-12-31T23:59:59.999999-14:00"',
    '"1970-01-01T00:00:00Z"',
    '"1970-01-01T00:00:01Z"',
    '"2038-01-19T03:14:07.999999Z"',
    '"2038-01-19T03:14:08Z"',
    '"0999-12-31"',
    '"9999-12-31T23:59:59.999999"',
    '"999.995"',
    '"9999999999.995"',
    '"9999999999.994999"',
    '"99949.9"',
    '"1E+131071"',
    '"1e-16383"',
    '"abc   "',
    '"abcd    "',
]

_EDGES = [2**7, 2**8, 2**15, 2**16, 2**23, 2**24, 2**31, 2**32, 2**63, 2**64, 10**38, 2**70]
_TEXT = st.text(st.characters(codec=None) | st.characters(categories=["Cs"]) | st.sampled_from("\x00 é😀"))


def _numbers() -> st.SearchStrategy[Any]:
    near_edges = st.builds(
        lambda e, d, s: s * (e + d), st.sampled_from(_EDGES), st.integers(-2, 1), st.sampled_from([1, -1])
    )
    as_text = st.builds(
        lambda m, e: f"{m}e{e}",
        st.sampled_from(["1", "-9.99", "0.5", "123456789012345678901234567890", "999.995"]),
        st.integers(-40, 80) | st.integers(-20_000, 200_000),
    )
    decimals = st.decimals(-(10**11), 10**11, places=4).map(str)
    epochs = st.sampled_from(
        [0, 1, 2**31 - 1, 2**31, 1e11, 1e11 + 1, 253402300799, 253402300800, 1e20, -1e18]
    )
    return st.one_of(st.integers(), near_edges, st.floats(), st.floats(width=32), as_text, decimals, epochs)


def _times() -> st.SearchStrategy[str]:
    zones = st.none() | st.builds(timezone, st.timedeltas(-timedelta(hours=23), timedelta(hours=23)))
    stamps = st.datetimes(datetime(1, 1, 2), datetime(9999, 12, 30), timezones=zones).map(datetime.isoformat)
    dates = st.dates().map(lambda d: d.isoformat())
    near = st.builds(
        lambda base, s: (base + timedelta(seconds=s)).isoformat(),
        st.sampled_from([datetime(1970, 1, 1, tzinfo=UTC), datetime(2038, 1, 19, 3, 14, 7, tzinfo=UTC)]),
        st.floats(-2, 2),
    )
    return stamps | dates | near


def _scalars() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(),
        st.booleans(),
        _numbers(),
        _TEXT,
        _times(),
        st.uuids().map(str),
        st.sampled_from(["t", "yes", "0", "tru"]),
        st.binary(max_size=20),  # DynamoDB binary attributes
        st.sampled_from(_FRAGMENTS).map(json.loads),
    )


def values() -> st.SearchStrategy[Any]:
    """Values a decoded record can hold, with every wrong type and size; mostly
    scalars, which is what a column gets."""
    tree = st.recursive(
        _scalars(), lambda c: st.lists(c, max_size=3) | st.dictionaries(_TEXT, c, max_size=3), max_leaves=8
    )
    deep = st.builds(nested, st.sampled_from([30, 31, 32, 99, 100, 101, 512, 513, 985]), st.booleans())
    long_text = st.builds(
        lambda u, n: u * n,
        st.sampled_from(["x", "é", "😀", " ", "9"]),
        st.sampled_from([255, 256, 40_000, 70_000]),
    )
    return st.one_of(_scalars(), _numbers(), _times(), tree, deep, long_text)


def catalogue() -> list[Any]:
    """Values at every edge, each tried in every column before the generated ones."""
    edges = [s * (e + d) for e in _EDGES for d in (-1, 0) for s in (1, -1)]
    floats = [math.nan, math.inf, -math.inf, 5e-324, 1.7976931348623157e308, 3.4028234663852886e38, 3.5e38]
    numbers = ["0." + "1" * 140_000, "1e-16384", "1.5e-16383", "9" * 4000 + ".5"]
    return (
        [json.loads(f) for f in _FRAGMENTS] + edges + floats + numbers + [nested(31, False), nested(32, True)]
    )


# --------------------------------------------------------------------------- the check


def record(n: int, data: dict[str, Any]) -> Record:
    return Record(source=KINESIS, stream="s", shard_id="shardId-0", sequence_number=str(n), data=data)


async def commit_or_explain(sink: SqlSink, ops: list[tuple[str, Any, Any]]) -> None:
    try:
        await sink.commit(Transaction(stream=TABLE, ops=[op for _, _, op in ops]))
    except Exception:
        for column, value, op in ops:  # which value: one at a time
            try:
                await sink.commit(Transaction(stream=TABLE, ops=[op]))
            except Exception as e:
                pytest.fail(f"{column} = {value!r:.200}: prepared, then refused at commit: {e!r:.500}")
        raise


def test_what_prepare_accepts_commits(database: tuple[str, str]) -> None:
    kind, dsn = database
    create_table(kind, dsn)
    sink = build_sink(config(kind, dsn), None)
    assert isinstance(sink, SqlSink)
    rows = Preparer(config(kind, dsn), sink).rows
    loop = asyncio.new_event_loop()
    loop.run_until_complete(sink.open())
    ids = itertools.count(1)
    seen: Counter[str] = Counter()

    def check(value: Any) -> None:
        ops = []
        for column in COLUMNS[kind]:
            n = next(ids)
            try:
                prepared = rows(record(n, {"id": n, column: value}))
            except MappingError:
                seen["refused"] += 1
                continue
            seen["prepared"] += 1
            ops.extend((column, value, op) for op in prepared)
        loop.run_until_complete(commit_or_explain(sink, ops))

    fuzz = settings(
        max_examples=2000,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )(given(value=values())(check))
    try:
        for value in catalogue():
            check(value)
        fuzz()
    finally:
        loop.run_until_complete(sink.close())
        loop.close()
    rows = db.scalar(kind, dsn, f"SELECT count(*) FROM {TABLE}")
    assert rows == seen["prepared"] > 0 and seen["refused"] > 0, seen


def test_nan_and_infinity_commit_only_where_the_column_holds_them(database: tuple[str, str]) -> None:
    """The few non-finite values a database takes are still written there."""
    kind, dsn = database
    create_table(kind, dsn)
    sink = build_sink(config(kind, dsn), None)
    assert isinstance(sink, SqlSink)
    rows = Preparer(config(kind, dsn), sink).rows

    async def run() -> dict[str, bool]:
        await sink.open()
        try:
            stored = {}
            for n, column in enumerate(COLUMNS[kind], start=1):
                try:
                    ops = rows(record(n, {"id": n, column: math.inf}))
                except MappingError:
                    stored[column] = False
                    continue
                await sink.commit(Transaction(stream=TABLE, ops=ops))
                stored[column] = True
            return stored
        finally:
            await sink.close()

    stored = asyncio.run(run())
    holds_infinity = {c for c, ok in stored.items() if ok}
    if kind == "postgres":
        assert holds_infinity == {"c_float4", "c_float8", "c_text", "c_varchar", "c_bytea"}
        assert db.scalar(kind, dsn, f"SELECT c_float8 FROM {TABLE} WHERE c_float8 IS NOT NULL") == math.inf
    else:
        # PyMySQL refuses non-finite floats for every type; text columns get the text `Infinity`.
        assert holds_infinity == {"c_varchar", "c_text", "c_tinytext", "c_blob", "c_tinyblob", "c_varbinary"}
