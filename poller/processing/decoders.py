"""Payload decoders: raw record bytes → the value the `columns` expressions read.

A decoder takes a `Record` whose `data` is the current payload and returns the
records to go on with: usually `[record]`, possibly several (KPL aggregates,
CloudWatch Logs batches), possibly none (CloudWatch control messages). Every
failure is a `DecodeError` with a one-line reason, so the record is isolated and
sent to the failure destination instead of stopping the shard: a decoder raises
nothing else, whatever the payload (an unforeseen exception is wrapped).

What one source record may expand into is bounded (`LimitsConfig`): records per
expanding stage, bytes inflated across the whole chain, JSON nesting. Each bound
is checked before the work it guards is done (the gzip stream is inflated in
pieces up to the bound, a KPL aggregate's user records are counted before any
is built, a CloudWatch document's JSON values before it is parsed), so a
hostile payload costs at most the bound, never what it claims to hold.

1:1 stages replace `data` on the record they are given rather than copying the
record: they run on every record, and a `Record` copy per stage would be most of
their cost. A caller that re-decodes a record after a failure must start again
from `raw_data` (which no decoder touches). Expanding stages leave their input
record unchanged and return new records made with `Record.child`.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import json.scanner
import re
import sys
import zlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf.message import DecodeError as ProtobufDecodeError

from poller.config import LimitsConfig
from poller.records import DecodeError, Record

Decoder = Callable[[Record], list[Record]]

DEFAULT_LIMITS = LimitsConfig()

# Children of an already-expanded record are numbered parent * _SUB_SEQUENCE_BASE + i,
# so positions stay unique and ordered across two levels of expansion.
_SUB_SEQUENCE_BASE = 1_000_000

_JSON_DECODE = json.JSONDecoder().decode
# The decoder's own scanner: `decode` runs it after a whitespace regex and checks
# the rest with another; for a payload that starts with its value and ends with
# it, the scanner alone gives the same value (a third less time per record).
_JSON_SCAN = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]


class _Budget:
    """What one source record may still expand into, shared by the stages of a chain.

    `records` is refilled at each expanding stage (the limit is per stage);
    `inflated` is spent across the whole chain, so a KPL aggregate of gzip
    bombs cannot multiply the bound by its user records.
    """

    __slots__ = ("inflated", "limits", "records")

    def __init__(self, limits: LimitsConfig) -> None:
        self.limits = limits
        self.records = limits.max_records_per_payload
        self.inflated = limits.max_inflated_bytes

    def take_records(self, count: int, what: str) -> None:
        if count > self.records:
            cap = self.limits.max_records_per_payload
            left = "" if self.records == cap else f" ({self.records} left for this record)"
            raise DecodeError(
                f"{what}: {count} of them, more than limits.max_records_per_payload={cap}{left}"
            )
        self.records -= count


Expander = Callable[[Record, _Budget], list[Record]]


def _unexpected(what: str, exc: Exception) -> DecodeError:
    """An exception no check foresaw, raised by the payload's content: still that record's error."""
    return DecodeError(f"{what}: cannot decode ({type(exc).__name__}: {str(exc)[:200]})")


def _sub_sequence_base(record: Record, count: int) -> int:
    if not record.sub_sequence:
        return 0
    if count > _SUB_SEQUENCE_BASE:
        raise DecodeError(
            f"cannot number {count} sub-records of sub-record {record.sub_sequence}: "
            f"at most {_SUB_SEQUENCE_BASE} fit"
        )
    return record.sub_sequence * _SUB_SEQUENCE_BASE


def _utf8(data: bytes | bytearray) -> str:
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        raise DecodeError(f"invalid UTF-8 at byte {exc.start}: {exc.reason}") from exc


def _json(text: str) -> Any:
    try:
        value, end = _JSON_SCAN(text, 0)
        if end == len(text):
            return value
    except (StopIteration, ValueError, RecursionError):
        pass  # not a value at the start, or invalid: the full decoder below reports it
    try:
        return _JSON_DECODE(text)
    except json.JSONDecodeError as exc:
        # RFC 8259 §8.1 lets parsers ignore a BOM; json.loads(bytes) does. Checked only
        # after a failure so the common case pays nothing.
        if text.startswith("\ufeff"):
            return _json(text[1:])
        raise DecodeError(f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
    except RecursionError as exc:
        raise DecodeError("invalid JSON: nested too deeply") from exc
    except ValueError as exc:  # e.g. an integer literal over the 4300-digit limit
        raise DecodeError(f"invalid JSON: {exc}") from exc


def _nested_deeper(value: dict[str, Any] | list[Any], limit: int) -> bool:
    """Whether containers nest more than `limit` levels. Level by level, without
    recursion: a deep value must not exhaust the stack that is checking it."""
    level: list[Any] = [value]
    for _ in range(limit):
        below: list[Any] = []
        for container in level:
            for item in container.values() if type(container) is dict else container:
                if type(item) is dict or type(item) is list:  # parsed JSON: exact types
                    below.append(item)
        if not below:
            return False
        level = below
    return True


# --------------------------------------------------------------------------- json, text, none


def json_decoder(max_depth: int) -> Decoder:
    """Parse JSON; a value that is already parsed (DynamoDB image) passes through.

    Nesting deeper than `max_depth` is refused: later stages walk values
    recursively. A text of n characters nests n / 2 levels at most, and no more
    levels than it has opening brackets, so most records skip the walk.
    """
    short = 2 * max_depth

    def decode_json(record: Record) -> list[Record]:
        data = record.data
        try:
            if isinstance(data, bytes | bytearray):
                text = _utf8(data)
            elif isinstance(data, str):
                text = data
            else:
                return [record]
            value = _json(text)
            if (
                len(text) > short
                and isinstance(value, dict | list)
                and text.count("[") + text.count("{") > max_depth
                and _nested_deeper(value, max_depth)
            ):
                raise DecodeError(f"JSON nests deeper than limits.max_json_depth={max_depth}")
        except DecodeError:
            raise
        except Exception as exc:
            raise _unexpected("JSON", exc) from exc
        record.data = value
        return [record]

    return decode_json


decode_json = json_decoder(DEFAULT_LIMITS.max_json_depth)


def decode_text(record: Record) -> list[Record]:
    """UTF-8 bytes → str, strictly: a lossy decode would write corrupted rows silently."""
    data = record.data
    if isinstance(data, str):
        return [record]
    if isinstance(data, bytes | bytearray):
        record.data = _utf8(data)
        return [record]
    raise DecodeError(f"text: expected bytes or str, got {type(data).__name__}")


def decode_none(record: Record) -> list[Record]:
    return [record]


# --------------------------------------------------------------------------- kpl


def _load_kpl_schema() -> tuple[Any, bytes, int]:
    """aws_kinesis_agg's protobuf schema and framing constants.

    Its `messages_pb2` imports `config_pb2` as a top-level module, which only
    works because `deaggregator` first puts the package directory (and
    site-packages) at the front of `sys.path`. We import it that way, then undo
    the `sys.path` change so it cannot shadow other modules for the process.
    """
    saved = sys.path[:]
    try:
        deaggregator = importlib.import_module("aws_kinesis_agg.deaggregator")
    finally:
        sys.path[:] = saved
    agg = importlib.import_module("aws_kinesis_agg")
    return deaggregator.messages_pb2.AggregatedRecord, agg.MAGIC, agg.DIGEST_SIZE


_AggregatedRecord, _KPL_MAGIC, _KPL_DIGEST_SIZE = _load_kpl_schema()


def _expand_kpl(record: Record, budget: _Budget) -> list[Record]:
    """Expand a KPL aggregate into its user records; anything else passes through.

    The framing check and the walk over the protobuf are done here rather than with
    `aws_kinesis_agg.deaggregator`: on a truncated blob, an MD5 mismatch or bad
    protobuf it silently returns the aggregate as if it were a plain record (we
    would write the binary blob as data), and on a partition-key index out of
    range it prints to stderr and drops the record's remaining user records. It
    also base64-encodes every user record. Only its schema and constants are used.
    """
    data = record.data
    if not isinstance(data, bytes | bytearray) or not data.startswith(_KPL_MAGIC):
        return [record]
    try:
        return _kpl_children(record, data, budget)
    except DecodeError:
        raise
    except Exception as exc:
        raise _unexpected("KPL aggregate", exc) from exc


def _kpl_children(record: Record, data: bytes | bytearray, budget: _Budget) -> list[Record]:
    size = len(data)
    digest_at = size - _KPL_DIGEST_SIZE
    if digest_at < len(_KPL_MAGIC):
        raise DecodeError(f"KPL aggregate truncated: {size} bytes cannot hold the MD5 digest")
    body = bytes(data[len(_KPL_MAGIC) : digest_at])
    if hashlib.md5(body).digest() != data[digest_at:]:
        raise DecodeError(f"KPL aggregate of {size} bytes fails its MD5 check (truncated or corrupt)")
    aggregate = _AggregatedRecord()
    try:
        aggregate.ParseFromString(body)
    except ProtobufDecodeError as exc:
        raise DecodeError(f"KPL aggregate has invalid protobuf: {exc}") from exc
    # proto2 required fields are not enforced by ParseFromString.
    if not aggregate.IsInitialized():
        missing = ", ".join(aggregate.FindInitializationErrors())
        raise DecodeError(f"KPL aggregate is missing required fields: {missing}")
    users = aggregate.records
    # Counted before any user record becomes a `Record` (the parse itself stays in
    # the protobuf runtime's arena, proportional to the aggregate's bytes).
    budget.take_records(len(users), "KPL aggregate user records")
    keys = list(aggregate.partition_key_table)
    for key in keys:
        if not isinstance(key, str):  # upb hands back bytes for invalid UTF-8 in proto2
            raise DecodeError(f"KPL aggregate partition key {key!r} is not valid UTF-8")
    base = _sub_sequence_base(record, len(users))
    children: list[Record] = []
    # Explicit hash keys are not read: they only chose the shard at put time.
    for i, user in enumerate(users):
        index = user.partition_key_index
        if index >= len(keys):
            raise DecodeError(
                f"KPL user record {i}: partition_key_index {index} is out of range "
                f"({len(keys)} partition keys)"
            )
        children.append(record.child(user.data, base + i, partition_key=keys[index]))
    return children


def decode_kpl(record: Record) -> list[Record]:
    """`_expand_kpl` with the default limits."""
    return _expand_kpl(record, _Budget(DEFAULT_LIMITS))


# --------------------------------------------------------------------------- cloudwatch_logs

_INFLATE_PIECE = 1 << 20  # inflated per step: the bound is checked between steps

# A JSON string, escapes included; possessive and anchored at the end so that an
# unterminated string is one match too, and the scan stays linear on any input.
_JSON_STRING = re.compile(rb'"[^"\\]*+(?:\\[\s\S][^"\\]*+)*+(?:"|\\?\Z)')
# JSON values (strings, numbers, containers) allowed per log event the limit lets
# through: an event is 9 ({"id", "timestamp", "message"} with keys and commas);
# `extractedFields`, added by space-delimited filter patterns, takes 3 a field more.
_VALUES_PER_EVENT = 32


def _gunzip(data: bytes | bytearray, budget: _Budget) -> bytearray:
    limit = budget.inflated
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)  # gzip framing only
    out = bytearray()
    pending: bytes | bytearray = data
    try:
        while True:
            want = min(_INFLATE_PIECE, limit + 1 - len(out))
            piece = inflater.decompress(pending, want)
            out += piece
            if len(out) > limit:
                cap = budget.limits.max_inflated_bytes
                left = "" if limit == cap else f" ({limit} left for this record)"
                raise DecodeError(
                    f"CloudWatch Logs payload inflates to more than limits.max_inflated_bytes={cap}{left}"
                )
            pending = inflater.unconsumed_tail
            # A full piece may leave output inside zlib with no input left to feed.
            if inflater.eof or (not pending and len(piece) < want):
                break
    except zlib.error as exc:
        raise DecodeError(f"CloudWatch Logs payload is not valid gzip: {exc}") from exc
    if not inflater.eof:
        raise DecodeError("CloudWatch Logs payload is truncated gzip")
    if inflater.unused_data:
        raise DecodeError("CloudWatch Logs payload has data after the gzip stream")
    budget.inflated -= len(out)
    return out


def _json_values(text: bytes | bytearray, allowed: int) -> int:
    """An upper bound on the values parsing `text` would create (strings, numbers,
    containers), counted without creating them; stops early past `allowed`.

    Parsing may cost 20 times the text in objects (`[],` is 3 bytes, an empty list
    64), so the values are bounded before the parse. Strings are counted from
    their quotes (an escaped quote is no delimiter); commas and brackets only
    outside strings, which takes a scan that removes them.
    """
    quotes = text.count(b'"') - text.count(b'\\"') + text.count(b'\\\\"')
    strings = quotes // 2 + 1
    if strings > allowed:
        return strings
    # Commas and brackets inside strings count too: still an upper bound, and close
    # enough for most payloads, which then skip the scan below.
    rough = strings + text.count(b",") + 2 * (text.count(b"[") + text.count(b"{")) + 1
    if rough <= allowed:
        return rough
    outside = _JSON_STRING.sub(b"", text)  # at most `strings` matches, so bounded too
    return strings + outside.count(b",") + 2 * (outside.count(b"[") + outside.count(b"{")) + 1


def _field(obj: dict[str, Any], name: str, kind: type, where: str) -> Any:
    value = obj.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        got = "missing" if value is None else type(value).__name__
        raise DecodeError(f"{where}: {name} must be {kind.__name__}, got {got}")
    return value


def _expand_cloudwatch_logs(record: Record, budget: _Budget) -> list[Record]:
    """One record per log event of a subscription delivery; control messages vanish."""
    data = record.data
    if not isinstance(data, bytes | bytearray):
        raise DecodeError(f"CloudWatch Logs payload must be gzip bytes, got {type(data).__name__}")
    try:
        return _log_events(record, data, budget)
    except DecodeError:
        raise
    except Exception as exc:
        raise _unexpected("CloudWatch Logs payload", exc) from exc


def _log_events(record: Record, data: bytes | bytearray, budget: _Budget) -> list[Record]:
    where = "CloudWatch Logs payload"
    inflated = _gunzip(data, budget)
    allowed = _VALUES_PER_EVENT * budget.records + 64
    values = _json_values(inflated, allowed)
    if values > allowed:
        raise DecodeError(
            f"{where} holds about {values} JSON values, more than {_VALUES_PER_EVENT} a log event for "
            f"limits.max_records_per_payload={budget.limits.max_records_per_payload}"
        )
    try:
        text = _utf8(inflated)
        del inflated  # the text is a copy; half the peak memory
        doc = _json(text)
    except DecodeError as exc:
        raise DecodeError(f"{where}: {exc}") from exc
    if not isinstance(doc, dict):
        raise DecodeError(f"{where} is a JSON {type(doc).__name__}, not an object")
    message_type = _field(doc, "messageType", str, where)
    if message_type == "CONTROL_MESSAGE":  # the service's destination health check
        return []
    if message_type != "DATA_MESSAGE":
        raise DecodeError(f"{where}: unknown messageType {message_type!r}")
    log_group = _field(doc, "logGroup", str, where)
    log_stream = _field(doc, "logStream", str, where)
    owner = _field(doc, "owner", str, where)
    events = _field(doc, "logEvents", list, where)
    budget.take_records(len(events), f"{where} log events")
    base = _sub_sequence_base(record, len(events))
    children: list[Record] = []
    for i, event in enumerate(events):
        where = f"CloudWatch Logs event {i}"
        if not isinstance(event, dict):
            raise DecodeError(f"{where} is a JSON {type(event).__name__}, not an object")
        children.append(
            record.child(
                _field(event, "message", str, where),
                base + i,
                log_group=log_group,
                log_stream=log_stream,
                log_event_id=_field(event, "id", str, where),
                log_timestamp=_field(event, "timestamp", int, where),
                owner=owner,
            )
        )
    return children


def decode_cloudwatch_logs(record: Record) -> list[Record]:
    """`_expand_cloudwatch_logs` with the default limits."""
    return _expand_cloudwatch_logs(record, _Budget(DEFAULT_LIMITS))


# --------------------------------------------------------------------------- mysql_audit

# Line: timestamp,serverhost,username,host,connectionid,queryid,operation,database,object,retcode
# The eight header fields are written unescaped and never contain commas, so they are
# split directly; only `object` (SQL text in single quotes for QUERY events) needs
# the quote-aware scan below.
_HEADER_FIELDS = 8
# AWS's audit plugin for RDS MySQL 8.0 appends fields: a connection type on
# connection events (11 fields) and two empty ones on QUERY events (12). They are
# accepted and dropped; every other count is an error.
_MIN_FIELDS, _MAX_FIELDS = 10, 12

# Escapes written by the MariaDB server_audit plugin (and its Aurora / RDS
# derivatives). Older writers escape only ' and \ and leave newlines raw, which
# the scan accepts as ordinary characters. Unknown escapes are kept verbatim.
_UNESCAPE = {"'": "'", "\\": "\\", "n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f"}
_QUOTE_OR_BACKSLASH = re.compile(r"['\\]")
_MARIADB_TIME = re.compile(r"([0-9]{4})([0-9]{2})([0-9]{2}) ([0-9]{2}):([0-9]{2}):([0-9]{2})")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_AUDIT = "MySQL audit line"


def _read_quoted(line: str, start: int) -> tuple[str, int]:
    """Unescape the quoted string opening at line[start]; return it and the index
    just past its closing quote."""
    parts: list[str] = []
    pos = start + 1
    last = len(line) - 1
    while True:
        special = _QUOTE_OR_BACKSLASH.search(line, pos)
        # A backslash as the last character escapes nothing: unterminated as well.
        if special is None or (special.start() == last and line[last] == "\\"):
            raise DecodeError(f"{_AUDIT}: quoted object opened at column {start + 1} is unterminated")
        stop = special.start()
        if stop > pos:
            parts.append(line[pos:stop])
        if line[stop] == "'":
            return "".join(parts), stop + 1
        escaped = line[stop + 1]
        parts.append(_UNESCAPE.get(escaped) or "\\" + escaped)
        pos = stop + 2


def _audit_timestamp(text: str) -> str:
    # Aurora MySQL: epoch microseconds. Sixteen digits exactly (2001..2286), so epoch
    # seconds or milliseconds are rejected instead of landing in 1970.
    if len(text) == 16 and text.isdigit() and text.isascii():
        return (_EPOCH + timedelta(microseconds=int(text))).isoformat(timespec="microseconds")
    # MariaDB server_audit / RDS MySQL: "YYYYMMDD hh:mm:ss" in server local time,
    # which is UTC on RDS; only whole seconds are known.
    match = _MARIADB_TIME.fullmatch(text)
    if match is None:
        raise DecodeError(f"{_AUDIT}: bad timestamp {text[:40]!r}")
    year, month, day, hour, minute, second = map(int, match.groups())
    try:
        moment = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError as exc:
        raise DecodeError(f"{_AUDIT}: bad timestamp {text!r}: {exc}") from exc
    return moment.isoformat(timespec="seconds")


def _audit_int(name: str, text: str, *, signed: bool = False) -> int:
    digits = text[1:] if signed and text.startswith("-") else text
    # int() alone would also take " 7", "+7", "1_0" and non-ASCII digits.
    if not (digits.isdigit() and digits.isascii()):
        raise DecodeError(f"{_AUDIT}: {name} is not an integer: {text[:40]!r}")
    return int(text)


def parse_mysql_audit_line(line: str) -> dict[str, Any]:
    """Parse one server_audit line (Aurora MySQL, RDS MySQL, MariaDB) into a row dict.

    `retcode` is None when the writer leaves it empty (MariaDB table events).
    """
    line = line.rstrip("\r\n")  # the last field is never quoted, so this is safe
    fields = line.split(",", _HEADER_FIELDS)
    if len(fields) <= _HEADER_FIELDS:
        raise DecodeError(f"{_AUDIT}: expected {_MIN_FIELDS} fields, got {len(fields)}")
    rest = fields.pop()
    if rest.startswith("'"):
        start = len(line) - len(rest)
        sql, after = _read_quoted(line, start)
        if after == len(line):
            tail: list[str] = []
        elif line[after] == ",":
            tail = line[after + 1 :].split(",")
        else:
            raise DecodeError(
                f"{_AUDIT}: unexpected {line[after]!r} after the quoted object at column {after + 1}"
            )
    else:
        sql, *tail = rest.split(",")
    count = _HEADER_FIELDS + 1 + len(tail)
    if not _MIN_FIELDS <= count <= _MAX_FIELDS:
        raise DecodeError(f"{_AUDIT}: expected {_MIN_FIELDS} fields, got {count}")
    timestamp, serverhost, username, host, connection_id, query_id, operation, database = fields
    retcode = tail[0]
    return {
        "timestamp": _audit_timestamp(timestamp),
        "serverhost": serverhost,
        "username": username,
        "host": host,
        "connection_id": _audit_int("connection_id", connection_id),
        "query_id": _audit_int("query_id", query_id),
        "operation": operation,
        "database": database,
        "sql": sql,
        "retcode": _audit_int("retcode", retcode, signed=True) if retcode else None,
    }


def decode_mysql_audit(record: Record) -> list[Record]:
    """One MySQL / Aurora MySQL / MariaDB server_audit line → a dict of its fields."""
    data = record.data
    if isinstance(data, bytes | bytearray):
        data = _utf8(data)
    elif not isinstance(data, str):
        raise DecodeError(f"{_AUDIT}: expected str or bytes, got {type(data).__name__}")
    try:
        record.data = parse_mysql_audit_line(data)
    except DecodeError:
        raise
    except Exception as exc:  # e.g. an id of more digits than int() takes
        raise _unexpected(_AUDIT, exc) from exc
    return [record]


# --------------------------------------------------------------------------- registry

DECODERS: dict[str, Decoder] = {
    "json": decode_json,
    "text": decode_text,
    "none": decode_none,
    "kpl": decode_kpl,
    "cloudwatch_logs": decode_cloudwatch_logs,
    "mysql_audit": decode_mysql_audit,
}

_EXPANDERS: dict[str, Expander] = {"kpl": _expand_kpl, "cloudwatch_logs": _expand_cloudwatch_logs}


def _one_to_one(name: str, limits: LimitsConfig) -> Decoder:
    if name == "json" and limits.max_json_depth != DEFAULT_LIMITS.max_json_depth:
        return json_decoder(limits.max_json_depth)
    return DECODERS[name]


def _ignoring_budget(decoder: Decoder) -> Expander:
    def stage(record: Record, _: _Budget) -> list[Record]:
        return decoder(record)

    return stage


def build_decoder(names: list[str], limits: LimitsConfig = DEFAULT_LIMITS) -> Decoder:
    """Chain the named stages left to right; each stage sees every record the
    previous one produced, and one budget (`limits`) bounds the whole chain for
    each source record. Unknown names raise ValueError (a config error, not a
    record error)."""
    unknown = [name for name in names if name not in DECODERS]
    if unknown:
        raise ValueError(f"unknown decoder {unknown[0]!r}; known: {', '.join(DECODERS)}")
    named = [name for name in names if name != "none"]
    if not named:
        return decode_none
    if len(named) == 1 and named[0] not in _EXPANDERS:
        return _one_to_one(named[0], limits)
    if len(named) == 1 and limits == DEFAULT_LIMITS:
        return DECODERS[named[0]]
    stages = tuple(_EXPANDERS.get(name) or _ignoring_budget(_one_to_one(name, limits)) for name in named)
    cap = limits.max_records_per_payload

    def chained(record: Record) -> list[Record]:
        budget = _Budget(limits)
        records = stages[0](record, budget)
        for stage in stages[1:]:
            budget.records = cap
            if len(records) == 1 and records[0] is record:
                records = stage(record, budget)
                continue
            out: list[Record] = []
            for item in records:
                try:
                    out.extend(stage(item, budget))
                except DecodeError as exc:
                    # Name the sub-record: the failure destination gets the whole parent.
                    raise DecodeError(f"sub-record {item.sub_sequence}: {exc}") from exc
            records = out
        return records

    return chained
