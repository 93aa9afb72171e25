"""The handler and lambda sinks without AWS: how an answer is read, how an
event is cut to Lambda's payload limit, the context object, the config rules,
and the handler sink with its SQLite checkpoint store and the failure policy.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from pathlib import Path
from typing import Any

import pytest

from poller.config import HandlerSinkConfig, RetryConfig, parse_stream
from poller.context import LambdaContext, function_arn
from poller.destinations import Destination
from poller.events import lambda_event
from poller.processing.failures import Decision, FailurePolicy, Unit
from poller.records import SQS, PartialFailure, Record, RecordError, TransientError
from poller.sinks.base import MessageWrite, Transaction
from poller.sinks.handler import (
    HandlerError,
    HandlerLoadError,
    HandlerSink,
    HandlerTimeout,
    batch_item_failures,
)
from poller.sinks.lambda_sink import split_event
from tests.handlers import concurrency, journal

ROOT = str(Path(__file__).resolve().parents[2])
QUEUE_ARN = "arn:aws:sqs:us-east-2:123456789012:my-queue"


def sqs_record(i: int, body: Any) -> Record:
    text = body if isinstance(body, str) else json.dumps(body)
    message_id = f"msg-{i}"
    return Record(
        source=SQS,
        stream="orders",
        shard_id="",
        sequence_number=message_id,
        data=text.encode(),
        raw_data=text.encode(),
        meta={"message_id": message_id, "receive_count": 1},
        raw={
            "MessageId": message_id,
            "ReceiptHandle": f"handle-{i}",
            "Body": text,
            "Attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": "1545082649183"},
        },
        event_source_arn=QUEUE_ARN,
        region="us-east-2",
    )


# -- reading an answer as Lambda does ------------------------------------------------------------

RECORDS = [sqs_record(i, {"id": i}) for i in range(3)]


@pytest.mark.parametrize(
    "answer",
    [None, {}, {"batchItemFailures": None}, {"batchItemFailures": []}, "done", [1, 2], 42, {"status": "ok"}],
)
def test_answers_that_mean_every_record_succeeded(answer: Any) -> None:
    assert batch_item_failures(answer, RECORDS) == set()


def test_named_records_failed() -> None:
    answer = {"batchItemFailures": [{"itemIdentifier": "msg-0"}, {"itemIdentifier": "msg-2"}]}
    assert batch_item_failures(answer, RECORDS) == {"msg-0", "msg-2"}


@pytest.mark.parametrize(
    "items",
    [
        [{"itemIdentifier": ""}],
        [{"itemIdentifier": None}],
        [{"itemIdentifier": "msg-9"}],  # not in this batch
        [{"itemidentifier": "msg-0"}],  # bad key name
        [{"itemIdentifier": 0}],
        ["msg-0"],
        "msg-0",
    ],
)
def test_answers_that_fail_the_whole_batch(items: Any) -> None:
    with pytest.raises(RecordError) as info:
        batch_item_failures({"batchItemFailures": items}, RECORDS)
    assert not isinstance(info.value, PartialFailure)


# -- the 6 MB payload limit ---------------------------------------------------------------------


def test_a_small_event_is_one_payload_equal_to_the_event() -> None:
    records = [sqs_record(i, {"id": i}) for i in range(5)]
    ((part, payload),) = split_event(records)
    assert part == records
    assert json.loads(payload) == lambda_event(records)


def test_a_large_event_is_cut_in_order_into_payloads_under_the_limit() -> None:
    records = [sqs_record(i, {"id": i, "pad": "x" * (1000 + 37 * i)}) for i in range(40)]
    limit = 8_000
    parts = split_event(records, limit)
    assert len(parts) > 1
    assert [r for part, _ in parts for r in part] == records
    for part, payload in parts:
        assert len(payload) <= limit
        assert json.loads(payload) == lambda_event(part)
    # As few payloads as fit: each would overflow with the next part's first record.
    for (_, payload), (following, _) in itertools.pairwise(parts):
        first = json.dumps(lambda_event(following[:1])["Records"][0], separators=(",", ":")).encode()
        assert len(payload) + 1 + len(first) > limit


def test_one_record_over_the_limit_stands_alone() -> None:
    records = [sqs_record(0, {"id": 0}), sqs_record(1, {"pad": "x" * 5000}), sqs_record(2, {"id": 2})]
    parts = split_event(records, 2_000)
    assert [len(p) for p, _ in parts] == [1, 1, 1]
    assert len(parts[1][1]) > 2_000  # the sink refuses it as a record error


# -- the context object ----------------------------------------------------------------------------


def test_context_has_what_the_python_runtime_gives() -> None:
    ctx = LambdaContext(
        function_name="orders",
        invoked_function_arn=function_arn("orders", "us-east-2", QUEUE_ARN),
        memory_limit_in_mb=512,
        timeout_seconds=3,
        log_stream_name="2026/01/01/[$LATEST]abc",
    )
    assert ctx.invoked_function_arn == "arn:aws:lambda:us-east-2:123456789012:function:orders"
    assert ctx.memory_limit_in_mb == "512"  # a string, as the runtime reads it from the environment
    assert ctx.function_version == "$LATEST"
    assert ctx.log_group_name == "/aws/lambda/orders"
    assert re.fullmatch(r"[0-9a-f-]{36}", ctx.aws_request_id)
    assert 0 < ctx.get_remaining_time_in_millis() <= 3000
    assert ctx.identity is None and ctx.client_context is None
    ctx.log("hello")


def test_function_arn_without_an_account_in_the_source_arn() -> None:
    assert function_arn("f", "eu-west-1", "") == "arn:aws:lambda:eu-west-1:000000000000:function:f"


# -- configuration --------------------------------------------------------------------------------

SQS_SOURCE = {"type": "sqs", "queue_url": "https://sqs.us-east-1.amazonaws.com/1/orders"}
HANDLER = {"type": "handler", "handler": "tests.handlers.recorder:lambda_handler"}
LAMBDA = {"type": "lambda", "function": "orders-consumer"}


@pytest.mark.parametrize("sink", [HANDLER, LAMBDA])
@pytest.mark.parametrize(
    "source", [{"type": "kinesis", "stream": "orders"}, {"type": "dynamodb", "table": "users"}]
)
def test_a_stream_source_needs_no_on_failure_destination(sink: Any, source: Any) -> None:
    """As with Lambda, none is required: failures go to the checkpoint store's poller_failures."""
    assert parse_stream({"name": "s", "source": source, "sink": sink}, "s.yaml").on_failure is None
    ok = parse_stream(
        {"name": "s", "source": source, "sink": sink, "on_failure": {"type": "file", "path": "/f"}}, "s.yaml"
    )
    assert ok.sink.type == sink["type"]


