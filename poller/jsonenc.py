"""JSON encoding of the values poller moves around (decoded payloads, DynamoDB
images, failure records): one `default` for the types JSON lacks."""

from __future__ import annotations

import base64
import json
from datetime import date, datetime
from decimal import Decimal
from typing import Any

# Python refuses to turn longer digit strings into an int (sys.int_info).
MAX_INT_DIGITS = 4300


def json_default(o: Any) -> Any:
    if isinstance(o, Decimal):
        # An integral Decimal becomes an int unless it has more digits than any
        # JSON integer may (int() of 1E+999999 alone takes seconds).
        if o.is_finite() and o.adjusted() < MAX_INT_DIGITS and o == o.to_integral_value():
            return int(o)
        return float(o)
    if isinstance(o, bytes | bytearray):
        return base64.b64encode(o).decode()
    if isinstance(o, set | frozenset):
        return sorted(o, key=str)
    if isinstance(o, datetime | date):
        return o.isoformat()
    raise TypeError(f"{type(o).__name__} is not JSON serializable")


def dumps(v: Any) -> str:
    """Compact JSON, non-ASCII kept as is (for database text and JSON columns)."""
    return json.dumps(v, default=json_default, separators=(",", ":"), ensure_ascii=False)


def ascii_dumps(v: Any) -> str:
    """JSON with everything outside ASCII escaped: any payload, NUL and lone
    surrogates included, survives a file or an SQS message body."""
    return json.dumps(v, default=json_default)
