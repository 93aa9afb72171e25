"""Decoder stages and chains: happy paths, exact unescaping, and DecodeError on
every kind of malformed input."""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import sys
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from poller.processing.decoders import (
    DECODERS,
    build_decoder,
    decode_cloudwatch_logs,
    decode_json,
    decode_kpl,
    decode_mysql_audit,
    decode_none,
    decode_text,
)
from poller.records import DecodeError, Record
from tests.support.payloads import (
    audit_quote,
    aurora_audit_line,
    cloudwatch_payload,
    kpl_aggregate,
)


def rec(data: Any, *, sub_sequence: int = 0) -> Record:
    raw = data if isinstance(data, bytes) else b""
    return Record(
        source="aws:kinesis",
        stream="s",
        shard_id="shardId-000",
        sequence_number="1",
        data=data,
        raw_data=raw,
        sub_sequence=sub_sequence,
        partition_key="outer",
    )


def test_registry_names() -> None:
    assert set(DECODERS) == {"json", "text", "none", "kpl", "cloudwatch_logs", "mysql_audit"}


def test_import_leaves_sys_path_alone() -> None:
    # aws_kinesis_agg edits sys.path on import; a fresh interpreter shows whether we undo it.
    code = (
        "import sys; before = list(sys.path); import poller.processing.decoders; "
        "assert sys.path == before, set(sys.path) ^ set(before)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- json / text / none


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'{"a": 1, "b": ["x", null]}', {"a": 1, "b": ["x", None]}),
        ('{"é": "ü"}', {"é": "ü"}),
        ("\ufeff[1]", [1]),
        (b"\xef\xbb\xbf[1]", [1]),
        (b"42", 42),
    ],
)
def test_json(data: Any, expected: Any) -> None:
    record = rec(data)
    [out] = decode_json(record)
    assert out.data == expected
    assert out.raw_data == record.raw_data


