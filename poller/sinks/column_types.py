"""What each database's column types hold, as `coercion.Column`s.

A sink reads its table's column types from the catalogue once, at open, and
gets one `Column` per mapped column here: the kind of value its driver binds,
and every limit of that type which the driver or the server would otherwise
refuse at commit time (ranges, precision, NUL, nesting...). The table of these
limits per dialect is in docs/architecture.md ("What coercion refuses").
"""

from __future__ import annotations

import math
from datetime import date, datetime

from poller.sinks.coercion import Column

INT16 = (-(2**15), 2**15 - 1)
INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
FLT_MAX = float.fromhex("0x1.fffffep+127")

# ---------------------------------------------------------------------------- PostgreSQL

_PG_INTS = {"int2": INT16, "int4": INT32, "int8": INT64}
# asyncpg casts a double to float: anything that rounds to a finite float4 is sent.
_PG_FLOAT4_MAX = math.nextafter(float.fromhex("0x1.ffffffp+127"), 0.0)
# asyncpg's binary numeric: dscale and digit count are int16 in the wire format
# (a longer value is corrupted, not refused), the server's own limit is 131072
# digits before the point.
_PG_NUMERIC_SCALE = 16383
_PG_NUMERIC_DIGITS = 131064
_PG_NUMERIC_INT_DIGITS = 131072
_PG_VARHDRSZ = 4


def postgres_column(kind: str, typname: str, typmod: int) -> Column:
    """`kind` for a column of type `typname` (pg_type) with `atttypmod`."""
    if typname in _PG_INTS:
        return Column(kind, nul=False, ints=_PG_INTS[typname])
    if typname == "float4":
        return Column(kind, nul=False, float_max=_PG_FLOAT4_MAX)
    if typname == "numeric":
        # PostgreSQL 14 takes ±Infinity and every version NaN; numbers only, for all.
        if typmod < _PG_VARHDRSZ:
            return Column(
                kind,
                nul=False,
                finite=True,
                int_digits=_PG_NUMERIC_INT_DIGITS,
                raw_digits=_PG_NUMERIC_DIGITS,
                raw_exponent=-_PG_NUMERIC_SCALE,
            )
        precision = ((typmod - _PG_VARHDRSZ) >> 16) & 0xFFFF
        scale = (((typmod - _PG_VARHDRSZ) & 0x7FF) ^ 1024) - 1024  # numeric(p, s) with s < 0 (PG 15)
        return Column(
            kind,
            nul=False,
            finite=True,
            int_digits=precision - scale,
            scale=scale,
            raw_digits=1000,
            raw_exponent=-_PG_NUMERIC_SCALE,
        )
    if typname in ("varchar", "bpchar") and typmod >= _PG_VARHDRSZ:
        return Column(kind, nul=False, max_chars=typmod - _PG_VARHDRSZ)
    # Text, and types staged as text (json, jsonb, arrays, enums...): never U+0000.
    return Column(kind, nul=False)


# ---------------------------------------------------------------------------- MySQL / MariaDB

_MYSQL_INTS = {"tinyint": 8, "smallint": 16, "mediumint": 24, "int": 32, "bigint": 64}
_MYSQL_BYTE_LIMITED = {"tinytext", "text", "mediumtext", "longtext", "tinyblob", "blob", "mediumblob"}
_MYSQL_BYTE_LIMITED |= {"longblob", "binary", "varbinary"}
MARIADB_JSON_DEPTH = 31  # json_valid() refuses 32 nested arrays/objects (MariaDB 10.11)
MYSQL_JSON_DEPTH = 100  # ER_JSON_DOCUMENT_TOO_DEEP beyond 100 (MySQL 8)


def _top_microsecond(fsp: int | None, mariadb: bool) -> int:
    """The last microsecond of a second that stays in that second in the column:
    MariaDB truncates extra fractional digits, MySQL rounds them."""
    if mariadb or fsp is None or fsp >= 6:
        return 999_999
    half_unit = (500_000, 50_000, 5_000, 500, 50, 5)[fsp]  # microseconds, by fractional digits
    return 1_000_000 - half_unit - 1


def mysql_column(
    kind: str,
    data_type: str,
    column_type: str,
    *,
    char_max: int | None,
    octet_max: int | None,
    precision: int | None,
    scale: int | None,
    fsp: int | None,
    mariadb: bool,
) -> Column:
    """`kind` for a column as information_schema.COLUMNS describes it. PyMySQL
    refuses NaN and ±inf for every type, so every column is `finite`."""
    if data_type in _MYSQL_INTS:
        bits = _MYSQL_INTS[data_type]
        unsigned = "unsigned" in column_type.lower()
        ints = (0, 2**bits - 1) if unsigned else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
        return Column(kind, finite=True, ints=ints)
    if data_type == "float":
        return Column(kind, finite=True, float_max=FLT_MAX)
    if data_type == "decimal" and precision is not None and scale is not None:
        # Always rounded here to the scale as the server would (half away from zero),
        # so PyMySQL never writes out a long literal.
        return Column(kind, finite=True, int_digits=precision - scale, scale=scale, raw_digits=0)
    if data_type in ("char", "varchar"):
        return Column(kind, finite=True, max_chars=char_max)
    if kind == "json_text":
        depth = MARIADB_JSON_DEPTH if mariadb else MYSQL_JSON_DEPTH
        return Column(kind, finite=True, json_depth=depth, json_double=not mariadb)
    if data_type in _MYSQL_BYTE_LIMITED:
        return Column(kind, finite=True, max_bytes=octet_max)
    top = _top_microsecond(fsp, mariadb)
    if data_type == "datetime":
        return Column(
            kind, finite=True, times=(datetime(1000, 1, 1), datetime(9999, 12, 31, 23, 59, 59, top))
        )
    if data_type == "timestamp":
        # 1970-01-01 00:00:00 itself is the "zero" timestamp, refused in strict mode.
        return Column(
            kind, finite=True, times=(datetime(1970, 1, 1, 0, 0, 1), datetime(2038, 1, 19, 3, 14, 7, top))
        )
    if data_type == "date":
        return Column(kind, finite=True, dates=(date(1000, 1, 1), date(9999, 12, 31)))
    return Column(kind, finite=True)


def mariadb_json_columns(checks: list[tuple[str, str]]) -> set[str]:
    """Columns declared JSON in MariaDB: information_schema shows them as LONGTEXT,
    and the type is a column CHECK `json_valid(`name`)` (name, clause pairs)."""
    out = set()
    for name, clause in checks:
        quoted = "`" + name.replace("`", "``") + "`"
        if clause.lower() == f"json_valid({quoted})".lower():
            out.add(name)
    return out


# ---------------------------------------------------------------------------- SQLite


def sqlite_column(kind: str) -> Column:
    """The sqlite3 module binds integers as 64-bit and refuses larger ones."""
    if kind in ("int", "other"):
        return Column(kind, ints=INT64)
    return Column(kind)