@pytest.mark.parametrize("sink", [HANDLER, LAMBDA])
def test_sqs_without_destination_leaves_it_to_the_redrive_policy(sink: Any) -> None:
    assert parse_stream({"name": "s", "source": SQS_SOURCE, "sink": sink}, "s.yaml").on_failure is None


def test_a_table_destination_is_kept_in_the_checkpoint_store_of_user_code() -> None:
    cfg = parse_stream(
        {"name": "s", "source": SQS_SOURCE, "sink": HANDLER, "on_failure": {"type": "table"}}, "s.yaml"
    )
    assert cfg.on_failure is not None and cfg.on_failure.type == "table"


def test_user_code_gets_raw_payloads_unless_a_decoder_is_asked_for() -> None:
    assert parse_stream({"name": "s", "source": SQS_SOURCE, "sink": HANDLER}, "s.yaml").decoders == ["none"]
    explicit = {"name": "s", "source": SQS_SOURCE, "sink": HANDLER, "decode": "kpl"}
    assert parse_stream(explicit, "s.yaml").decoders == ["kpl"]
    db = {"type": "sqlite", "dsn": "x.sqlite", "table": "t"}
    assert parse_stream({"name": "s", "source": SQS_SOURCE, "sink": db}, "s.yaml").decoders == ["json"]


# -- the handler sink itself -----------------------------------------------------------------------


def handler_cfg(tmp_path: Path, handler: str, **over: Any) -> HandlerSinkConfig:
    return HandlerSinkConfig.model_validate(
        {
            "type": "handler",
            "handler": handler,
            "code_path": ROOT,
            "checkpoint_dsn": str(tmp_path / "cp.sqlite"),
            **over,
        }
    )


def tx_of(records: list[Record]) -> Transaction:
    return Transaction(
        stream="orders", messages=[MessageWrite(r.sequence_number, []) for r in records], records=records
    )


@pytest.fixture
def log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "handler.jsonl"
    monkeypatch.setenv("HANDLER_LOG", str(path))
    return path


@pytest.mark.parametrize("handler", ["sleepy", "async_sleepy"])
async def test_a_handler_past_its_timeout_fails_the_batch(tmp_path: Path, log: Path, handler: str) -> None:
    sink = HandlerSink(handler_cfg(tmp_path, f"tests.handlers.failing:{handler}", timeout_seconds=0.2), "s")
    await sink.open()
    try:
        with pytest.raises(HandlerTimeout, match=r"Task timed out after 0.2 seconds"):
            await sink.commit(tx_of([sqs_record(0, {"id": 0, "sleep": 1})]))
        await sink.commit(tx_of([sqs_record(1, {"id": 1})]))  # the next batch runs
    finally:
        await sink.close()