def test_json_passes_parsed_values_through() -> None:
    image = {"id": 1, "name": "x"}
    record = rec(image)
    assert decode_json(record) == [record]
    assert record.data is image


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"[1, ]", "invalid JSON at line 1 column 5: Expecting value"),
        ('{"a": 1}\n{"b"', "invalid JSON at line 2 column 1: Extra data"),
        (b"", "invalid JSON at line 1 column 1: Expecting value"),
        (b'{"a": "\xff"}', "invalid UTF-8 at byte 7: invalid start byte"),
        (b'"\xe2\x82"', "invalid UTF-8 at byte 1: invalid continuation byte"),
        ("[" * 100_000, "invalid JSON: nested too deeply"),
        ("1" * 5000, "invalid JSON: Exceeds the limit"),
    ],
)
def test_json_errors(data: Any, message: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode_json(rec(data))
    assert str(info.value).startswith(message)


def test_json_rejects_utf16() -> None:
    # json.loads(bytes) would sniff UTF-16; the contract is UTF-8.
    with pytest.raises(DecodeError, match="invalid UTF-8"):
        decode_json(rec('{"a": 1}'.encode("utf-16")))


def test_text() -> None:
    [out] = decode_text(rec("naïve\n".encode()))
    assert out.data == "naïve\n"
    record = rec("already text")
    assert decode_text(record) == [record]


def test_text_errors() -> None:
    with pytest.raises(DecodeError, match=r"^invalid UTF-8 at byte 2: invalid start byte$"):
        decode_text(rec(b"ab\xffcd"))
    with pytest.raises(DecodeError, match="expected bytes or str, got dict"):
        decode_text(rec({"a": 1}))


def test_none() -> None:
    record = rec(b"\x00\xff")
    assert decode_none(record) == [record]
    assert record.data == b"\x00\xff"


# --------------------------------------------------------------------------- kpl


def test_kpl_expands_300_user_records() -> None:
    users = [(f"pk-{i % 7}", f"payload {i}".encode() * (i % 5 + 1)) for i in range(300)]
    [blob] = kpl_aggregate(users)
    parent = rec(blob)
    children = decode_kpl(parent)
    assert [(c.partition_key, c.data) for c in children] == users
    assert [c.sub_sequence for c in children] == list(range(300))
    assert all(c.meta["partition_key"] == c.partition_key for c in children)
    assert all(c.raw_data == blob and c.sequence_number == "1" for c in children)
    assert parent.data == blob  # the aggregate itself is left alone


def test_kpl_several_aggregates_when_size_forces_it() -> None:
    users = [(f"pk-{i}", bytes([i % 256]) * 500) for i in range(300)]
    blobs = kpl_aggregate(users, max_size=50_000)
    assert len(blobs) > 1
    decoded = [(c.partition_key, c.data) for blob in blobs for c in decode_kpl(rec(blob))]
    assert decoded == users


def test_kpl_passes_plain_records_through() -> None:
    for data in (b'{"plain": true}', b"", b"\xf3\x89", "text", {"a": 1}):
        record = rec(data)
        assert decode_kpl(record) == [record]
        assert record.data == data
        assert record.sub_sequence == 0


def test_kpl_chained_sub_sequence() -> None:
    [blob] = kpl_aggregate([("a", b"1"), ("b", b"2")])
    children = decode_kpl(rec(blob, sub_sequence=3))
    assert [c.sub_sequence for c in children] == [3_000_000, 3_000_001]


def _frame(body: bytes) -> bytes:
    return b"\xf3\x89\x9a\xc2" + body + hashlib.md5(body).digest()


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"\xf3\x89\x9a\xc2" + b"\x00" * 15, "KPL aggregate truncated"),
        (b"\xf3\x89\x9a\xc2", "KPL aggregate truncated"),
        (_frame(b"\x1a\x05\x08\x00"), "KPL aggregate has invalid protobuf"),
        (_frame(b"\x1a\x03\x1a\x01x"), "KPL aggregate is missing required fields"),
        (_frame(b"\x0a\x01k\x1a\x05\x08\x05\x1a\x01x"), "partition_key_index 5 is out of range"),
        (_frame(b"\x0a\x02\xff\xfe\x1a\x05\x08\x00\x1a\x01x"), "is not valid UTF-8"),
    ],
)
def test_kpl_corrupt(blob: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode_kpl(rec(blob))


def test_kpl_truncated_and_flipped() -> None:
    [blob] = kpl_aggregate([(f"k{i}", b"x" * 100) for i in range(300)])
    for bad in (blob[: len(blob) // 2], blob[:-1], blob[:100] + b"\x00" + blob[101:]):
        with pytest.raises(DecodeError, match="fails its MD5 check"):
            decode_kpl(rec(bad))


# --------------------------------------------------------------------------- cloudwatch_logs


def test_cloudwatch_data_message() -> None:
    payload = cloudwatch_payload(["first", "second, with comma"], log_stream="inst-1")
    children = decode_cloudwatch_logs(rec(payload))
    assert [c.data for c in children] == ["first", "second, with comma"]
    assert [c.sub_sequence for c in children] == [0, 1]
    meta = children[1].meta
    assert meta["log_group"] == "/aws/rds/cluster/c/audit"
    assert meta["log_stream"] == "inst-1"
    assert meta["owner"] == "123456789012"
    assert meta["log_timestamp"] == 1_503_595_956_001
    assert len(meta["log_event_id"]) == 56
    assert children[0].partition_key == "outer"


def test_cloudwatch_control_message_is_skipped() -> None:
    assert decode_cloudwatch_logs(rec(cloudwatch_payload([], control=True))) == []


def _gz(doc: Any) -> bytes:
    return gzip.compress(json.dumps(doc).encode())


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b'{"messageType": "DATA_MESSAGE"}', "not valid gzip"),
        (cloudwatch_payload(["x"])[:-10], "truncated gzip"),
        (cloudwatch_payload(["x"]) + b"junk", "data after the gzip stream"),
        (gzip.compress(b"{not json"), "CloudWatch Logs payload: invalid JSON at line 1 column 2"),
        (gzip.compress(b"\xff"), "CloudWatch Logs payload: invalid UTF-8 at byte 0"),
        (_gz([1]), "is a JSON list, not an object"),
        (_gz({"messageType": "OTHER"}), "unknown messageType 'OTHER'"),
        (_gz({"messageType": "DATA_MESSAGE", "owner": "o"}), "logGroup must be str, got missing"),
        (
            _gz(
                {
                    "messageType": "DATA_MESSAGE",
                    "owner": "o",
                    "logGroup": "g",
                    "logStream": "s",
                    "logEvents": [{"id": "1", "timestamp": "soon", "message": "m"}],
                }
            ),
            "CloudWatch Logs event 0: timestamp must be int, got str",
        ),
    ],
)
def test_cloudwatch_errors(payload: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode_cloudwatch_logs(rec(payload))


def test_cloudwatch_requires_bytes() -> None:
    with pytest.raises(DecodeError, match="must be gzip bytes, got str"):
        decode_cloudwatch_logs(rec("H4sI"))


# --------------------------------------------------------------------------- mysql_audit


def audit(line: str | bytes) -> dict[str, Any]:
    [out] = decode_mysql_audit(rec(line))
    result: dict[str, Any] = out.data
    return result


def test_audit_aurora_query() -> None:
    line = "1503595956000000,ip-10-0-0-1,admin,10.0.0.2,26,1135,QUERY,mydb,'SELECT 1',0"
    assert audit(line) == {
        "timestamp": "2017-08-24T17:32:36.000000+00:00",
        "serverhost": "ip-10-0-0-1",
        "username": "admin",
        "host": "10.0.0.2",
        "connection_id": 26,
        "query_id": 1135,
        "operation": "QUERY",
        "database": "mydb",
        "sql": "SELECT 1",
        "retcode": 0,
    }


def test_audit_bytes_and_microseconds_and_connect() -> None:
    row = audit(b"1503595956123456,h,rdsadmin,localhost,5,0,CONNECT,,,1045\n")
    assert row["timestamp"] == "2017-08-24T17:32:36.123456+00:00"
    assert row["sql"] == ""
    assert row["database"] == ""
    assert row["retcode"] == 1045


def test_audit_mariadb_formats() -> None:
    row = audit("20171002 17:22:37,db1,root,localhost,1,4,QUERY,,'select @@version',0")
    assert row["timestamp"] == "2017-10-02T17:22:37+00:00"
    assert row["sql"] == "select @@version"
    # table events: unquoted table name, empty retcode
    row = audit("20130619 11:30:00,localhost.localdomain,root,localhost,1,4,READ,mysql,user,")
    assert (row["sql"], row["retcode"]) == ("user", None)
    # newer MariaDB escapes whitespace controls
    row = audit(r"20171002 17:22:37,h,u,l,1,4,QUERY,d,'a\nb\tc\\n\'',0")
    assert row["sql"] == "a\nb\tc\\n'"


def test_audit_rds_mysql8_extra_fields() -> None:
    assert audit("20230612 15:02:17,h,u,l,9,0,CONNECT,,,0,TCP/IP")["retcode"] == 0
    assert audit("20230612 15:02:17,h,u,l,9,3,QUERY,d,'SELECT 1',0,,")["sql"] == "SELECT 1"


TRICKY_SQL = [
    "INSERT INTO t (a, b) VALUES ('x,y', 'it''s'), ('O\\'Brien', 'C:\\\\dir')",
    "SELECT 'a'',''b', \"q,\" FROM t WHERE c = ',' -- trailing ',0",
    "UPDATE t\nSET a = 'line1\nline2',\r\n    b = 2\nWHERE id IN (1,2,3)",
    "'",
    "\\",
    "',0",
    "",
]


@pytest.mark.parametrize("sql", TRICKY_SQL)
def test_audit_unescapes_exactly(sql: str) -> None:
    row = audit(aurora_audit_line(sql, connection_id=3, query_id=9, retcode=1064))
    assert row["sql"] == sql
    assert (row["connection_id"], row["query_id"], row["retcode"]) == (3, 9, 1064)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("1503595956000000,h,u,l,1,2,QUERY,d,'x'", "expected 10 fields, got 9"),
        ("1503595956000000,h,u,l,1,2,QUERY", "expected 10 fields, got 7"),
        ("1503595956000000,h,u,l,1,2,QUERY,d,x,0,a,b,c", "expected 10 fields, got 13"),
        ("1503595956000000,h,u,l,1,2,QUERY,d,'SELECT 'x'',0", "unexpected 'x' after the quoted"),
        ("1503595956000000,h,u,l,1,2,QUERY,d,'SELECT 1,0", "is unterminated"),
        ("1503595956000000,h,u,l,1,2,QUERY,d,'SELECT \\", "is unterminated"),
        ("1503595956000000,h,a,b,l,1,2,QUERY,d,'x',0", "connection_id is not an integer: 'l'"),
        ("1503595956000000,h,u,l,1,+2,QUERY,d,'x',0", "query_id is not an integer"),
        ("1503595956000000,h,u,l,1,2,QUERY,d,'x',ok", "retcode is not an integer"),
        ("1503595956,h,u,l,1,2,QUERY,d,'x',0", "bad timestamp '1503595956'"),
        ("20171302 17:22:37,h,u,l,1,2,QUERY,d,'x',0", "month must be in 1..12"),
        ("2017-10-02 17:22:37,h,u,l,1,2,QUERY,d,'x',0", "bad timestamp"),
    ],
)
def test_audit_errors(line: str, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        audit(line)


def test_audit_rejects_other_types() -> None:
    with pytest.raises(DecodeError, match="expected str or bytes, got dict"):
        decode_mysql_audit(rec({"a": 1}))
    with pytest.raises(DecodeError, match="invalid UTF-8"):
        decode_mysql_audit(rec(b"\xff,h"))


def test_audit_quote_helper() -> None:
    assert audit_quote("it's C:\\x") == "'it\\'s C:\\\\x'"


# --------------------------------------------------------------------------- chains


def test_chain_cloudwatch_mysql_audit() -> None:
    decoder = build_decoder(["cloudwatch_logs", "mysql_audit"])
    assert decoder(rec(cloudwatch_payload([], control=True))) == []

    lines = [
        aurora_audit_line(None, operation="CONNECT", database="", query_id=0),
        aurora_audit_line(TRICKY_SQL[0], query_id=8),
        aurora_audit_line(TRICKY_SQL[2], query_id=9),
        aurora_audit_line(None, operation="DISCONNECT", database="", query_id=0),
    ]
    out = decoder(rec(cloudwatch_payload(lines)))
    assert [r.sub_sequence for r in out] == [0, 1, 2, 3]
    assert [r.data["operation"] for r in out] == ["CONNECT", "QUERY", "QUERY", "DISCONNECT"]
    assert out[1].data["sql"] == ("INSERT INTO t (a, b) VALUES ('x,y', 'it''s'), ('O\\'Brien', 'C:\\\\dir')")
    assert out[2].data["sql"] == "UPDATE t\nSET a = 'line1\nline2',\r\n    b = 2\nWHERE id IN (1,2,3)"
    assert out[2].data["timestamp"] == "2017-08-24T17:32:36.000000+00:00"
    assert out[2].meta["log_group"] == "/aws/rds/cluster/c/audit"
    assert out[2].normalized()["log_stream"] == "s"


def test_chain_names_the_failing_sub_record() -> None:
    decoder = build_decoder(["cloudwatch_logs", "mysql_audit"])
    payload = cloudwatch_payload([aurora_audit_line("SELECT 1"), "garbage"])
    with pytest.raises(DecodeError, match=r"^sub-record 1: MySQL audit line: expected 10"):
        decoder(rec(payload))


def test_chain_kpl_json() -> None:
    users = [(f"user-{i}", json.dumps({"n": i}).encode()) for i in range(300)]
    [blob] = kpl_aggregate(users)
    out = build_decoder(["kpl", "json"])(rec(blob))
    assert [r.data for r in out] == [{"n": i} for i in range(300)]
    assert [r.partition_key for r in out] == [f"user-{i}" for i in range(300)]
    # a plain record goes through both stages as itself
    plain = rec(b'{"n": -1}')
    assert build_decoder(["kpl", "json"])(plain) == [plain]
    assert plain.data == {"n": -1}


def test_chain_two_expansions_number_sub_records() -> None:
    inner = [cloudwatch_payload(["a", "b"]), cloudwatch_payload(["c"])]
    [blob] = kpl_aggregate([("k", inner[0]), ("k", inner[1])])
    out = build_decoder(["kpl", "cloudwatch_logs"])(rec(blob))
    assert [(r.data, r.sub_sequence) for r in out] == [("a", 0), ("b", 1), ("c", 1_000_000)]


def test_build_decoder_edges() -> None:
    record = rec(b"x")
    assert build_decoder([])(record) == [record]
    assert build_decoder(["none", "none"])(record) == [record]
    assert build_decoder(["text"]) is DECODERS["text"]
    with pytest.raises(ValueError, match="unknown decoder 'yaml'"):
        build_decoder(["json", "yaml"])


# --------------------------------------------------------------------------- any input
#
# Whatever the bytes, a decoder returns records or raises DecodeError, and soon:
# anything else would stop a lane, and an unbounded decode would stall the loop.

FUZZ = settings(
    max_examples=150,
    derandomize=True,
    deadline=None,  # timing is asserted below with a bound that only catches "unbounded"
    suppress_health_check=[HealthCheck.too_slow],
)
SECONDS_PER_RECORD = 2.0

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=30,
)
log_event = (
    st.fixed_dictionaries(
        {"id": st.text(max_size=5), "timestamp": st.integers(), "message": st.text(max_size=30)}
    )
    | json_values
)
cloudwatch_docs = (
    st.fixed_dictionaries(
        {
            "messageType": st.sampled_from(["DATA_MESSAGE", "CONTROL_MESSAGE", "OTHER"]),
            "owner": st.text(max_size=5),
            "logGroup": st.text(max_size=5),
            "logStream": st.text(max_size=5),
            "logEvents": st.lists(log_event, max_size=8),
        },
        optional={"extra": json_values},
    )
    | json_values
)
audit_lines = st.lists(
    st.sampled_from(
        ["'", "\\", ",", "0", "7", "-", " ", "a", "\n", "QUERY", "20171002 17:22:37", "1503595956000000"]
    ),
    max_size=40,
).map("".join)


