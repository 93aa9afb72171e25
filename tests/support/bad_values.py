"""Values that have broken record pipelines, as a fixed catalogue and as
hypothesis strategies, shared by the containment tests.

Everything here is payload *bytes* or JSON *text fragments* (bytes too), never
Python values: `NaN`, `1e999999`, a lone surrogate escape or a raw NUL byte
cannot be produced by `json.dumps`, and those are the inputs that matter. A
payload is assembled from fragments with `json_object`, so a test knows the
exact bytes it sent and can compare them with what a failure record carries.

Exponents in the strategies stop at 400,000: enough to take seconds of CPU in
an unbounded `int(Decimal(...))` (quadratic in the exponent), little enough
that a failing example shrinks in minutes. The catalogue has the exponents the
issue names (`1e999999`, `1e1000000`), which cost ~40 s each when unbounded.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from hypothesis import strategies as st

__all__ = [
    "BAD_RECORDS",
    "FIELD_FRAGMENTS",
    "PAYLOADS",
    "SLOW_WHEN_UNBOUNDED",
    "BadRecord",
    "column_values",
    "deep_array",
    "deep_object",
    "describe",
    "failure_payload_bytes",
    "fragment",
    "json_object",
    "nasty_fragments",
    "nasty_payloads",
    "sqs_accepts",
]

MiB = 1 << 20


def fragment(value: object) -> bytes:
    """A plain JSON value as a fragment."""
    return json.dumps(value).encode()


def json_object(fields: Sequence[tuple[str, bytes]]) -> bytes:
    """`{"k": <fragment>, ...}` from raw fragments, keys in order (repeats kept)."""
    return b"{" + b", ".join(fragment(k) + b": " + v for k, v in fields) + b"}"


def deep_array(depth: int, leaf: bytes = b"1") -> bytes:
    return b"[" * depth + leaf + b"]" * depth


def deep_object(depth: int, leaf: bytes = b"1") -> bytes:
    return b'{"a": ' * depth + leaf + b"}" * depth


def failure_payload_bytes(payload: str, encoding: str) -> bytes:
    """The bytes a failure record's `payload` stands for, by its `payload_encoding`."""
    if encoding == "utf-8":
        return payload.encode("utf-8")
    if encoding == "base64":
        return base64.b64decode(payload, validate=True)
    raise AssertionError(f"unknown payload_encoding {encoding!r}")


_RUN = re.compile(rb"(.{1,6}?)\1{7,}", re.S)


