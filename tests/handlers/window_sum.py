"""A tumbling-window handler written as Lambda's documentation writes one: it
sums the records' `value` per window into its `state`, returns the state, and
on the window's final invocation writes the total down.

Every invocation is written to the journal (HANDLER_LOG): the event's keys in
order, its window fields, the state it was given, the records' sequence
numbers and what it returned.

What a record's JSON payload may ask for, to test failures:
- `"poison": true`: the invocation raises;
- `"fail": true`: the record is named in `batchItemFailures` (the state then
  holds the records before the first one named);
- `"pad": N`: N characters are added to the state (to outgrow its bound).
`FINAL_FAILURES` (in-process tests only): how many final invocations raise.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from tests.handlers import journal

FINAL_FAILURES = 0


def _payload(record: dict[str, Any]) -> dict[str, Any]:
    if "kinesis" in record:
        value: dict[str, Any] = json.loads(base64.b64decode(record["kinesis"]["data"]))
        return value
    image = record["dynamodb"].get("NewImage", {})
    return {"value": int(image.get("value", {}).get("N", 0))}


def _sequence(record: dict[str, Any]) -> str:
    if "kinesis" in record:
        return str(record["kinesis"]["sequenceNumber"])
    return str(record["dynamodb"]["SequenceNumber"])


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    global FINAL_FAILURES
    entry = {
        "keys": list(event),
        "window": event["window"],
        "shard": event["shardId"],
        "arn": event["eventSourceARN"],
        "final": event["isFinalInvokeForWindow"],
        "early": event["isWindowTerminatedEarly"],
        "state_in": event["state"],
        "records": [_sequence(r) for r in event["Records"]],
    }
    if event["isFinalInvokeForWindow"]:
        if FINAL_FAILURES > 0:
            FINAL_FAILURES -= 1
            journal.write({**entry, "raised": True})
            raise RuntimeError("the aggregate could not be sent")
        journal.write({**entry, "total": event["state"].get("sum", 0)})
        return {"state": {}}
    state = dict(event["state"])
    failures: list[dict[str, str]] = []
    for record in event["Records"]:
        payload = _payload(record)
        if payload.get("poison"):
            journal.write({**entry, "raised": True})
            raise ValueError("poison record")
        if payload.get("fail") or failures:
            if payload.get("fail"):
                failures.append({"itemIdentifier": _sequence(record)})
            continue
        state["sum"] = state.get("sum", 0) + payload.get("value", 0)
        state["count"] = state.get("count", 0) + 1
        if payload.get("pad"):
            state["pad"] = state.get("pad", "") + "x" * int(payload["pad"])
    journal.write({**entry, "state_out": {k: v for k, v in state.items() if k != "pad"}})
    return {"state": state, "batchItemFailures": failures}


def without_state(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Forgets to return the state (Lambda counts that a failed invocation)."""
    journal.write(
        {"records": [_sequence(r) for r in event["Records"]], "final": event["isFinalInvokeForWindow"]}
    )
    return {}


def counts_in_place(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The documentation's example: records counted per partition key in the
    very state object it was given, raising half-way on a poison record."""
    state = event["state"]
    for record in event["Records"]:
        key = record["kinesis"]["partitionKey"]
        state[key] = state.get(key, 0) + 1
        if _payload(record).get("poison"):
            raise ValueError("poison record")
    journal.write(
        {"records": [_sequence(r) for r in event["Records"]], "final": event["isFinalInvokeForWindow"]}
    )
    return {"state": state}