def _kpl_mutations(data: st.DataObject) -> bytes:
    """A real aggregate with its protobuf body changed, framed with a fresh MD5 so
    the change reaches the protobuf parser."""
    users = data.draw(st.lists(st.tuples(st.text(max_size=4), st.binary(max_size=8)), min_size=1, max_size=6))
    [blob] = kpl_aggregate(users)
    body = bytearray(blob[4:-16])
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(body) - 1))
        body[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(body)))
    return _frame(bytes(body[:cut] if data.draw(st.booleans()) else body))


def payloads(data: st.DataObject) -> bytes:
    kind = data.draw(st.sampled_from(["bytes", "json", "gzip", "kpl", "audit"]))
    if kind == "bytes":
        return data.draw(st.binary(max_size=200))
    if kind == "json":
        return json.dumps(data.draw(json_values)).encode()
    if kind == "gzip":
        return gzip.compress(json.dumps(data.draw(cloudwatch_docs)).encode())
    if kind == "kpl":
        return _kpl_mutations(data)
    return data.draw(audit_lines).encode()


@pytest.mark.parametrize(
    "decoders",
    [
        ["json"],
        ["text"],
        ["kpl"],
        ["cloudwatch_logs"],
        ["mysql_audit"],
        ["kpl", "json"],
        ["kpl", "cloudwatch_logs"],
        ["cloudwatch_logs", "mysql_audit"],
        ["cloudwatch_logs", "json"],
    ],
    ids="+".join,
)
@FUZZ
@given(data=st.data())
def test_any_payload_decodes_or_is_a_decode_error(decoders: list[str], data: st.DataObject) -> None:
    payload = payloads(data)
    decode = build_decoder(decoders)
    started = time.process_time()
    try:
        out = decode(rec(payload))
    except DecodeError as exc:
        assert str(exc)  # a reason the failure destination can show
    else:
        assert isinstance(out, list) and all(isinstance(r, Record) for r in out)
    assert time.process_time() - started < SECONDS_PER_RECORD


def test_unforeseen_exceptions_become_decode_errors() -> None:
    # int() refuses more than 4300 digits with ValueError; the parser's own checks pass it.
    line = "1503595956000000,h,u,l," + "9" * 5000 + ",1,QUERY,d,'x',0"
    with pytest.raises(DecodeError, match=r"^MySQL audit line: cannot decode \(ValueError: Exceeds"):
        decode_mysql_audit(rec(line))
