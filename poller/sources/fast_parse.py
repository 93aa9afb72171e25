"""Compiled response parsers for the hot read calls, hooked in through
botocore's public `before-parse.<service>.<Operation>` event.

botocore's generic JSON-protocol parser walks the output shape node by node
(a `getattr` dispatch, a `serialization` lookup per member, per value); on a
GetRecords response of 10,000 records that is most of a consumer's CPU. Here
each output shape is turned once into small generated functions that do the same
conversions — structures keep their modelled, non-null members, blobs are
base64-decoded, timestamps become the datetimes botocore's default timestamp
parser makes, lists keep null items, everything else passes through — so the
result is the dict botocore would return, built at a fraction of the cost.

The handler parses a successful (2xx) body itself, hands the result to botocore
as `customized_response_dict` (which botocore merges into its parsed
response) and leaves botocore an empty JSON object to parse, so botocore still
adds `ResponseMetadata`, and errors, retries, signing and endpoints stay
entirely botocore's. A shape this module does not handle (documents, tagged
unions, event streams, members bound to headers) is simply not hooked.
"""

from __future__ import annotations

import binascii
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from botocore.model import Shape
from botocore.parsers import DEFAULT_TIMESTAMP_PARSER
from dateutil.tz import tzlocal

Parse = Callable[[Any], Any]

_IDENTITY = frozenset({"string", "integer", "long", "boolean", "double", "float", "bigdecimal", "biginteger"})


class Unsupported(Exception):
    """The shape needs a botocore feature this compiler does not reproduce."""


# `base64.b64decode` without its wrapper: the same decoding of ASCII str or bytes
# (non-base64 characters skipped, a non-ASCII str or bad padding a ValueError).
_b64 = binascii.a2b_base64


# botocore turns an epoch number into `datetime.fromtimestamp(value, tzlocal())`,
# where dateutil's tzlocal does its arithmetic in Python (a few µs per record
# on GetRecords). When the local zone is UTC without DST (as in containers),
# the same datetime — same fields, same tzinfo type — is built from C-level
# UTC arithmetic. `tzlocal()` reads the zone when it is made, as botocore's do.
_TZLOCAL = tzlocal()
_LOCAL_IS_UTC = time.timezone == 0 and (not time.daylight or time.altzone == 0)


# The records of one put share their arrival time (milliseconds), so each
# function keeps its last conversion. Datetimes are immutable: records may
# share one.
_last_parsed: tuple[Any, datetime | None] = (None, None)
_last_epoch: tuple[datetime | None, float] = (None, 0.0)


def parse_timestamp(value: Any) -> Any:
    """botocore's default timestamp parser, faster for epoch numbers in a UTC zone."""
    global _last_parsed
    if _LOCAL_IS_UTC and type(value) in (float, int):
        last_value, last = _last_parsed
        if last is not None and last_value == value:
            return last
        try:
            parsed = datetime.fromtimestamp(value, UTC).replace(tzinfo=_TZLOCAL)
        except (OverflowError, OSError, ValueError):
            return DEFAULT_TIMESTAMP_PARSER(value)
        _last_parsed = (value, parsed)
        return parsed
    return DEFAULT_TIMESTAMP_PARSER(value)


def epoch_seconds(value: datetime) -> float:
    """`value.timestamp()`, without dateutil's Python arithmetic for the
    datetimes `parse_timestamp` makes."""
    global _last_epoch
    last, seconds = _last_epoch
    if value is last:
        return seconds
    if value.tzinfo is _TZLOCAL and _LOCAL_IS_UTC:
        seconds = value.replace(tzinfo=UTC).timestamp()
    else:
        seconds = value.timestamp()
    _last_epoch = (value, seconds)
    return seconds


