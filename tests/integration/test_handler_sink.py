"""Lambda code run by the poller: the `handler` sink (a function in the daemon's
process) and the `lambda` sink (a deployed function, here a stand-in of the
Invoke API), against moto's SQS, Kinesis and DynamoDB over HTTP.

What a user moving off Lambda checks: the handler runs unchanged and gets the
event Lambda would give it, `batchItemFailures` send back exactly the records
it names, a function error is isolated by bisection, throttling costs no
attempt, and a handler that is idempotent survives a redelivery.

Most tests run the daemon end to end (SQS, Kinesis, DynamoDB Streams). The
last ones run the sinks and the failure policy on stream units built from
records read from moto's Kinesis, below the Kinesis source, where each
invocation can be followed exactly.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import pytest

from poller.config import StreamConfig
from poller.destinations import FileDest
from poller.processing.failures import Decision, FailurePolicy, Unit
from poller.processing.pipeline import Preparer
from poller.records import KINESIS, Checkpoint, Record, RecordError
from poller.sinks.base import Transaction
from poller.sinks.factory import build_sink
from poller.sinks.handler import EventSink
from tests.handlers import journal
from tests.support import db
from tests.support.aws import client, queue_depth, send_all
from tests.support.daemon import Daemon, metric, wait_for, with_overrides
from tests.support.fake_lambda import FakeLambda
from tests.support.fault_proxy import FaultProxy
from tests.support.servers import MotoServer
from tests.support.threaded import LoopThread

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "esm_events"


def sample(name: str) -> dict[str, Any]:
    event: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return event


def new_queue(sqs: Any, name: str, **attrs: str) -> str:
    return str(sqs.create_queue(QueueName=name, Attributes=attrs)["QueueUrl"])


def queue_arn(sqs: Any, url: str) -> str:
    return str(sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"])


def handler_sink(handler: str, tmp: Path, **over: Any) -> dict[str, Any]:
    return {
        "type": "handler",
        "handler": handler,
        "code_path": str(ROOT),
        "checkpoint_dsn": str(tmp / "checkpoints.sqlite"),
        "timeout_seconds": 30,
        **over,
    }


def sqs_stream(name: str, queue_url: str, endpoint: str, sink: dict[str, Any], **over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "name": name,
        "source": {
            "type": "sqs",
            "queue_url": queue_url,
            "endpoint_url": endpoint,
            "region": "us-east-1",
            "wait_seconds": 1,
            "max_concurrency": 2,
        },
        "batch": {"size": 50, "window_seconds": 0.2},
        "retry": {"max_attempts": 2, "backoff_initial_seconds": 0.1, "backoff_max_seconds": 1},
        "sink": sink,
    }
    return with_overrides(cfg, over)


def received_events(log: Path) -> list[dict[str, Any]]:
    return [e for e in journal.read(log) if "event" in e]


def received_records(log: Path) -> list[dict[str, Any]]:
    return [r for e in received_events(log) for r in e["event"]["Records"]]


def assert_like_sqs_sample(got: dict[str, Any], sent: dict[str, Any], queue: str) -> None:
    """Field by field against the documented sample: the same fields in the
    same order and of the same types; what is not per-message, equal."""
    expected = sample("sqs")["Records"][0 if sent.get("MessageAttributes") else 1]
    keys = list(got)
    if "md5OfMessageAttributes" in keys:  # sent by Lambda whenever there are message attributes
        assert sent.get("MessageAttributes")
        keys.remove("md5OfMessageAttributes")
    assert keys == list(expected)
    for key, value in expected.items():
        assert type(got[key]) is type(value), key
    assert got["messageId"] == sent["MessageId"]
    assert got["receiptHandle"]
    assert got["body"] == sent["MessageBody"]
    assert set(expected["attributes"]) <= set(got["attributes"])
    assert got["attributes"]["ApproximateReceiveCount"] == "1"
    assert got["messageAttributes"] == expected["messageAttributes"]
    assert got["md5OfBody"] == expected["md5OfBody"]  # both bodies are "Test message."
    assert got["eventSource"] == "aws:sqs"
    assert re.fullmatch(rf"arn:aws:sqs:us-east-1:\d{{12}}:{re.escape(queue)}", got["eventSourceARN"])
    assert got["awsRegion"] == "us-east-1"


SAMPLE_MESSAGES: list[dict[str, Any]] = [
    {
        "MessageBody": "Test message.",
        "MessageAttributes": {"myAttribute": {"StringValue": "myValue", "DataType": "String"}},
    },
    {"MessageBody": "Test message."},
]


def send_samples(sqs: Any, url: str) -> list[dict[str, Any]]:
    sent = []
    for m in SAMPLE_MESSAGES:
        resp = sqs.send_message(QueueUrl=url, **m)
        sent.append({**m, "MessageId": resp["MessageId"]})
    return sent


# -- handler sink, SQS, end to end through the daemon ----------------------------------------------


@pytest.mark.parametrize("function", ["lambda_handler", "async_handler"])
def test_sqs_handler_gets_the_lambda_event_and_context(
    moto: MotoServer, tmp_path: Path, function: str
) -> None:
    sqs = client("sqs", moto.url)
    queue = f"handler-event-{uuid.uuid4().hex[:6]}"
    url = new_queue(sqs, queue)
    log = tmp_path / "handler.jsonl"
    sink = handler_sink(f"tests.handlers.recorder:{function}", tmp_path, function_name="orders-consumer")
    # One poller: moto may hand one message to two concurrent long polls, which
    # counts as two receives (here and in the tests below that count attempts).
    one_poller = {"max_concurrency": 1}
    cfg = sqs_stream("handler_event", url, moto.url, sink, source=one_poller)
    with Daemon([cfg], env={"HANDLER_LOG": str(log)}) as d:
        d.wait_ready()
        sent = send_samples(sqs, url)
        wait_for(lambda: len(received_records(log)) == 2, 60, message="both messages handed to the handler")
        wait_for(lambda: queue_depth(sqs, url) == 0, 60, message="messages deleted")
        assert d.stop() == 0
    calls = received_events(log)
    assert {c["kind"] for c in calls} == {"sync" if function == "lambda_handler" else "async"}
    by_id = {r["messageId"]: r for c in calls for r in c["event"]["Records"]}
    assert list(calls[0]["event"]) == ["Records"]
    for m in sent:
        assert_like_sqs_sample(by_id[m["MessageId"]], m, queue)
    for c in calls:
        ctx = c["context"]
        assert ctx["function_name"] == "orders-consumer"
        assert ctx["function_version"] == "$LATEST"
        assert re.fullmatch(r"[0-9a-f-]{36}", ctx["aws_request_id"])
        assert re.fullmatch(
            r"arn:aws:lambda:us-east-1:\d{12}:function:orders-consumer", ctx["invoked_function_arn"]
        )
        assert ctx["memory_limit_in_mb"] == "128"
        assert 0 < ctx["remaining_ms"] <= 30_000
        assert ctx["log_group_name"] == "/aws/lambda/orders-consumer"
        assert "[$LATEST]" in ctx["log_stream_name"]
    assert len({c["context"]["aws_request_id"] for c in calls}) == len(calls)


def test_sqs_powertools_partial_batch_returns_only_the_failed_messages(
    moto: MotoServer, tmp_path: Path
) -> None:
    """A Powertools BatchProcessor handler fails 2 messages of 100: those two,
    and only they, go back to the queue (and on to its DLQ); the 98 others are
    handled once each and deleted."""
    sqs = client("sqs", moto.url)
    suffix = uuid.uuid4().hex[:6]
    dlq = new_queue(sqs, f"partial-dlq-{suffix}")
    url = new_queue(
        sqs,
        f"partial-{suffix}",
        VisibilityTimeout="10",
        RedrivePolicy=json.dumps({"deadLetterTargetArn": queue_arn(sqs, dlq), "maxReceiveCount": "2"}),
    )
    log = tmp_path / "handler.jsonl"
    failing = {23, 71}
    bodies = [json.dumps({"id": i, "fail": i in failing}) for i in range(100)]
    sink = handler_sink("tests.handlers.powertools_batch:sqs_handler", tmp_path)
    cfg = sqs_stream(
        "handler_partial",
        url,
        moto.url,
        sink,
        source={"max_concurrency": 1},
        batch={"size": 100, "window_seconds": 1},
    )
    with Daemon([cfg], env={"HANDLER_LOG": str(log)}) as d:
        d.wait_ready()
        send_all(sqs, url, bodies)
        wait_for(lambda: queue_depth(sqs, dlq) == 2, 90, message="the two failed messages in the DLQ")
        wait_for(lambda: queue_depth(sqs, url) == 0, 60, message="main queue drained")
        assert metric(d, "poller_bisections_total", stream="handler_partial") == 0
        assert metric(d, "poller_sqs_released_messages_total", stream="handler_partial") >= 2
        assert d.stop() == 0
    entries = journal.read(log)
    handled = [e["handled"] for e in entries if "handled" in e]
    assert sorted(handled) == [i for i in range(100) if i not in failing]  # each once: none came back
    tries = [e["failed"] for e in entries if "failed" in e]
    assert sorted(set(tries)) == sorted(failing)
    assert all(tries.count(i) == 2 for i in failing)  # maxReceiveCount deliveries each
    dead = sqs.receive_message(QueueUrl=dlq, MaxNumberOfMessages=10)["Messages"]
    assert sorted(json.loads(m["Body"])["id"] for m in dead) == sorted(failing)


def test_a_message_received_again_while_its_handler_runs_is_handled_once(
    moto: MotoServer, tmp_path: Path
) -> None:
    """The visibility extensions are lost (the proxy drops them), so SQS hands
    the message to the daemon's other poller while the handler still works on
    it. The second copy joins the one in flight: one invocation, and the
    message deleted afterwards."""
    sqs = client("sqs", moto.url)
    url = new_queue(sqs, f"handler-again-{uuid.uuid4().hex[:6]}", VisibilityTimeout="2")
    log = tmp_path / "handler.jsonl"
    loop = LoopThread()
    proxy = FaultProxy(moto.url)
    proxy_url = loop.run(proxy.start())
    try:
        extend = {"ChangeMessageVisibility", "ChangeMessageVisibilityBatch"}
        loop.call(proxy.set_faults, drop=1.0, only_targets=extend)
        sink = handler_sink("tests.handlers.failing:sleepy", tmp_path)
        cfg = sqs_stream("handler_again", url, proxy_url, sink, batch={"size": 1, "window_seconds": 0})
        with Daemon([cfg], env={"HANDLER_LOG": str(log)}) as d:
            d.wait_ready()
            send_all(sqs, url, [json.dumps({"id": 1, "sleep": 6})])
            wait_for(
                lambda: metric(d, "poller_records_total", stream="handler_again", outcome="duplicate") >= 1,
                30,
                message="the message received a second time",
            )
            wait_for(lambda: queue_depth(sqs, url) == 0, 30, message="message deleted")
            assert d.stop() == 0
        invocations = [e["invocation"] for e in journal.read(log) if "invocation" in e]
        assert invocations == [[1]]
    finally:
        loop.run(proxy.stop())
        loop.close()


def test_fifo_handler_idempotent_with_dynamodb_survives_redelivery(moto: MotoServer, tmp_path: Path) -> None:
    """The daemon dies (SIGKILL, from inside the handler) after a message's
    effect but before its checkpoint. SQS delivers the batch again to the next
    daemon; the handler's conditional put on MessageDeduplicationId keeps
    every message's effect to one."""
    sqs = client("sqs", moto.url)
    ddb = client("dynamodb", moto.url)
    suffix = uuid.uuid4().hex[:6]
    processed, totals = f"processed-{suffix}", f"totals-{suffix}"
    for table, key in ((processed, "dedup_id"), (totals, "id")):
        ddb.create_table(
            TableName=table,
            KeySchema=[{"AttributeName": key, "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": key, "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
    url = new_queue(sqs, f"idempotent-{suffix}.fifo", FifoQueue="true", VisibilityTimeout="3")
    orders = [{"id": i, "amount": i + 0.5, "crash": i == 4} for i in range(10)]
    for o in orders:
        sqs.send_message(
            QueueUrl=url,
            MessageBody=json.dumps(o),
            MessageGroupId="customer-1",
            MessageDeduplicationId=f"order-{o['id']}",
        )
    log, marker = tmp_path / "handler.jsonl", tmp_path / "crashed"
    env = {
        "HANDLER_LOG": str(log),
        "CRASH_MARKER": str(marker),
        "DYNAMODB_ENDPOINT": moto.url,
        "PROCESSED_TABLE": processed,
        "TOTALS_TABLE": totals,
    }
    sink = handler_sink("tests.handlers.fifo_idempotent:lambda_handler", tmp_path)
    cfg = sqs_stream("handler_fifo", url, moto.url, sink, source={"max_concurrency": 1}, batch={"size": 10})
    crashed = Daemon([cfg], env=env).start()
    try:
        assert crashed.wait(60) == -9, crashed.tail()
    finally:
        crashed.stop()
    assert marker.exists()
    with Daemon([cfg], env=env) as d:
        wait_for(lambda: queue_depth(sqs, url) == 0, 90, message="every message processed and deleted")
        assert d.stop() == 0
    entries = journal.read(log)
    applied = [e["dedup_id"] for e in entries if e["effect"] == "applied"]
    assert sorted(applied) == sorted(f"order-{o['id']}" for o in orders)  # each exactly once
    redelivered = [e for e in entries if e["effect"] == "duplicate"]
    assert "order-4" in {e["dedup_id"] for e in redelivered}
    assert all(int(e["receive_count"]) >= 2 for e in redelivered)
    item = ddb.get_item(TableName=totals, Key={"id": {"S": "all"}})["Item"]
    assert int(item["orders"]["N"]) == len(orders)
    assert float(item["amount"]["N"]) == pytest.approx(sum(o["amount"] for o in orders))


def test_a_handler_stuck_past_its_timeout_does_not_hold_up_shutdown(moto: MotoServer, tmp_path: Path) -> None:
    """Python cannot stop the thread of a plain handler that overran its
    timeout; SIGTERM must still drain and exit 0 while it sleeps on."""
    sqs = client("sqs", moto.url)
    url = new_queue(sqs, f"handler-stuck-{uuid.uuid4().hex[:6]}")
    log = tmp_path / "handler.jsonl"
    sink = handler_sink("tests.handlers.failing:sleepy", tmp_path, timeout_seconds=0.5)
    cfg = sqs_stream("handler_stuck", url, moto.url, sink)
    with Daemon([cfg], env={"HANDLER_LOG": str(log)}, shutdown_timeout=10) as d:
        d.wait_ready()
        send_all(sqs, url, [json.dumps({"id": 1, "sleep": 600})])
        wait_for(lambda: journal.read(log), 30, message="the handler started")
        timed_out = {"stream": "handler_stuck", "error_class": "record"}
        wait_for(
            lambda: metric(d, "poller_sink_errors_total", **timed_out), 30, message="the invocation timed out"
        )
        assert d.stop() == 0, d.tail()


# -- lambda sink, SQS, end to end through the daemon against a stand-in Invoke API -------------------


@pytest.fixture
def fake_lambda() -> Any:
    loop = LoopThread()
    fake = FakeLambda()
    loop.run(fake.start())
    try:
        yield fake
    finally:
        loop.run(fake.stop())
        loop.close()


def lambda_sink(fake: FakeLambda, function: str, tmp: Path) -> dict[str, Any]:
    return {
        "type": "lambda",
        "function": function,
        "endpoint_url": fake.url,
        "region": "us-east-1",
        "checkpoint_dsn": str(tmp / "checkpoints.sqlite"),
        "timeout_seconds": 30,
    }


def test_lambda_sink_invokes_the_function_with_the_lambda_event(
    moto: MotoServer, fake_lambda: FakeLambda, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.handlers import recorder

    log = tmp_path / "function.jsonl"
    monkeypatch.setenv("HANDLER_LOG", str(log))  # the function runs in this process
    fake_lambda.add("orders-consumer", recorder.lambda_handler)
    sqs = client("sqs", moto.url)
    queue = f"lambda-event-{uuid.uuid4().hex[:6]}"
    url = new_queue(sqs, queue)
    cfg = sqs_stream("lambda_event", url, moto.url, lambda_sink(fake_lambda, "orders-consumer", tmp_path))
    with Daemon([cfg]) as d:
        d.wait_ready()
        sent = send_samples(sqs, url)
        wait_for(lambda: queue_depth(sqs, url) == 0, 60, message="messages delivered and deleted")
        assert d.stop() == 0
    by_id = {r["messageId"]: r for r in received_records(log)}
    assert sorted(by_id) == sorted(m["MessageId"] for m in sent)
    for m in sent:
        assert_like_sqs_sample(by_id[m["MessageId"]], m, queue)


def test_lambda_function_error_is_bisected_to_the_poison_message(
    moto: MotoServer, fake_lambda: FakeLambda, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.handlers import failing

    log, dead = tmp_path / "function.jsonl", tmp_path / "failed.jsonl"
    monkeypatch.setenv("HANDLER_LOG", str(log))
    fake_lambda.add("orders-consumer", failing.poison)
    sqs = client("sqs", moto.url)
    url = new_queue(sqs, f"lambda-poison-{uuid.uuid4().hex[:6]}", VisibilityTimeout="10")
    cfg = sqs_stream(
        "lambda_poison",
        url,
        moto.url,
        lambda_sink(fake_lambda, "orders-consumer", tmp_path),
        source={"max_concurrency": 1},
        batch={"size": 20, "window_seconds": 1},
        on_failure={"type": "file", "path": str(dead)},
    )
    with Daemon([cfg]) as d:
        d.wait_ready()
        send_all(sqs, url, [json.dumps({"id": i, "poison": i == 13}) for i in range(20)])
        wait_for(lambda: dead.exists() and dead.read_text().strip(), 90, message="poison message failed")
        wait_for(lambda: queue_depth(sqs, url) == 0, 60, message="queue drained")
        assert metric(d, "poller_bisections_total", stream="lambda_poison") >= 1
        assert d.stop() == 0
    handled = [e["handled"] for e in journal.read(log) if "handled" in e]
    assert sorted(handled) == [i for i in range(20) if i != 13]
    failures = journal.read(dead)
    assert [json.loads(f["payload"])["id"] for f in failures] == [13]
    assert failures[0]["reason"] == "function_error"
    assert "RuntimeError: poison record(s) [13]" in failures[0]["error_message"]
    # Isolated, then delivered max_attempts times (SQS counts attempts in receives).
    assert [e["invocation"] for e in journal.read(log) if "invocation" in e].count([13]) == 2
    assert any(i.function_error for i in fake_lambda.invocations)


def test_lambda_throttling_is_retried_without_costing_attempts(
    moto: MotoServer, fake_lambda: FakeLambda, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With max_attempts 1 any counted attempt would send a message to the
    failure file; five throttled invocations send none."""
    from tests.handlers import failing

    log, dead = tmp_path / "function.jsonl", tmp_path / "failed.jsonl"
    monkeypatch.setenv("HANDLER_LOG", str(log))
    fake_lambda.add("orders-consumer", failing.poison)
    fake_lambda.throttle(5)
    sqs = client("sqs", moto.url)
    url = new_queue(sqs, f"lambda-throttle-{uuid.uuid4().hex[:6]}")
    cfg = sqs_stream(
        "lambda_throttle",
        url,
        moto.url,
        lambda_sink(fake_lambda, "orders-consumer", tmp_path),
        retry={"max_attempts": 1},
        on_failure={"type": "file", "path": str(dead)},
    )
    with Daemon([cfg]) as d:
        d.wait_ready()
        send_all(sqs, url, [json.dumps({"id": i}) for i in range(10)])
        wait_for(lambda: queue_depth(sqs, url) == 0, 60, message="queue drained")
        assert metric(d, "poller_throttles_total", stream="lambda_throttle", operation="Invoke") == 5
        assert metric(d, "poller_retries_total", stream="lambda_throttle", error_class="transient") >= 5
        assert metric(d, "poller_records_total", stream="lambda_throttle", outcome="failed") == 0
        assert d.stop() == 0
    assert fake_lambda.throttled == 5
    assert sorted(e["handled"] for e in journal.read(log) if "handled" in e) == list(range(10))
    assert not dead.exists()


# -- handler sink, Kinesis, end to end through the daemon -------------------------------------------


def kinesis_stream(
    name: str, stream: str, endpoint: str, sink: dict[str, Any], **over: Any
) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "name": name,
        "source": {
            "type": "kinesis",
            "stream": stream,
            "endpoint_url": endpoint,
            "region": "us-east-1",
            "idle_poll_seconds": 0.2,
            "shard_discovery_seconds": 0.5,
        },
        "batch": {"size": 100, "window_seconds": 0.5},
        "retry": {"max_attempts": 3, "backoff_initial_seconds": 0.05, "backoff_max_seconds": 0.2},
        "sink": sink,
    }
    return with_overrides(cfg, over)


def put_items(moto: MotoServer, stream: str, items: list[dict[str, Any]]) -> list[str]:
    """Put `items` in order on a one-shard stream; their sequence numbers."""
    kinesis = client("kinesis", moto.url)
    resp = kinesis.put_records(
        StreamName=stream, Records=[{"Data": json.dumps(i).encode(), "PartitionKey": "orders"} for i in items]
    )
    assert not resp.get("FailedRecordCount"), resp
    return [r["SequenceNumber"] for r in resp["Records"]]


def new_stream(moto: MotoServer, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    client("kinesis", moto.url).create_stream(StreamName=name, ShardCount=1)
    return name


def test_kinesis_powertools_partial_batch_through_the_daemon(moto: MotoServer, tmp_path: Path) -> None:
    """2 of 100 records fail in a Powertools handler: the checkpoint stops just
    before the lower one and every retry starts there; after max_attempts both
    are in the failure file and the checkpoint is at the last record."""
    stream = new_stream(moto, "handler-partial")
    failing = {37, 74}
    seq = put_items(moto, stream, [{"id": i, "fail": i in failing} for i in range(100)])
    log, dead, store = tmp_path / "handler.jsonl", tmp_path / "failed.jsonl", tmp_path / "checkpoints.sqlite"
    cfg = kinesis_stream(
        "kinesis_partial",
        stream,
        moto.url,
        handler_sink("tests.handlers.kinesis_observer:lambda_handler", tmp_path),
        on_failure={"type": "file", "path": str(dead)},
    )
    env = {"HANDLER_LOG": str(log), "CHECKPOINT_DB": str(store)}
    with Daemon([cfg], env=env) as d:
        d.wait_ready()
        wait_for(lambda: len(journal.read(dead)) == 2, 60, message="both failed records in the failure file")
        wait_for(
            lambda: metric(d, "poller_records_total", stream="kinesis_partial", outcome="written") == 98,
            30,
            message="the others written",
        )
        assert d.stop() == 0
    invocations = [e for e in journal.read(log) if "invocation" in e]
    assert invocations[0] == {"invocation": seq, "checkpoint": None}
    retries = invocations[1:]
    assert [r["invocation"][0] for r in retries] == [seq[37]] * 2 + [seq[38]]
    assert all(r["checkpoint"] == seq[36] for r in retries)
    assert retries[-1]["invocation"] == [s for i, s in enumerate(seq) if i > 37 and i not in failing]
    assert [json.loads(f["payload"])["id"] for f in journal.read(dead)] == sorted(failing)
    with sqlite3.connect(store) as db:
        assert db.execute("SELECT sequence_number FROM poller_checkpoints").fetchall() == [(seq[-1],)]


def test_kinesis_handler_resumes_from_a_database_checkpoint_store(
    moto: MotoServer, database: tuple[str, str], tmp_path: Path
) -> None:
    """The checkpoint store in PostgreSQL / MariaDB: after a clean stop and a
    restart the handler gets only what it had not been given."""
    kind, dsn = database
    name = f"handler_resume_{kind}"
    db.drop_bookkeeping(kind, dsn, name)
    stream = new_stream(moto, "handler-resume")
    log, dead = tmp_path / "handler.jsonl", tmp_path / "failed.jsonl"
    sink = handler_sink("tests.handlers.recorder:lambda_handler", tmp_path, checkpoint_dsn=dsn)
    cfg = kinesis_stream(name, stream, moto.url, sink, on_failure={"type": "file", "path": str(dead)})

    def delivered() -> list[str]:
        return [r["kinesis"]["sequenceNumber"] for e in received_events(log) for r in e["event"]["Records"]]

    first = put_items(moto, stream, [{"id": i} for i in range(30)])
    with Daemon([cfg], env={"HANDLER_LOG": str(log)}) as d:
        wait_for(lambda: delivered() == first, 60, message="the first 30 records")
        assert d.stop() == 0
    stored = db.fetch(kind, dsn, "SELECT sequence_number FROM poller_checkpoints WHERE stream = %s", (name,))
    assert stored == [(first[-1],)]
    second = put_items(moto, stream, [{"id": i} for i in range(30, 50)])
    with Daemon([cfg], env={"HANDLER_LOG": str(log)}) as d:
        wait_for(lambda: delivered() == first + second, 60, message="only the 20 new records")
        assert d.stop() == 0
    assert not dead.exists()


# -- handler sink, DynamoDB Streams, end to end through the daemon -----------------------------------


def test_dynamodb_handler_gets_the_lambda_event(moto: MotoServer, tmp_path: Path) -> None:
    ddb = client("dynamodb", moto.url)
    table = f"handler-users-{uuid.uuid4().hex[:6]}"
    ddb.create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "Id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "Id", "AttributeType": "N"}],
        BillingMode="PAY_PER_REQUEST",
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
    )
    log, dead = tmp_path / "handler.jsonl", tmp_path / "failed.jsonl"
    cfg = {
        "name": "dynamodb_handler",
        "source": {
            "type": "dynamodb",
            "table": table,
            "endpoint_url": moto.url,
            "region": "us-east-1",
            "idle_poll_seconds": 0.1,
            "shard_discovery_seconds": 1,
        },
        "batch": {"size": 10, "window_seconds": 0.5},
        "on_failure": {"type": "file", "path": str(dead)},
        "sink": handler_sink("tests.handlers.recorder:lambda_handler", tmp_path),
    }
    created = {"Id": {"N": "101"}, "Message": {"S": "New item!"}}
    changed = {"Id": {"N": "101"}, "Message": {"S": "This item has changed"}}
    ddb.put_item(TableName=table, Item=created)
    ddb.put_item(TableName=table, Item=changed)
    with Daemon([cfg], env={"HANDLER_LOG": str(log)}) as d:
        d.wait_ready()
        wait_for(
            lambda: len(received_records(log)) == 2, 60, message="INSERT and MODIFY handed to the handler"
        )
        assert d.stop() == 0
    got = received_records(log)
    expected = sample("dynamodb")["Records"]
    assert [r["eventName"] for r in got] == ["INSERT", "MODIFY"]
    stream_arn = ddb.describe_table(TableName=table)["Table"]["LatestStreamArn"]
    for g, e in zip(got, expected, strict=True):
        assert sorted(g) == sorted(e)
        for key, value in e.items():
            assert type(g[key]) is type(value), key
        # Lambda adds the change's time, which the documented sample leaves out.
        assert sorted(set(g["dynamodb"]) - {"ApproximateCreationDateTime"}) == sorted(e["dynamodb"])
        assert g["dynamodb"]["Keys"] == {"Id": {"N": "101"}}
        assert g["dynamodb"]["StreamViewType"] == "NEW_AND_OLD_IMAGES"
        assert g["eventSource"] == "aws:dynamodb"
        assert g["eventSourceARN"] == stream_arn
        assert g["awsRegion"] == "us-east-1"
    assert got[0]["dynamodb"]["NewImage"] == created
    assert (got[1]["dynamodb"]["OldImage"], got[1]["dynamodb"]["NewImage"]) == (created, changed)


# -- Kinesis, below the source: handler / lambda sink + failure policy on stream units ---------------


def kinesis_records(moto: MotoServer, items: list[dict[str, Any]]) -> list[Record]:
    """Put `items` on a one-shard moto stream and read them back as the Kinesis
    source builds records: the API record kept as `raw`."""
    kinesis = client("kinesis", moto.url)
    name = f"handler-{uuid.uuid4().hex[:6]}"
    kinesis.create_stream(StreamName=name, ShardCount=1)
    for start in range(0, len(items), 500):
        kinesis.put_records(
            StreamName=name,
            Records=[
                {"Data": json.dumps(i).encode(), "PartitionKey": "orders"} for i in items[start : start + 500]
            ],
        )
    desc = kinesis.describe_stream(StreamName=name)["StreamDescription"]
    shard = desc["Shards"][0]["ShardId"]
    it = kinesis.get_shard_iterator(StreamName=name, ShardId=shard, ShardIteratorType="TRIM_HORIZON")[
        "ShardIterator"
    ]
    raw: list[dict[str, Any]] = []
    while len(raw) < len(items):
        resp = kinesis.get_records(ShardIterator=it, Limit=10_000)
        raw += resp["Records"]
        it = resp["NextShardIterator"]
    return [
        Record(
            source=KINESIS,
            stream=name,
            shard_id=shard,
            sequence_number=r["SequenceNumber"],
            data=r["Data"],
            raw_data=r["Data"],
            partition_key=r["PartitionKey"],
            arrival_time=r["ApproximateArrivalTimestamp"].timestamp(),
            raw=r,
            event_source_arn=desc["StreamARN"],
            region="us-east-1",
        )
        for r in raw
    ]


def stream_config(sink: dict[str, Any], dead: Path, max_attempts: int) -> StreamConfig:
    return StreamConfig.model_validate(
        {
            "name": "kinesis_handler",
            "source": {"type": "kinesis", "stream": "orders"},
            "decode": "json",
            "retry": {
                "max_attempts": max_attempts,
                "backoff_initial_seconds": 0.01,
                "backoff_max_seconds": 0.05,
            },
            "on_failure": {"type": "file", "path": str(dead)},
            "sink": sink,
        }
    )


async def run_stream_batch(cfg: StreamConfig, records: list[Record]) -> tuple[list[Unit], Checkpoint]:
    """What a shard reader does with one batch: units, the failure policy, a
    checkpoint after the last unit of each commit."""
    sink = build_sink(cfg, None)
    assert isinstance(sink, EventSink)
    destination = FileDest(cfg.on_failure.path)  # type: ignore[union-attr]
    await sink.open()
    try:
        units = Preparer(cfg, sink).stream_units(records)

        def build_tx(active: list[Unit]) -> Transaction:
            last = active[-1].token
            tx = Transaction(
                stream=cfg.name,
                checkpoints=[Checkpoint(cfg.name, last.shard_id, last.sequence_number, last.sub_sequence)],
            )
            return tx

        def decide(u: Unit, _: RecordError) -> Decision:
            return "fail" if u.attempts >= cfg.retry.max_attempts else "retry"

        policy = FailurePolicy(cfg.name, cfg.retry, sink, destination, build_tx=build_tx, decide=decide)
        await policy.commit(units)
        checkpoints = await sink.load_checkpoints(cfg.name)
    finally:
        await sink.close()
    return units, checkpoints[records[0].shard_id]


def test_kinesis_event_matches_the_documented_sample(
    moto: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "handler.jsonl"
    monkeypatch.setenv("HANDLER_LOG", str(log))
    records = kinesis_records(moto, [{"id": i} for i in range(3)])
    sink = handler_sink("tests.handlers.recorder:lambda_handler", tmp_path)
    cfg = stream_config(sink, tmp_path / "failed.jsonl", 3)
    _, checkpoint = asyncio.run(run_stream_batch(cfg, records))
    assert checkpoint.sequence_number == records[-1].sequence_number
    (call,) = received_events(log)
    expected = sample("kinesis")["Records"][0]
    for record, got in zip(records, call["event"]["Records"], strict=True):
        assert list(got) == list(expected)
        assert list(got["kinesis"]) == list(expected["kinesis"])
        for key, value in expected.items():
            assert type(got[key]) is type(value), key
        for key, value in expected["kinesis"].items():
            assert type(got["kinesis"][key]) is type(value), key
        for key in ("eventSource", "eventVersion", "eventName"):
            assert got[key] == expected[key]
        assert got["kinesis"]["kinesisSchemaVersion"] == "1.0"
        assert got["kinesis"]["partitionKey"] == "orders"
        assert got["kinesis"]["sequenceNumber"] == record.sequence_number
        assert base64.b64decode(got["kinesis"]["data"]) == record.raw_data
        assert got["eventID"] == f"{record.shard_id}:{record.sequence_number}"
        assert got["eventSourceARN"] == record.event_source_arn
        assert got["awsRegion"] == "us-east-1"


def test_kinesis_powertools_partial_batch_checkpoints_before_the_lowest_failure(
    moto: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """2 of 100 records fail in a Powertools handler. The checkpoint moves to
    just before the lower one and the retry starts there, with every record
    after it (per-key order); after max_attempts the two go to the failure
    destination and the checkpoint reaches the end."""
    log, dead = tmp_path / "handler.jsonl", tmp_path / "failed.jsonl"
    monkeypatch.setenv("HANDLER_LOG", str(log))
    monkeypatch.setenv("CHECKPOINT_DB", str(tmp_path / "checkpoints.sqlite"))
    failing = {37, 74}
    records = kinesis_records(moto, [{"id": i, "fail": i in failing} for i in range(100)])
    seq = [r.sequence_number for r in records]
    sink = handler_sink("tests.handlers.kinesis_observer:lambda_handler", tmp_path)
    units, checkpoint = asyncio.run(run_stream_batch(stream_config(sink, dead, 3), records))

    invocations = [e for e in journal.read(log) if "invocation" in e]
    assert invocations[0] == {"invocation": seq, "checkpoint": None}
    # Retries start at the lowest failed record, with the checkpoint just before it.
    assert invocations[1] == {"invocation": seq[37:], "checkpoint": seq[36]}
    assert invocations[2] == {"invocation": seq[37:], "checkpoint": seq[36]}
    # Attempts exhausted: both failed records are left out, the rest delivered once more.
    assert invocations[3] == {
        "invocation": [s for i, s in enumerate(seq) if i >= 37 and i not in failing],
        "checkpoint": seq[36],
    }
    assert len(invocations) == 4
    assert checkpoint.sequence_number == seq[-1]
    failures = journal.read(dead)
    assert [json.loads(f["payload"])["id"] for f in failures] == sorted(failing)
    assert {f["attempts"] for f in failures} == {3}
    assert {f["reason"] for f in failures} == {"partial_batch_failure"}
    handled = [e["handled"] for e in journal.read(log) if "handled" in e]
    assert all(handled.count(i) == 1 for i in range(37))  # before the failure: once
    assert set(handled) == set(range(100)) - failing
    assert [u.failure is not None for u in units].count(True) == 2


def test_kinesis_lambda_function_error_is_bisected(
    moto: MotoServer, fake_lambda: FakeLambda, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.handlers import failing

    log, dead = tmp_path / "function.jsonl", tmp_path / "failed.jsonl"
    monkeypatch.setenv("HANDLER_LOG", str(log))
    fake_lambda.add("orders-consumer", failing.poison)
    records = kinesis_records(moto, [{"id": i, "poison": i == 11} for i in range(16)])
    cfg = stream_config(lambda_sink(fake_lambda, "orders-consumer", tmp_path), dead, 2)
    _, checkpoint = asyncio.run(run_stream_batch(cfg, records))
    assert checkpoint.sequence_number == records[-1].sequence_number
    handled = [e["handled"] for e in journal.read(log) if "handled" in e]
    assert handled == [i for i in range(16) if i != 11]  # each once, in order
    failures = journal.read(dead)
    assert [json.loads(f["payload"])["id"] for f in failures] == [11]
    assert failures[0]["reason"] == "function_error"
    assert failures[0]["attempts"] == 2
    poisoned = [i for i in fake_lambda.invocations if i.function_error]
    assert poisoned[-1].event["Records"][0]["kinesis"]["sequenceNumber"] == records[11].sequence_number
    assert len(poisoned[-1].event["Records"]) == 1  # bisected down to the one record
