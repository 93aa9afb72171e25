"""Handlers that write down the event and context they were called with."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.handlers import journal


def _context(context: Any) -> dict[str, Any]:
    return {
        "function_name": context.function_name,
        "function_version": context.function_version,
        "aws_request_id": context.aws_request_id,
        "invoked_function_arn": context.invoked_function_arn,
        "memory_limit_in_mb": context.memory_limit_in_mb,
        "remaining_ms": context.get_remaining_time_in_millis(),
        "log_group_name": context.log_group_name,
        "log_stream_name": context.log_stream_name,
    }


def lambda_handler(event: dict[str, Any], context: Any) -> None:
    journal.write({"kind": "sync", "event": event, "context": _context(context)})
    context.log(f"recorded {len(event['Records'])} records")


async def async_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    await asyncio.sleep(0)
    journal.write({"kind": "async", "event": event, "context": _context(context)})
    return {"batchItemFailures": []}
