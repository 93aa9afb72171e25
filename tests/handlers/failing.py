"""Handlers that fail: on a poison record, or by running past their timeout."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

from tests.handlers import journal


def _payload(record: dict[str, Any]) -> dict[str, Any]:
    if "body" in record:
        return dict(json.loads(record["body"]))
    return dict(json.loads(base64.b64decode(record["kinesis"]["data"])))


def poison(event: dict[str, Any], context: Any) -> None:
    """Fails the whole batch (a function error) when any record is poison."""
    items = [_payload(r) for r in event["Records"]]
    journal.write({"invocation": [i["id"] for i in items]})
    bad = [i["id"] for i in items if i.get("poison")]
    if bad:
        raise RuntimeError(f"poison record(s) {bad}")
    for i in items:
        journal.write({"handled": i["id"]})


def sleepy(event: dict[str, Any], context: Any) -> None:
    """Runs past any short timeout when a record asks it to."""
    items = [_payload(r) for r in event["Records"]]
    journal.write({"invocation": [i["id"] for i in items]})
    if any(i.get("sleep") for i in items):
        time.sleep(max(i.get("sleep", 0) for i in items))


async def async_sleepy(event: dict[str, Any], context: Any) -> None:
    items = [_payload(r) for r in event["Records"]]
    journal.write({"invocation": [i["id"] for i in items]})
    if any(i.get("sleep") for i in items):
        await asyncio.sleep(max(i.get("sleep", 0) for i in items))


def raises_transient(event: dict[str, Any], context: Any) -> None:
    """A handler written for the poller asking for a retry that costs no attempt."""
    from poller.records import TransientError

    raise TransientError("downstream API unavailable")


def reports(event: dict[str, Any], context: Any) -> Any:
    """Answers whatever the test put in the record payloads under `answer`."""
    return _payload(event["Records"][0])["answer"]


def poison_until_fixed(event: dict[str, Any], context: Any) -> None:
    """`poison` until the bug is fixed: once the file named by POISON_FIXED exists,
    poison records are handled like the others."""
    import os

    if os.path.exists(os.environ.get("POISON_FIXED", "")):
        items = [_payload(r) for r in event["Records"]]
        journal.write({"invocation": [i["id"] for i in items]})
        for i in items:
            journal.write({"handled": i["id"]})
        return
    poison(event, context)
