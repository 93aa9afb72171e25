"""A failure record too large for the failure queue is sent as valid JSON within
the queue's limit, whatever in it is long: the payload goes to the fallback file,
and the free-text fields are shortened, never the JSON cut."""

from __future__ import annotations

import hashlib
import json
import time

import pytest

from poller.config import SqsDestination
from poller.destinations import SqsDest
from poller.records import KINESIS, Failure, Record

SQS_FLOOR = 1024  # the smallest MaximumMessageSize SQS allows


def failure(payload: bytes, error: str, partition_key: str) -> Failure:
    record = Record(KINESIS, "orders", "shardId-000000000007", "4" * 56, payload, payload, 0, partition_key)
    now = time.time()
    return Failure(record, "mapping_error", "MappingError", error, 3, now, now)


@pytest.mark.parametrize(
    ("payload", "error", "partition_key", "fallback"),
    [
        (b"x" * 5000, "short", "k", "fallback.jsonl"),
        (b"y" * 2000, "\u00e9" * 3000, "p" * 256, "fallback.jsonl"),  # escapes to 6 bytes a character
        (b"z" * 2000, "e" * 900, "q" * 256, "/var/lib/poller/" + "d" * 900 + "/fallback.jsonl"),
    ],
)
def test_an_oversized_failure_record_is_valid_json_within_the_limit(
    payload: bytes, error: str, partition_key: str, fallback: str
) -> None:
    dest = SqsDest(SqsDestination(type="sqs", queue_url="https://sqs/q", fallback_path=fallback))
    dest.max_bytes = SQS_FLOOR
    body = dest._body(failure(payload, error, partition_key))
    assert len(body.encode()) <= SQS_FLOOR
    doc = json.loads(body)
    assert doc["payload_truncated"] is True and doc["payload_bytes"] == len(payload)
    assert doc["payload_sha256"] == hashlib.sha256(payload).hexdigest()
    assert doc["sequence_number"] == "4" * 56 and doc["reason"] == "mapping_error"


def test_a_failure_record_that_fits_is_sent_whole() -> None:
    dest = SqsDest(SqsDestination(type="sqs", queue_url="https://sqs/q"))
    dest.max_bytes = SQS_FLOOR
    doc = json.loads(dest._body(failure(b'{"id": 1}', "bad", "k")))
    assert doc["payload"] == '{"id": 1}' and "payload_truncated" not in doc