def compile_shape(shape: Shape, timestamp_parser: Callable[[Any], Any] = parse_timestamp) -> Parse:
    """A function equal to botocore's JSON parser `_parse_shape(shape, value)`
    for non-null values of `shape`. Raises `Unsupported` for shapes it cannot
    reproduce exactly.

    Each list, map and structure shape becomes one small function generated
    from source (as `dataclasses` does): a structure is a run of `get`s of its
    members, without the loop and tuple unpacking per member per record. The
    functions call each other by name, so recursive shapes work.
    """
    env: dict[str, Any] = {"_b64": _b64, "_ts": timestamp_parser}
    names: dict[str, str] = {}  # shape name -> function name in env

    def define(fname: str, source: str) -> str:
        exec(compile(source, f"<poller.fast_parse.{fname}>", "exec"), env)
        return fname

    def build(s: Shape) -> str | None:
        """The env name of the parser for `s`; None means identity (the JSON value as it is)."""
        kind = s.type_name
        if kind in _IDENTITY:
            return None
        if kind == "blob":
            return "_b64"
        if kind == "timestamp":
            return "_ts"
        if kind not in ("list", "map", "structure"):
            raise Unsupported(f"{s.name}: type {kind}")
        key = f"{kind}:{s.name}"
        if key in names:
            return names[key]
        fname = names[key] = f"p{len(names)}"  # named before its parts: shapes may be recursive
        if kind == "list":
            item = build(s.member)
            body = "list(value)" if item is None else f"[None if v is None else {item}(v) for v in value]"
            return define(fname, f"def {fname}(value):\n    return {body}\n")
        if kind == "map":
            k, v = build(s.key), build(s.value)
            if k is None and v is None:
                body = "dict(value)"
            else:
                body = f"{{{f'{k}(a)' if k else 'a'}: {f'{v}(b)' if v else 'b'} for a, b in value.items()}}"
            return define(fname, f"def {fname}(value):\n    return {body}\n")
        if (
            getattr(s, "is_document_type", False)
            or getattr(s, "is_tagged_union", False)
            or s.event_stream_name
            or s.metadata.get("exception")
        ):
            raise Unsupported(f"{s.name}: document, union, event stream or exception")
        lines = [f"def {fname}(value):", "    out = {}", "    get = value.get"]
        for name, member in s.members.items():
            ser = member.serialization
            if ser.get("location") or ser.get("eventheader") or ser.get("eventpayload"):
                raise Unsupported(f"{s.name}.{name}: bound to {ser}")
            sub = build(member)
            lines.append(f"    v = get({ser.get('name', name)!r})")
            lines.append("    if v is not None:")
            lines.append(f"        out[{name!r}] = {'v' if sub is None else f'{sub}(v)'}")
        lines.append("    return out")
        return define(fname, "\n".join(lines) + "\n")

    top = build(shape)
    if top is None:
        return _same
    fn: Parse = env[top]
    return fn


def _same(value: Any) -> Any:
    return value


def body_parser(
    shape: Shape, timestamp_parser: Callable[[Any], Any] = parse_timestamp
) -> Callable[[dict[str, Any], dict[str, Any]], None] | None:
    """The `before-parse` handler for one operation's output shape, or None if
    the shape is not supported."""
    try:
        parse = compile_shape(shape, timestamp_parser)
    except Unsupported:
        return None

    def handler(response_dict: dict[str, Any], customized_response_dict: dict[str, Any], **_: Any) -> None:
        status = response_dict.get("status_code", 0)
        body = response_dict.get("body")
        if not 200 <= status < 300 or not isinstance(body, bytes) or not body:
            return  # errors and anything unusual: botocore's own parser
        try:
            doc = json.loads(body.decode("utf-8"))  # as botocore reads a body
        except ValueError:
            return
        if not isinstance(doc, dict):
            return
        try:
            parsed = parse(doc)
        except Exception:
            return  # a malformed body: botocore's parser reports it as it always has
        customized_response_dict.update(parsed)
        response_dict["body"] = b"{}"

    return handler


def install(client: Any, operations: list[str]) -> list[str]:
    """Hook compiled parsers into an aiobotocore/botocore client for these
    operations (e.g. `["ReceiveMessage"]`); returns those hooked."""
    model = client.meta.service_model
    if model.protocol != "json":
        return []
    service_id = model.service_id.hyphenize()
    hooked = []
    for op in operations:
        output = model.operation_model(op).output_shape
        if output is None:
            continue
        handler = body_parser(output)
        if handler is not None:
            client.meta.events.register(f"before-parse.{service_id}.{op}", handler)
            hooked.append(op)
    return hooked
