"""Mapped values → the Python types a database driver binds for a column.

JMESPath yields JSON values (str, int, float, bool, None, dict, list); a
`timestamptz` column wants a datetime, a `numeric` one a Decimal. Each sink
classifies its columns once (from the catalogue) and converts per value here,
so a value that does not fit is a record error for that record alone, found
before the transaction starts.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, NoReturn

Converter = Callable[[Any], Any]


def json_default(o: Any) -> Any:
    if isinstance(o, Decimal):
        return int(o) if o == o.to_integral_value() else float(o)
    if isinstance(o, bytes | bytearray):
        return base64.b64encode(o).decode()
    if isinstance(o, set | frozenset):
        return sorted(o, key=str)
    if isinstance(o, datetime | date):
        return o.isoformat()
    raise TypeError(f"{type(o).__name__} is not JSON serializable")


def dumps(v: Any) -> str:
    return json.dumps(v, default=json_default, separators=(",", ":"), ensure_ascii=False)


def _int(v: Any) -> Any:
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str | Decimal):
        return int(Decimal(v)) if Decimal(v) == Decimal(v).to_integral_value() else _bad(v, "an integer")
    return _bad(v, "an integer")


def _float(v: Any) -> Any:
    if isinstance(v, int | float | Decimal) and not isinstance(v, bool):
        return float(v)
    if isinstance(v, str):
        return float(v)
    return _bad(v, "a number")


def _decimal(v: Any) -> Any:
    if type(v) is float:  # the common case first: a JSON number
        return Decimal(repr(v))
    if isinstance(v, Decimal):
        return v
    if isinstance(v, int | float | str) and not isinstance(v, bool):
        try:
            return Decimal(str(v))
        except InvalidOperation:
            pass
    return _bad(v, "a decimal number")


def _text(v: Any) -> Any:
    if isinstance(v, str):
        return v
    if isinstance(v, bytes):
        return v.decode("utf-8", errors="replace")
    return dumps(v)


def _bool(v: Any) -> Any:
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    if isinstance(v, str) and v.lower() in ("true", "false", "t", "f", "1", "0", "yes", "no"):
        return v.lower() in ("true", "t", "1", "yes")
    return _bad(v, "a boolean")


def _datetime(v: Any) -> datetime:
    if type(v) is str:
        # The common case first: a strict ISO-8601 string, which `fromisoformat`
        # takes as it is (a trailing Z included); anything else goes the long way.
        try:
            d = datetime.fromisoformat(v)
        except ValueError:
            pass
        else:
            return d if d.tzinfo else d.replace(tzinfo=UTC)
    if isinstance(v, datetime):
        return v if v.tzinfo else v.replace(tzinfo=UTC)
    if isinstance(v, int | float | Decimal) and not isinstance(v, bool):
        seconds = float(v)
        if seconds > 1e11:  # epoch milliseconds (DynamoDB TTLs and app timestamps use both)
            seconds /= 1000.0
        return datetime.fromtimestamp(seconds, UTC)
    if isinstance(v, str):
        s = v.strip().replace("Z", "+00:00")
        try:
            d = datetime.fromisoformat(s)
        except ValueError:
            return _bad(v, "a timestamp (ISO-8601 or epoch seconds)")
        return d if d.tzinfo else d.replace(tzinfo=UTC)
    return _bad(v, "a timestamp")


_timestamptz = _datetime


def _timestamp_naive(v: Any) -> Any:
    d = _datetime(v)
    if d.tzinfo is UTC:  # already UTC: astimezone would return the same instant
        return d.replace(tzinfo=None)
    return d.astimezone(UTC).replace(tzinfo=None)


def _date(v: Any) -> Any:
    if isinstance(v, datetime):
        return v.date()
    if isinstance(v, date):
        return v
    if isinstance(v, str):
        try:
            return date.fromisoformat(v[:10])
        except ValueError:
            pass
    return _bad(v, "a date")


def _uuid(v: Any) -> Any:
    try:
        return v if isinstance(v, uuid.UUID) else uuid.UUID(str(v))
    except ValueError:
        return _bad(v, "a UUID")


def _bytes(v: Any) -> Any:
    if isinstance(v, bytes):
        return v
    if isinstance(v, str):
        return v.encode()
    return dumps(v).encode()


def _json_text(v: Any) -> Any:
    return dumps(v)


def _json_native(v: Any) -> Any:
    return v


def _other(v: Any) -> Any:
    if isinstance(v, dict | list):
        return dumps(v)
    return v


class CoercionError(ValueError):
    pass


def _bad(v: Any, what: str) -> NoReturn:
    shown = repr(v)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    raise CoercionError(f"expected {what}, got {shown}")


CONVERTERS: dict[str, Converter] = {
    "int": _int,
    "float": _float,
    "decimal": _decimal,
    "text": _text,
    "bool": _bool,
    "timestamptz": _timestamptz,
    "timestamp": _timestamp_naive,
    "date": _date,
    "uuid": _uuid,
    "bytes": _bytes,
    "json_text": _json_text,
    "json_native": _json_native,
    "other": _other,
}


def converter(kind: str) -> Converter:
    return CONVERTERS[kind]


def coerce_row(values: tuple[Any, ...], converters: list[Converter], columns: list[str]) -> tuple[Any, ...]:
    """Convert one row; the error names the column."""
    out: list[Any] = []
    for v, conv, col in zip(values, converters, columns, strict=True):
        if v is None:
            out.append(None)
            continue
        try:
            out.append(conv(v))
        except (CoercionError, ValueError, TypeError, OverflowError) as e:
            raise CoercionError(f"column {col!r}: {e}") from e
    return tuple(out)


# A converter returns a value of exactly this type unchanged, so the compiled
# coercer does not call it for one (the common case: the JSON value already has
# the column's type). `object` means every value passes through.
_UNCHANGED: dict[Converter, type] = {
    _int: int,
    _float: float,
    _text: str,
    _bool: bool,
    _decimal: Decimal,
    _uuid: uuid.UUID,
    _bytes: bytes,
    _other: str,
    _json_native: object,
}
_CAUGHT = (CoercionError, ValueError, TypeError, OverflowError)


def row_coercer(
    converters: list[Converter], columns: list[str]
) -> Callable[[Sequence[Any]], tuple[Any, ...]]:
    """A function equal to `coerce_row(values, converters, columns)`, compiled
    for one table: values that already have their column's type are kept
    without a call, the rest are converted, and any failure is re-run through
    `coerce_row` so the error names its column exactly as before.

    Generated from source (as `dataclasses` does): one straight-line
    expression per column costs a fraction of the generic loop per value.
    """
    n = len(converters)
    if n != len(columns) or n == 0:
        return lambda values: coerce_row(tuple(values), converters, columns)
    env: dict[str, Any] = {"_slow": coerce_row, "_convs": converters, "_cols": columns, "_CAUGHT": _CAUGHT}
    exprs = []
    for i, conv in enumerate(converters):
        env[f"c{i}"] = conv
        passes = _UNCHANGED.get(conv)
        if passes is object:
            exprs.append(f"v{i}")
        elif passes is not None:
            env[f"t{i}"] = passes
            exprs.append(f"(v{i} if type(v{i}) is t{i} or v{i} is None else c{i}(v{i}))")
        else:
            exprs.append(f"(None if v{i} is None else c{i}(v{i}))")
    names = ", ".join(f"v{i}" for i in range(n))
    source = (
        "def coerce(values):\n"
        f"    if len(values) != {n}:\n"
        "        return _slow(tuple(values), _convs, _cols)\n"
        f"    {names}, = values\n"
        "    try:\n"
        f"        return ({', '.join(exprs)},)\n"
        "    except _CAUGHT:\n"
        "        return _slow(tuple(values), _convs, _cols)\n"
    )
    exec(compile(source, "<poller.coercion.row>", "exec"), env)
    fn: Callable[[Sequence[Any]], tuple[Any, ...]] = env["coerce"]
    return fn