async def test_an_exception_is_a_record_error_naming_it(tmp_path: Path, log: Path) -> None:
    sink = HandlerSink(handler_cfg(tmp_path, "tests.handlers.failing:poison"), "s")
    await sink.open()
    try:
        with pytest.raises(HandlerError, match=r"RuntimeError: poison record\(s\) \[1\]"):
            await sink.commit(tx_of([sqs_record(0, {"id": 0}), sqs_record(1, {"id": 1, "poison": True})]))
    finally:
        await sink.close()


async def test_a_transient_error_from_the_handler_stays_transient(tmp_path: Path) -> None:
    sink = HandlerSink(handler_cfg(tmp_path, "tests.handlers.failing:raises_transient"), "s")
    await sink.open()
    try:
        with pytest.raises(TransientError, match="downstream API unavailable"):
            await sink.commit(tx_of([sqs_record(0, {"id": 0})]))
    finally:
        await sink.close()


@pytest.mark.parametrize(
    ("handler", "message"),
    [
        (
            "tests.handlers.no_such_module:handler",
            "cannot import handler module 'tests.handlers.no_such_module'",
        ),
        ("tests.handlers.failing:no_such_function", "has no function 'no_such_function'"),
    ],
)
async def test_a_handler_that_cannot_be_loaded_stops_open(tmp_path: Path, handler: str, message: str) -> None:
    sink = HandlerSink(handler_cfg(tmp_path, handler), "s")
    with pytest.raises(HandlerLoadError, match=re.escape(message)):
        await sink.open()
    await sink.close()


async def test_invocations_do_not_overlap_by_default(tmp_path: Path) -> None:
    sink = HandlerSink(handler_cfg(tmp_path, "tests.handlers.concurrency:lambda_handler"), "s")
    await sink.open()
    concurrency.most = 0
    try:
        await asyncio.gather(*(sink.deliver([sqs_record(i, {"id": i})]) for i in range(4)))
    finally:
        await sink.close()
    assert concurrency.most == 1


async def test_a_processed_sqs_message_is_not_handed_over_again(tmp_path: Path, log: Path) -> None:
    sink = HandlerSink(handler_cfg(tmp_path, "tests.handlers.recorder:lambda_handler"), "s")
    await sink.open()
    try:
        first = [sqs_record(0, "a"), sqs_record(1, "b")]
        await sink.commit(tx_of(first))
        again = [sqs_record(1, "b"), sqs_record(2, "c")]  # msg-1 redelivered
        result = await sink.commit(tx_of(again))
    finally:
        await sink.close()
    events = [[r["messageId"] for r in e["event"]["Records"]] for e in journal.read(log)]
    assert events == [["msg-0", "msg-1"], ["msg-2"]]
    assert result.duplicate_ids == {"msg-1"}


async def test_a_store_outage_after_the_handler_ran_does_not_run_it_again(tmp_path: Path, log: Path) -> None:
    sink = HandlerSink(handler_cfg(tmp_path, "tests.handlers.recorder:lambda_handler"), "s")
    await sink.open()
    try:
        tx = tx_of([sqs_record(0, "a")])
        await sink.store.close()  # the checkpoint store goes away after the handler is called
        with pytest.raises(TransientError):
            await sink.commit(tx)
        await sink.store.open()
        await sink.commit(tx)  # the policy's retry: only recorded this time
        assert await sink.processed_ids("orders", ["msg-0"]) == {"msg-0"}
    finally:
        await sink.close()
    assert len(journal.read(log)) == 1


async def test_partial_failure_of_unordered_units_fails_only_those(tmp_path: Path, log: Path) -> None:
    """SQS semantics through the failure policy: the named messages go back
    (released), the others commit without being handed over again."""
    sink = HandlerSink(handler_cfg(tmp_path, "tests.handlers.powertools_batch:sqs_handler"), "s")
    records = [sqs_record(i, {"id": i, "fail": i in (2, 5)}) for i in range(8)]
    units = [Unit(source=r, records=[r], index=i) for i, r in enumerate(records)]

    def build_tx(active: list[Unit]) -> Transaction:
        return Transaction(
            stream="orders", messages=[MessageWrite(u.source.sequence_number, []) for u in active]
        )

    def decide(u: Unit, e: RecordError) -> Decision:
        assert isinstance(e, PartialFailure)
        return "release"

    await sink.open()
    try:
        retry = RetryConfig(backoff_initial_seconds=0.001, backoff_max_seconds=0.01)
        policy = FailurePolicy("orders", retry, sink, Destination(), build_tx, decide, ordered=False)
        await policy.commit(units)
        processed = await sink.processed_ids("orders", [r.sequence_number for r in records])
    finally:
        await sink.close()
    assert [u.index for u in units if u.released] == [2, 5]
    assert processed == {f"msg-{i}" for i in range(8) if i not in (2, 5)}
    handled = [e["handled"] for e in journal.read(log) if "handled" in e]
    assert handled == [0, 1, 3, 4, 6, 7]  # once each: not handed over again
