"""How an error raised while committing is classed, for every dialect.

- **transient**: the database, not the rows (connection lost, deadlock, lock
  timeout, read-only, shutting down): retried with backoff for as long as it
  takes, never charged to a record.
- **needs attention**: the database refuses every batch alike until an
  operator acts (undefined table or column, permission denied): also waited
  on (logged at error level), since sending every record to the failure
  destination would only move the outage.
- **record**: what this batch contains (constraint, bad value, a value the
  driver cannot encode, a trigger's own exception): bisected down to the
  record that causes it, which goes to the failure destination after its
  attempts.

A deterministic error is never transient: that would retry it forever and
block the shard. So the rule for anything not listed is "record" when it is a
Python error the driver raised while encoding values (no server code), and
"transient" only for I/O and connection errors.
"""

from __future__ import annotations

import asyncio

from poller.records import RecordError, TransientError, describe_error

# Raised by a driver's socket layer: the connection, not the content.
_IO_ERRORS = (OSError, EOFError, ConnectionError, asyncio.TimeoutError)


def record_error(message: str, reason: str) -> RecordError:
    err = RecordError(message)
    err.reason = reason
    return err


def needs_attention(message: str) -> TransientError:
    return TransientError(f"{message} (needs attention)")


def by_python_type(exc: BaseException, dialect: str) -> Exception:
    """A driver error with no server code: I/O is transient; anything else came
    from encoding the batch's values (an int out of range, a lone surrogate, a
    NaN MySQL cannot hold) and is a record error for bisection to isolate."""
    text = f"{dialect}: {type(exc).__name__}: {describe_error(exc, 1000)}"
    if isinstance(exc, _IO_ERRORS):
        return TransientError(f"{dialect} unavailable: {type(exc).__name__}: {describe_error(exc, 1000)}")
    return record_error(text, "encoding_error")
