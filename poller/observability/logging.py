"""structlog set-up: JSON lines in containers, pretty output on a terminal.

Stream, shard and sequence context is carried in contextvars (bound by the
readers and the pipeline) so every line has it without threading loggers
through the code. Secrets are scrubbed from every string that is logged.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import structlog

_DSN_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)(?P<pw>[^@\s]*)(?=@)", re.I)
_KV_PASSWORD = re.compile(r"(?P<head>\b(?:password|passwd|pwd|secret|token)=)(?P<pw>[^\s&;]+)", re.I)


def redact(text: str) -> str:
    """Hide passwords in DSNs (`postgres://u:secret@h/db`) and `password=...` pairs."""
    text = _DSN_PASSWORD.sub(r"\g<head>***", text)
    return _KV_PASSWORD.sub(r"\g<head>***", text)


def _scrub(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    for k, v in event.items():
        if isinstance(v, str) and ("://" in v or "=" in v):
            event[k] = redact(v)
    return event


def configure(level: str = "INFO", json: bool | None = None) -> None:
    if json is None:
        json = not sys.stdout.isatty()
    renderer: Any = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=True)
    )
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info if json else structlog.processors.StackInfoRenderer(),
        _scrub,
        renderer,
    ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stdout),
        cache_logger_on_first_use=True,
    )
    # Libraries that log through stdlib (aiobotocore, asyncpg) stay quiet below WARNING.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)


def get_logger(**bound: Any) -> Any:
    return structlog.get_logger("poller").bind(**bound)
