"""Mapped values → the Python values a database driver binds for a column.

JMESPath yields JSON values (str, int, float, bool, None, dict, list); a
`timestamptz` column wants a datetime, a `numeric` one a Decimal. Each sink
describes its columns once from the catalogue (a `Column`: the kind of value
and the limits of that type in that database) and converts per value here, so
a value that does not fit is a record error for that record alone, found
before the transaction starts.

Invariants:

- A converter returns a value that the column's driver binds and the column
  stores, or raises. Whatever it raises, `coerce_row` and `row_coercer` turn
  into `CoercionError("column 'x': ...")`: containment does not depend on a
  list of exception types.
- A value's conversion costs O(len(value)): numbers written as text are
  refused by length before `Decimal`/`int` parse them, and by exponent before
  anything expands them; JSON is re-encoded at most `Column.json_depth` levels
  deep (512 unless the database allows fewer).
- `row_coercer` gives exactly what `coerce_row` gives; values that already fit
  their column (an in-range int, an ASCII string...) pass without a call.
"""

from __future__ import annotations

import json
import math
import re
import uuid
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Context, Decimal
from itertools import chain, compress
from operator import not_
from typing import Any, NoReturn

from poller.jsonenc import MAX_INT_DIGITS, json_default

Converter = Callable[[Any], Any]

# Python's own int-from-text limit: no JSON integer is longer, and a bound for
# int columns with no range of their own.
_MAX_INT_DIGITS = MAX_INT_DIGITS
_FLOAT_TEXT = 400  # characters: a float written as text, beyond any useful precision
_SLACK = 64  # characters a number's text may have beyond its digits (sign, zeros, exponent)
JSON_DEPTH = 512


class CoercionError(ValueError):
    pass


def _shown(v: Any) -> str:
    try:
        shown = repr(v) if not isinstance(v, str) or len(v) <= 200 else repr(v[:200])
    except Exception:  # a repr that fails (an int over 4300 digits) must not hide the error
        shown = f"<{type(v).__name__}>"
    return shown if len(shown) <= 80 else shown[:77] + "..."


def _bad(v: Any, what: str) -> NoReturn:
    raise CoercionError(f"expected {what}, got {_shown(v)}")


# --------------------------------------------------------------------------- JSON