def describe(payload: bytes, limit: int = 300) -> str:
    """A payload short enough to read in a failure message, exact enough to
    rebuild: runs of a repeated unit are shown once with their count,
    `[{x1000}` for 1000 `[`, `\\ud800{x65536}`; the rest is cut at `limit`."""
    shown = _RUN.sub(lambda m: m.group(1) + b"{x%d}" % (len(m.group(0)) // len(m.group(1))), payload)
    text = repr(shown)
    return f"{len(payload)} B {text if len(text) <= limit else text[: limit - 3] + '...'}"


def sqs_accepts(payload: bytes) -> bool:
    """Whether SQS takes these bytes as a message body: UTF-8 of #x9 #xA #xD
    #x20-#xD7FF #xE000-#xFFFD #x10000-#x10FFFF, and not empty."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return bool(text) and all(
        c in "\t\n\r" or 0x20 <= ord(c) <= 0xD7FF or 0xE000 <= ord(c) <= 0xFFFD or ord(c) >= 0x10000
        for c in text
    )


# --------------------------------------------------------------------------- the catalogue

# Field values, as JSON text, that a typed column has choked on or might.
FIELD_FRAGMENTS: dict[str, bytes] = {
    # numbers Python's json reads, that no column type holds as they are
    "nan": b"NaN",
    "infinity": b"Infinity",
    "minus_infinity": b"-Infinity",
    "exp_overflow": b"1e999999",
    "exp_overflow_negative": b"-1e999999",
    "exp_underflow": b"1e-999999",
    "float_over_max": b"1E400",
    "epoch_1e20": b"1e20",
    "minus_zero": b"-0",
    # integers at and past every column's range
    "int2_over": b"32768",
    "int4_over": b"3000000000",
    "int4_under": b"-2147483649",
    "int8_max": b"9223372036854775807",
    "int8_over": b"9223372036854775808",
    "int8_under": b"-9223372036854775809",
    "uint64_over": b"18446744073709551616",
    "two_pow_70": str(2**70).encode(),
    "digits_40": b"1" + b"0" * 39,
    "digits_4301": b"9" * 4301,  # over Python's int-from-text limit
    # numeric strings
    "str_abc": b'"abc"',
    "str_empty": b'""',
    "str_exp_overflow": b'"1e999999"',
    "str_exp_1000000": b'"1e1000000"',
    "str_exp_negative_overflow": b'"-1e999999"',
    "str_exp_underflow": b'"1e-999999"',
    "str_nan": b'"NaN"',
    "str_snan": b'"sNaN"',
    "str_inf": b'"-Infinity"',
    "str_hex": b'"0x10"',
    "str_underscored": b'"1_000"',
    "str_arabic_digits": '"١٢٣"'.encode(),
    "str_digits_5000": b'"' + b"7" * 5000 + b'"',
    "str_fraction_huge": b'"0.' + b"1" * 5000 + b'"',
    # text a column or a driver refuses
    "str_nul_escape": b'"a\\u0000b"',
    "str_only_nul": b'"\\u0000"',
    "str_lone_high_surrogate": b'"\\ud800"',
    "str_lone_low_surrogate": b'"x\\udfff"',
    "str_surrogate_pair": b'"\\ud83d\\ude00"',
    "str_1mib": b'"' + b"x" * MiB + b'"',
    "str_1mib_multibyte": b'"' + "é".encode() * (MiB // 2) + b'"',
    "str_long_nul": b'"' + b"\\u0000" * 1000 + b'"',
    # timestamps and dates out of every range
    "ts_year_0": b'"0000-01-01T00:00:00Z"',
    "ts_year_10000": b'"10000-01-01T00:00:00Z"',
    "ts_feb_30": b'"2024-02-30T00:00:00Z"',
    "ts_offset_25h": b'"2024-01-01T00:00:00+25:00"',
    "ts_max": b'"9999-12-31T23:59:59.999999-14:00"',
    "ts_min": b'"0001-01-01T00:00:00+14:00"',
    "epoch_negative_huge": b"-1e18",
    # wrong shapes
    "null": b"null",
    "true": b"true",
    "empty_object": b"{}",
    "empty_array": b"[]",
    "object": b'{"a": [1, {"b": null}]}',
    "nested_100": deep_array(100),
    "nested_985": deep_array(985),
    "nested_1000": deep_array(1000),
    "nested_objects_1000": deep_object(1000),
    "nested_100000": deep_array(100_000),
}

# Numeric strings whose exponent takes ~40 s of CPU in an unbounded int(Decimal(v)).
SLOW_WHEN_UNBOUNDED = frozenset({"str_exp_overflow", "str_exp_1000000", "str_exp_negative_overflow"})

# Whole payloads that are not a JSON object.
PAYLOADS: dict[str, bytes] = {
    "empty": b"",
    "whitespace": b" \n\t",
    "invalid_utf8": b'{"id": 1, "c_text": "\xff\xfe"}',
    "overlong_nul": b'{"c_text": "\xc0\x80"}',
    "cesu_surrogate": b'{"c_text": "\xed\xa0\x80"}',
    "raw_nul_in_string": b'{"c_text": "a\x00b"}',
    "raw_nul_alone": b"\x00",
    "bom": b'\xef\xbb\xbf{"c_text": "bom"}',
    "trailing_garbage": b'{"c_text": "x"} x',
    "truncated": b'{"c_text": "x',
    "top_level_nan": b"NaN",
    "top_level_exp": b"1e999999",
    "top_level_string": b'"just a string"',
    "top_level_array": b'[{"id": 1}]',
    "nested_array_1000": deep_array(1000),
    "nested_object_985": deep_object(985),
    "nested_array_100000": deep_array(100_000),
    "digits_5000": b"9" * 5000,
    "long_text_1mib": b"a" * MiB,
}


@dataclass(frozen=True)
class BadRecord:
    """One bad record for a table `id bigint, n int, amount numeric(12,2),
    ts timestamptz/datetime, name text` upserted on `id`.

    `row_ok` names the databases where the value fits, so a row is as right
    as a failure record there. `sqs`: SQS can carry it as a message body."""

    label: str
    build: Callable[[int], bytes] = field(repr=False)
    row_ok: frozenset[str] = frozenset()
    sqs: bool = True

    def payload(self, record_id: int) -> bytes:
        return self.build(record_id)


def _with(record_id: int, key: str, value: bytes, name: str = "bad") -> bytes:
    return json_object([("id", fragment(record_id)), (key, value), ("name", fragment(f"{name}-{record_id}"))])


BAD_RECORDS: list[BadRecord] = [
    BadRecord("n_abc", lambda i: _with(i, "n", b'"abc"')),
    BadRecord("n_int4_overflow", lambda i: _with(i, "n", b"3000000000")),
    BadRecord("n_exp_1000000", lambda i: _with(i, "n", b'"1e1000000"')),
    BadRecord("amount_exp_999999", lambda i: _with(i, "amount", b'"1e999999"')),
    BadRecord("amount_float_1e400", lambda i: _with(i, "amount", b"1e400")),
    BadRecord("ts_epoch_1e20", lambda i: _with(i, "ts", b"1e20")),
    # numeric holds NaN in PostgreSQL (not in MariaDB's DECIMAL)
    BadRecord("amount_nan", lambda i: _with(i, "amount", b"NaN"), row_ok=frozenset({"postgres"})),
    # MariaDB's text holds NUL (PostgreSQL's does not)
    BadRecord(
        "name_nul_escape",
        lambda i: json_object([("id", fragment(i)), ("name", b'"a\\u0000b"')]),
        row_ok=frozenset({"mysql"}),
    ),
    BadRecord("name_lone_surrogate", lambda i: json_object([("id", fragment(i)), ("name", b'"\\ud800"')])),
    BadRecord("raw_nul_byte", lambda i: b'{"id": ' + str(i).encode() + b', "name": "a\x00b"}', sqs=False),
    BadRecord("invalid_utf8", lambda i: b'{"id": ' + str(i).encode() + b', "name": "\xff\xfe"}', sqs=False),
    # The text of a 1000-deep array is a value a text column can hold.
    BadRecord(
        "name_nested_1000",
        lambda i: json_object([("id", fragment(i)), ("name", deep_array(1000))]),
        row_ok=frozenset({"postgres", "mysql"}),
    ),
    BadRecord(
        "id_2_pow_70",
        lambda i: json_object([("id", str(2**70).encode()), ("name", fragment(f"bad-{i}"))]),
    ),
]


# --------------------------------------------------------------------------- strategies

_TEXT = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")

# Values that every column of its type takes in PostgreSQL, MariaDB and SQLite.
_TS_MIN, _TS_MAX = datetime(1970, 1, 2), datetime(2037, 12, 31)
_GOOD: dict[str, st.SearchStrategy[bytes]] = {
    "c_int": st.integers(-(2**31), 2**31 - 1).map(fragment),
    "c_bigint": st.integers(-(2**63), 2**63 - 1).map(fragment),
    "c_smallint": st.integers(-(2**15), 2**15 - 1).map(fragment),
    "c_numeric": st.decimals(-(10**10) + 1, 10**10 - 1, places=2).map(lambda d: str(d).encode()),
    "c_float": st.floats(allow_nan=False, allow_infinity=False, allow_subnormal=False).map(fragment),
    "c_real": st.floats(-(2.0**99), 2.0**99, width=32, allow_subnormal=False).map(fragment),
    "c_text": st.text(_TEXT, max_size=40).map(fragment),
    "c_varchar": st.text(_TEXT, max_size=16).map(fragment),
    "c_bool": st.booleans().map(fragment),
    "c_tstz": st.datetimes(_TS_MIN, _TS_MAX, timezones=st.just(UTC)).map(lambda d: fragment(d.isoformat())),
    "c_ts": st.datetimes(datetime(1000, 1, 1), datetime(9999, 12, 30)).map(lambda d: fragment(d.isoformat())),
    "c_date": st.dates(date(1000, 1, 1), date(9999, 12, 31)).map(lambda d: fragment(d.isoformat())),
    "c_uuid": st.uuids(version=4).map(lambda u: fragment(str(u))),
    "c_bytea": st.text(_TEXT, max_size=40).map(fragment),
}


def _json_values() -> st.SearchStrategy[object]:
    scalars = (
        st.none()
        | st.booleans()
        | st.integers(-(10**20), 10**20)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(_TEXT, max_size=20)
    )
    return st.recursive(
        scalars,
        lambda children: (
            st.lists(children, max_size=4) | st.dictionaries(st.text(_TEXT, max_size=6), children, max_size=4)
        ),
        max_leaves=12,
    )


_GOOD["c_json"] = _json_values().map(fragment)
_GOOD["c_jsonb"] = _GOOD["c_json"]


def column_values(column: str) -> st.SearchStrategy[bytes]:
    """A fragment every database stores in `column` (one of the fuzz table's)."""
    return _GOOD[column]


def _exponent_strings() -> st.SearchStrategy[bytes]:
    mantissa = st.sampled_from(["1", "-1", "9.99", "0.5", "123456789"])
    exponent = st.integers(-400_000, 400_000)
    quoted = st.booleans()
    return st.builds(lambda m, e, q: (f'"{m}e{e}"' if q else f"{m}e{e}").encode(), mantissa, exponent, quoted)


def _huge_ints() -> st.SearchStrategy[bytes]:
    edges = [2**15, 2**31, 2**63, 2**64, 2**70]
    near = st.builds(
        lambda e, d, s: fragment(s * (e + d)),
        st.sampled_from(edges),
        st.integers(-2, 2),
        st.sampled_from([1, -1]),
    )
    digits = st.integers(19, 60).flatmap(lambda n: st.integers(10 ** (n - 1), 10**n - 1)).map(fragment)
    return near | digits


def _long_strings() -> st.SearchStrategy[bytes]:
    unit = st.sampled_from(["x", "é", "😀", "\\u0000", "\\ud800", " "])
    length = st.sampled_from([17, 256, 65_536, 300_000])
    return st.builds(lambda u, n: b'"' + u.encode() * n + b'"', unit, length)


def _deep() -> st.SearchStrategy[bytes]:
    depth = st.sampled_from([50, 500, 984, 985, 1000, 3000, 100_000])
    return st.builds(lambda d, obj: deep_object(d) if obj else deep_array(d), depth, st.booleans())


def _escapes() -> st.SearchStrategy[bytes]:
    """Strings with JSON escapes json.dumps never writes (NUL, lone surrogates)."""
    parts = st.lists(
        st.sampled_from(["a", "\\u0000", "\\ud800", "\\udc00", "\\ud83d\\ude00", "\\n", "é", "\\\\"]),
        min_size=1,
        max_size=6,
    )
    return parts.map(lambda p: ('"' + "".join(p) + '"').encode())


def nasty_fragments() -> st.SearchStrategy[bytes]:
    """Field values of every wrong type and size (the catalogue's cheap entries,
    and generated ones)."""
    cheap = [v for k, v in FIELD_FRAGMENTS.items() if k not in SLOW_WHEN_UNBOUNDED]
    return st.one_of(
        st.sampled_from(cheap),
        _exponent_strings(),
        _huge_ints(),
        _long_strings(),
        _deep(),
        _escapes(),
        _json_values().map(fragment),
        st.sampled_from(list(_GOOD.values())).flatmap(lambda s: s),  # a good value of another column
    )


def nasty_payloads() -> st.SearchStrategy[bytes]:
    """Whole payloads that are not a JSON object with an id."""
    return st.one_of(
        st.sampled_from(list(PAYLOADS.values())),
        st.binary(max_size=64),
        _json_values().map(fragment),
        nasty_fragments(),
    )
