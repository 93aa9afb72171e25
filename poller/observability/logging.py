"""structlog set-up: JSON lines in containers, pretty output on a terminal.

Stream, shard and sequence context is carried in contextvars (bound by the
readers and the pipeline) so every line has it without threading loggers
through the code.

Invariant: nothing reaches stdout or stderr unredacted. Exceptions are
rendered to plain text (never rich tracebacks, which print local variables)
*before* `poller.redaction.redact_value` runs over the whole event, nested
values included; the rendered line then goes through the registered-secret
mask once more. Lines of libraries that log through stdlib `logging` go
through the same `redact` in their formatter.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from poller.redaction import redact, redact_known, redact_value, register_environment

__all__ = ["configure", "get_logger", "redact"]


def _redact_event(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    redacted: dict[str, Any] = redact_value(event)
    return redacted


def _redact_line(_: Any, __: str, line: str) -> str:
    # The renderer only escapes and joins what was redacted above; this catches a
    # registered secret that a renderer's escaping made whole again. Only known
    # secrets: the patterns could cut through the structure of a JSON line.
    return redact_known(line) if isinstance(line, str) else line


class RedactingFormatter(logging.Formatter):
    """stdlib records (asyncio, aiohttp, botocore), traceback included, redacted."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def configure(level: str = "INFO", json: bool | None = None) -> None:
    if json is None:
        json = not sys.stdout.isatty()
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=True, exception_formatter=structlog.dev.plain_traceback)
    )
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        _redact_event,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        renderer,
        _redact_line,
    ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stdout),
        cache_logger_on_first_use=True,
    )
    register_environment()
    # Libraries that log through stdlib (aiobotocore, asyncpg) stay quiet below WARNING.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter(logging.BASIC_FORMAT))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])


def get_logger(**bound: Any) -> Any:
    return structlog.get_logger("poller").bind(**bound)