# `dumps` for a text column (NaN stays the text `NaN`), and strict JSON for a json one.
_LENIENT = json.JSONEncoder(default=json_default, separators=(",", ":"), ensure_ascii=False)
_STRICT = json.JSONEncoder(default=json_default, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_CONTAINERS = frozenset((dict, list, tuple, set, frozenset))
_is_container = _CONTAINERS.__contains__
_is_dict = frozenset((dict,)).__contains__
# `\u0000` written by the encoder: an odd number of backslashes before `u0000`.
_ESCAPED_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
_LONG_DIGITS = re.compile(r"[0-9]{309}")  # an integer this long overflows a double


def _deeper_than(v: Any, limit: int) -> bool:
    """Whether containers nest more than `limit` deep: level by level, with no
    recursion and no Python-level loop over a level's containers."""
    level, depth = [v], 0
    while level:
        depth += 1
        if depth > limit:
            return True
        if len(level) == 1:
            items: Any = level[0].values() if type(level[0]) is dict else level[0]
        else:
            dicts = list(map(_is_dict, map(type, level)))
            items = list(
                chain(
                    chain.from_iterable(map(dict.values, compress(level, dicts))),
                    chain.from_iterable(compress(level, map(not_, dicts))),
                )
            )
        level = list(compress(items, map(_is_container, map(type, items))))
    return False


def _overflows_double(v: Any) -> bool:
    stack = [v]
    while stack:
        x = stack.pop()
        t = type(x)
        if t is dict:
            stack.extend(x.values())
        elif t in _CONTAINERS:
            stack.extend(x)
        elif t is int or t is Decimal:
            try:
                if math.isinf(float(x)):
                    return True
            except OverflowError:
                return True
    return False


def _encode_json(v: Any, col: Column, strict: bool) -> str:
    try:
        s = (_STRICT if strict else _LENIENT).encode(v)
    except RecursionError:
        _bad(v, f"a value nested at most {col.json_depth} levels deep")
    except ValueError as e:  # NaN/Infinity in strict JSON, an int over 4300 digits
        raise CoercionError(f"cannot encode {_shown(v)} as JSON: {str(e)[:200]}") from None
    # A document nested d levels deep has at least d brackets: most values skip the walk.
    if s.count("[") + s.count("{") > col.json_depth and _deeper_than(v, col.json_depth):
        _bad(v, f"a value nested at most {col.json_depth} levels deep")
    if strict:
        if not col.nul and "\\u0000" in s and _ESCAPED_NUL.search(s):
            _bad(v, "JSON without U+0000 (PostgreSQL refuses it in json and jsonb)")
        if col.json_double and _LONG_DIGITS.search(s) and _overflows_double(v):
            _bad(v, "JSON numbers within the range of a double (MySQL refuses larger ones)")
    return s


# --------------------------------------------------------------------------- columns


@dataclass(frozen=True, slots=True)
class Column:
    """A column's kind of value and what its type holds in its database.

    The defaults add no limit a database would: `converter(kind)` is this with
    only a kind, and still contains every error and bounds every conversion.
    """

    kind: str
    ints: tuple[int, int] | None = None  # inclusive range of an integer (int, and ints in "other")
    int_digits: int | None = None  # decimal: digits before the point
    scale: int | None = None  # decimal: the declared scale, rounded to as the server does
    raw_digits: int | None = None  # decimal: digits the driver sends as they are (else round/refuse)
    raw_exponent: int | None = None  # decimal: smallest exponent the driver sends as it is
    float_max: float | None = None  # float: largest finite magnitude (float4 / FLOAT)
    finite: bool = False  # refuse NaN and ±infinity
    nul: bool = True  # strings may contain U+0000
    max_chars: int | None = None  # varchar(n)/char(n); excess trailing spaces are dropped by the server
    max_bytes: int | None = None  # UTF-8 bytes of text, or bytes of a blob
    times: tuple[datetime, datetime] | None = None  # inclusive naive-UTC range of a timestamp
    dates: tuple[date, date] | None = None
    json_depth: int = JSON_DEPTH  # nesting of arrays and objects, also for JSON written to text
    json_double: bool = False  # JSON integers must fit a double (MySQL's JSON type)


# For a converter, an expression over `{v}` true when the value passes unchanged,
# and the constants it names: the compiled coercer inlines it instead of a call.
_GUARDS: weakref.WeakKeyDictionary[Converter, tuple[str, dict[str, Any]]] = weakref.WeakKeyDictionary()


def _guard(conv: Converter, expr: str, consts: dict[str, Any]) -> None:
    _GUARDS[conv] = (expr, consts)


def _text_fits(s: str, col: Column) -> str:
    if not col.nul and "\x00" in s:
        _bad(s, "text without U+0000 (PostgreSQL text cannot hold it)")
    if not s.isascii():
        try:
            s.encode("utf-8")
        except UnicodeEncodeError as e:
            raise CoercionError(f"text is not valid Unicode ({e.reason} at {e.start}): {_shown(s)}") from None
    n = col.max_chars
    if n is not None and len(s) > n and len(s.rstrip(" ")) > n:
        _bad(s, f"at most {n} characters")
    n = col.max_bytes
    if n is not None and len(s) * 4 > n and len(s.encode("utf-8", "surrogatepass")) > n:
        _bad(s, f"at most {n} bytes of UTF-8")
    return s


def _number_text(v: str, cap: int) -> Decimal:
    if len(v) > cap:
        _bad(v, f"a number of at most {cap} characters")
    try:
        return Decimal(v)  # exact, and linear in the length: the exponent is not expanded
    except ArithmeticError:
        _bad(v, "a number")


def _max_exponent(col: Column) -> int:
    if col.ints is None:
        return _MAX_INT_DIGITS
    lo, hi = col.ints
    return len(str(max(-lo, hi)))


def _int_of(col: Column) -> Converter:
    lo, hi = col.ints or (None, None)
    adjusted = _max_exponent(col)  # any larger exponent is out of range: refused before int()
    cap = adjusted + _SLACK

    def _int(v: Any) -> int:
        if isinstance(v, bool):
            i = int(v)
        elif isinstance(v, int):
            i = v
        elif isinstance(v, float):
            if not v.is_integer():
                _bad(v, "an integer")
            i = int(v)
        elif isinstance(v, str | Decimal):
            d = _number_text(v, cap) if isinstance(v, str) else v
            if not d.is_finite():
                _bad(v, "an integer")
            if d and d.adjusted() > adjusted:
                _bad(v, "an integer in the column's range")
            if d != d.to_integral_value():
                _bad(v, "an integer")
            i = int(d)
        else:
            _bad(v, "an integer")
        if lo is not None and hi is not None and not lo <= i <= hi:
            _bad(v, f"an integer from {lo} to {hi}")
        return i

    if lo is None or hi is None:
        _guard(_int, "type({v}) is int", {})
    else:
        _guard(_int, "type({v}) is int and {lo} <= {v} <= {hi}", {"lo": lo, "hi": hi})
    return _int


def _float_of(col: Column) -> Converter:
    finite, limit = col.finite, col.float_max

    def _float(v: Any) -> float:
        if isinstance(v, float):
            f = v
        elif isinstance(v, int | Decimal) and not isinstance(v, bool):
            try:
                f = float(v)
            except OverflowError:
                _bad(v, "a number within the range of a double")
        elif isinstance(v, str):
            if len(v) > _FLOAT_TEXT:
                _bad(v, f"a number of at most {_FLOAT_TEXT} characters")
            try:
                f = float(v)
            except ValueError:
                _bad(v, "a number")
        else:
            _bad(v, "a number")
        if math.isfinite(f):
            if limit is not None and abs(f) > limit:
                _bad(v, f"a number of magnitude at most {limit!r}")
        elif finite:
            _bad(v, "a finite number")
        elif math.isinf(f) and not isinstance(v, float) and "n" not in str(v).lower():
            # A finite number too large for a double, not infinity spelt out ("inf", "Infinity").
            _bad(v, "a number within the range of a double")
        return f

    bound = limit if limit is not None else (math.inf if finite else None)
    if bound is None:
        _guard(_float, "type({v}) is float", {})
    elif bound == math.inf:
        _guard(_float, "type({v}) is float and {lo} < {v} < {hi}", {"lo": -bound, "hi": bound})
    else:
        _guard(_float, "type({v}) is float and {lo} <= {v} <= {hi}", {"lo": -bound, "hi": bound})
    return _float


def _decimal_of(col: Column) -> Converter:
    int_digits, scale = col.int_digits, col.scale
    raw_digits, raw_exponent = col.raw_digits, col.raw_exponent
    cap = (int_digits or _MAX_INT_DIGITS) + max(-(raw_exponent or 0), scale or 0, 1000) + _SLACK
    quantum = Decimal(1).scaleb(-scale) if scale is not None else None
    # Rounding to the scale cannot need more digits than the column has, plus a carry.
    rounding = Context(prec=(int_digits or 0) + max(scale or 0, 0) + 2, rounding=ROUND_HALF_UP)
    # A float has at most 17 digits and no exponent below -340: below `top` (one digit
    # short of the column's limit, so no rounding can carry over it) it goes as it is.
    float_raw = (raw_digits is None or raw_digits >= 17) and (raw_exponent is None or raw_exponent <= -400)
    if not float_raw or (int_digits is not None and int_digits < 1):
        top = 0.0
    else:
        # Beyond 10**308 every finite float is below it.
        top = math.inf if int_digits is None or int_digits > 309 else float(10 ** (int_digits - 1))

    def fit(v: Any, d: Decimal, ndigits: int) -> Decimal:
        """`d` (whose coefficient has at most `ndigits` digits) as the column stores it."""
        if not d.is_finite():
            if col.finite or d.is_snan():
                _bad(v, "a finite number")
            return d
        if not d:  # a zero's exponent is all there is to it: keep it unless it is absurd
            return d if -400 <= d.adjusted() <= 400 else Decimal(0)
        a = d.adjusted()
        if int_digits is not None and a >= int_digits:
            _bad(v, f"a number with at most {int_digits} digits before the point")
        lowest = a - ndigits + 1  # the smallest exponent d can have
        raw = raw_digits is None or ndigits <= raw_digits
        raw = raw and (raw_exponent is None or lowest >= raw_exponent)
        if quantum is not None and (not raw or (int_digits is not None and a == int_digits - 1)):
            # Round as the server does (half away from zero); a carry may overflow the column.
            d = d.quantize(quantum, context=rounding)
            if int_digits is not None and d and d.adjusted() >= int_digits:
                _bad(v, f"a number with at most {int_digits} digits before the point")
        elif not raw:
            t = d.as_tuple()
            assert isinstance(t.exponent, int)
            if raw_digits is not None and len(t.digits) > raw_digits:
                _bad(v, f"a number of at most {raw_digits} significant digits")
            if raw_exponent is not None and t.exponent < raw_exponent:
                _bad(v, f"a number with at most {-raw_exponent} digits after the point")
        return d

    def _decimal(v: Any) -> Decimal:
        if type(v) is float:  # the common case first: a JSON number
            if -top < v < top:
                return Decimal(repr(v))
            return fit(v, Decimal(repr(v)), 17)
        if isinstance(v, Decimal):
            return fit(v, v, _MAX_INT_DIGITS * 1000)
        if isinstance(v, int) and not isinstance(v, bool):
            bits = v.bit_length()
            if int_digits is not None and bits > int_digits * 4 + 64:  # a digit takes < 4 bits
                _bad(v, f"a number with at most {int_digits} digits before the point")
            return fit(v, Decimal(v), bits * 31 // 100 + 1)  # at least its digits
        if isinstance(v, float):
            return fit(v, Decimal(repr(v)), 17)
        if isinstance(v, str):
            return fit(v, _number_text(v, cap), len(v))
        _bad(v, "a decimal number")

    return _decimal


def _text_of(col: Column) -> Converter:
    def _text(v: Any) -> str:
        if isinstance(v, str):
            return _text_fits(v, col)
        if isinstance(v, bytes):
            return _text_fits(v.decode("utf-8", errors="replace"), col)
        return _text_fits(_encode_json(v, col, strict=False), col)

    _guard(_text, *_str_guard(col))
    return _text


def _str_guard(col: Column) -> tuple[str, dict[str, Any]]:
    """An ASCII string passes as it is when it holds no NUL where that is refused and fits."""
    expr = "type({v}) is str and {v}.isascii()"
    if not col.nul:
        expr += " and '\\x00' not in {v}"
    limit = min(n for n in (col.max_chars, col.max_bytes, 1 << 62) if n is not None)
    if limit < 1 << 62:
        expr += " and len({v}) <= {n}"
        return expr, {"n": limit}
    return expr, {}


_TRUE = frozenset(("true", "t", "1", "yes"))
_FALSE = frozenset(("false", "f", "0", "no"))


def _bool_of(col: Column) -> Converter:
    def _bool(v: Any) -> bool:
        if isinstance(v, bool):
            return v
        if isinstance(v, int) and v in (0, 1):
            return bool(v)
        if isinstance(v, str) and len(v) <= 5 and v.lower() in _TRUE | _FALSE:
            return v.lower() in _TRUE
        _bad(v, "a boolean")

    _guard(_bool, "type({v}) is bool", {})
    return _bool


def _datetime(v: Any) -> datetime:
    """An aware datetime from ISO-8601 text, a datetime or epoch seconds/milliseconds."""
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
        try:
            seconds = float(v)
        except OverflowError:
            _bad(v, "a timestamp within years 1 to 9999")
        if seconds > 1e11:  # epoch milliseconds (DynamoDB TTLs and app timestamps use both)
            seconds /= 1000.0
        if not -62135596800.0 <= seconds < 253402300800.0:  # also false for NaN
            _bad(v, "a timestamp within years 1 to 9999")
        return datetime.fromtimestamp(seconds, UTC)
    if isinstance(v, str):
        s = v.strip().replace("Z", "+00:00")
        try:
            d = datetime.fromisoformat(s)
        except ValueError:
            _bad(v, "a timestamp (ISO-8601 or epoch seconds)")
        return d if d.tzinfo else d.replace(tzinfo=UTC)
    _bad(v, "a timestamp")


def _in_range(v: Any, value: Any, bounds: tuple[Any, Any] | None) -> None:
    if bounds is not None and not bounds[0] <= value <= bounds[1]:
        _bad(v, f"a value from {bounds[0].isoformat()} to {bounds[1].isoformat()}")


def _timestamptz_of(col: Column) -> Converter:
    bounds = None
    if col.times is not None:
        bounds = (col.times[0].replace(tzinfo=UTC), col.times[1].replace(tzinfo=UTC))

    def _timestamptz(v: Any) -> datetime:
        d = None
        if type(v) is str:  # the common case first: strict ISO-8601, often in UTC
            try:
                d = datetime.fromisoformat(v)
            except ValueError:
                pass
            else:
                if d.tzinfo is UTC and bounds is None:
                    return d
                if d.tzinfo is None:
                    d = d.replace(tzinfo=UTC)
        if d is None:
            d = _datetime(v)
        if d.tzinfo is not UTC and not 1 < d.year < 9999:
            try:  # the driver converts to UTC: refused here if that leaves years 1-9999
                d.astimezone(UTC)
            except OverflowError:
                _bad(v, "a timestamp within years 1 to 9999 in UTC")
        _in_range(v, d, bounds)
        return d

    return _timestamptz


def _timestamp_of(col: Column) -> Converter:
    bounds = col.times

    def _timestamp(v: Any) -> datetime:
        d = _datetime(v)
        if d.tzinfo is not UTC:  # already UTC: astimezone would return the same instant
            try:
                d = d.astimezone(UTC)
            except OverflowError:
                _bad(v, "a timestamp within years 1 to 9999 in UTC")
        d = d.replace(tzinfo=None)
        _in_range(v, d, bounds)
        return d

    return _timestamp


def _date_of(col: Column) -> Converter:
    bounds = col.dates

    def _date(v: Any) -> date:
        if isinstance(v, datetime):
            d = v.date()
        elif isinstance(v, date):
            d = v
        elif isinstance(v, str):
            try:
                d = date.fromisoformat(v[:10])
            except ValueError:
                _bad(v, "a date")
        else:
            _bad(v, "a date")
        _in_range(v, d, bounds)
        return d

    return _date


def _uuid_of(col: Column) -> Converter:
    def _uuid(v: Any) -> uuid.UUID:
        if isinstance(v, uuid.UUID):
            return v
        if isinstance(v, str) and len(v) <= 100:
            try:
                return uuid.UUID(v)
            except ValueError:
                pass
        _bad(v, "a UUID")

    _guard(_uuid, "type({v}) is {t}", {"t": uuid.UUID})
    return _uuid


def _bytes_of(col: Column) -> Converter:
    limit = col.max_bytes

    def _bytes(v: Any) -> bytes:
        if isinstance(v, bytes | bytearray):
            b = bytes(v)
        elif isinstance(v, str):
            b = v.encode()
        else:
            b = _encode_json(v, col, strict=False).encode()
        if limit is not None and len(b) > limit:
            _bad(v, f"at most {limit} bytes")
        return b

    if limit is None:
        _guard(_bytes, "type({v}) is bytes", {})
    else:
        _guard(_bytes, "type({v}) is bytes and len({v}) <= {n}", {"n": limit})
    return _bytes


def _json_text_of(col: Column) -> Converter:
    def _json_text(v: Any) -> str:
        return _text_fits(_encode_json(v, col, strict=True), col)

    return _json_text


def _json_native_of(col: Column) -> Converter:
    def _json_native(v: Any) -> Any:
        return v

    _guard(_json_native, "True", {})
    return _json_native


def _other_of(col: Column) -> Converter:
    """A type no converter knows (MySQL enum, time...; SQLite with no affinity): the
    value as it is, once it is one the driver can send."""
    lo, hi = col.ints or (None, None)

    def _other(v: Any) -> Any:
        if isinstance(v, str):
            return _text_fits(v, col)
        if isinstance(v, bool):
            return v
        if isinstance(v, int):
            if lo is not None and hi is not None and not lo <= v <= hi:
                _bad(v, f"an integer from {lo} to {hi}")
            return v
        if isinstance(v, float):
            if col.finite and not math.isfinite(v):
                _bad(v, "a finite number")
            return v
        if isinstance(v, Decimal):
            if col.finite and not v.is_finite():
                _bad(v, "a finite number")
            if v.is_finite() and not -1000 <= v.adjusted() <= 1000:
                _bad(v, "a number with at most 1000 digits")  # drivers write it out in full
            return v
        if isinstance(v, dict | list | tuple):
            return _text_fits(_encode_json(v, col, strict=False), col)
        if isinstance(v, bytes | bytearray) and col.max_bytes is not None and len(v) > col.max_bytes:
            _bad(v, f"at most {col.max_bytes} bytes")
        return v

    _guard(_other, *_str_guard(col))
    return _other


_BUILDERS: dict[str, Callable[[Column], Converter]] = {
    "int": _int_of,
    "float": _float_of,
    "decimal": _decimal_of,
    "text": _text_of,
    "bool": _bool_of,
    "timestamptz": _timestamptz_of,
    "timestamp": _timestamp_of,
    "date": _date_of,
    "uuid": _uuid_of,
    "bytes": _bytes_of,
    "json_text": _json_text_of,
    "json_native": _json_native_of,
    "other": _other_of,
}


def column_converter(col: Column) -> Converter:
    """The converter for one column (a new function, with its limits built in)."""
    return _BUILDERS[col.kind](col)


# Converters with no database's limits, one per kind.
CONVERTERS: dict[str, Converter] = {kind: column_converter(Column(kind)) for kind in _BUILDERS}


def converter(kind: str) -> Converter:
    return CONVERTERS[kind]


# --------------------------------------------------------------------------- rows


def _reason(e: Exception) -> str:
    if isinstance(e, CoercionError):
        return str(e)
    text = str(e)
    return f"{type(e).__name__}: {text[:200]}" if text else type(e).__name__


def coerce_row(values: tuple[Any, ...], converters: list[Converter], columns: list[str]) -> tuple[Any, ...]:
    """Convert one row; any error a value causes is a CoercionError naming its column."""
    out: list[Any] = []
    for v, conv, col in zip(values, converters, columns, strict=True):
        if v is None:
            out.append(None)
            continue
        try:
            out.append(conv(v))
        except Exception as e:
            raise CoercionError(f"column {col!r}: {_reason(e)}") from e
    return tuple(out)


def row_coercer(
    converters: list[Converter], columns: list[str]
) -> Callable[[Sequence[Any]], tuple[Any, ...]]:
    """A function equal to `coerce_row(values, converters, columns)`, compiled
    for one table: values that already fit their column are kept without a
    call, the rest are converted, and any failure is re-run through
    `coerce_row` so the error names its column exactly as before.

    Generated from source (as `dataclasses` does): one straight-line
    expression per column costs a fraction of the generic loop per value.
    """
    n = len(converters)
    if n != len(columns) or n == 0:
        return lambda values: coerce_row(tuple(values), converters, columns)
    env: dict[str, Any] = {"_slow": coerce_row, "_convs": converters, "_cols": columns}
    exprs = []
    for i, conv in enumerate(converters):
        env[f"c{i}"] = conv
        v = f"v{i}"
        guard = _GUARDS.get(conv)
        if guard is None:
            exprs.append(f"(None if {v} is None else c{i}({v}))")
            continue
        expr, consts = guard
        mangled = {k: f"g{i}_{k}" for k in consts}
        env.update({mangled[k]: c for k, c in consts.items()})
        test = expr.format(v=v, **mangled)
        exprs.append(v if test == "True" else f"({v} if {test} or {v} is None else c{i}({v}))")
    names = ", ".join(f"v{i}" for i in range(n))
    source = (
        "def coerce(values):\n"
        f"    if len(values) != {n}:\n"
        "        return _slow(tuple(values), _convs, _cols)\n"
        f"    {names}, = values\n"
        "    try:\n"
        f"        return ({', '.join(exprs)},)\n"
        "    except Exception:\n"
        "        return _slow(tuple(values), _convs, _cols)\n"
    )
    exec(compile(source, "<poller.coercion.row>", "exec"), env)
    fn: Callable[[Sequence[Any]], tuple[Any, ...]] = env["coerce"]
    return fn
