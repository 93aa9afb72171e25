"""Moving over from Lambda, end to end on moto: an event source mapping's JSON
through `poller import-esm` into a running daemon, and a user-code sink that
needs no `on_failure`.

What a user moving over checks: the imported stream file does what the mapping
did (the same filters, batches, retries and failure queue, the same function
invoked; here the stand-in of the Invoke API in tests/support/fake_lambda.py),
and a record that always fails neither stops the daemon from starting nor
holds back its shard: it lands in the checkpoint store's `poller_failures`.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest

from poller.config import load_path
from poller.operator.iam import actions, iam_action, policy
from tests.handlers import journal
from tests.support.aws import streamed_table
from tests.support.aws_call_log import calls, recording
from tests.support.daemon import Daemon, metric, wait_for
from tests.support.fake_lambda import FakeLambda
from tests.support.servers import MotoServer
from tests.support.threaded import LoopThread

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ESM = ROOT / "tests" / "fixtures" / "esm"


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


def aws(service: str, moto: MotoServer, region: str) -> Any:
    return boto3.client(
        service,
        endpoint_url=moto.url,
        region_name=region,
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


def import_esm(esm: dict[str, Any], tmp: Path) -> str:
    """The stream file `poller import-esm` writes for `esm` (run as a user runs it)."""
    path = tmp / "esm.json"
    path.write_text(json.dumps(esm))
    done = subprocess.run(
        [sys.executable, "-m", "poller", "import-esm", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def daemon_for(text: str, tmp: Path, env: dict[str, str]) -> Daemon:
    """A daemon running exactly `text`, with its checkpoint store in `tmp` (the
    default would be a file in the working folder)."""
    d = Daemon([], env=env)
    assert text.rstrip().splitlines()[-1].startswith("  ")  # `sink:` is the file's last section
    (d.dir / "imported.yaml").write_text(text + f"  checkpoint_dsn: {tmp / 'checkpoints.sqlite'}\n")
    return d


def test_a_kinesis_mapping_imported_and_run_behaves_as_the_mapping_said(
    moto: MotoServer, fake_lambda: FakeLambda, tmp_path: Path
) -> None:
    """kinesis-filters-destination.json: only records its two filter patterns
    match reach the function (a dotted key, numbers written -4e-6 and 1E3, a
    priority of 300.0 against a pattern of 300, anything-but a prefix list), in
    batches of at most BatchSize; a poison record is tried MaximumRetryAttempts
    + 1 times, bisected, and lands in the OnFailure queue with its payload."""
    tag = uuid.uuid4().hex[:6]
    region = "us-east-2"
    stream, queue, function = f"orders-{tag}", f"orders-failed-{tag}", f"orders-consumer-{tag}"
    esm = json.loads(
        (ESM / "kinesis-filters-destination.json")
        .read_text()
        .replace("stream/orders", f"stream/{stream}")
        .replace(":orders-failed", f":{queue}")
        .replace("function:orders-consumer", f"function:{function}")
    )
    kinesis, sqs = aws("kinesis", moto, region), aws("sqs", moto, region)
    kinesis.create_stream(StreamName=stream, ShardCount=1)
    failed_url = sqs.create_queue(QueueName=queue)["QueueUrl"]

    delivered: list[list[dict[str, Any]]] = []

    def consumer(event: dict[str, Any], context: Any) -> dict[str, Any]:
        items = [json.loads(base64.b64decode(r["kinesis"]["data"])) for r in event["Records"]]
        if any(i.get("poison") for i in items):
            raise RuntimeError("poison")
        delivered.append(items)
        return {"batchItemFailures": []}

    fake_lambda.add(function, consumer)
    text = import_esm(esm, tmp_path)

    records = [
        ("p1", {"id": 1, "detail": {"state": "paid"}, "amount": 10}),  # pattern 0
        ("p2", {"id": 2, "detail": {"state": "open"}, "amount": 10}),
        ("p3", {"id": 3, "detail.state": "paid", "amount": 0}),  # pattern 0, dotted in the event
        ("p4", {"id": 4, "detail": {"state": "paid"}, "amount": 5000}),  # above 1E3
        ("p5", {"id": 5, "priority": 300.0}),  # pattern 1: 300.0 is 300
        ("test-6", {"id": 6, "priority": 300}),  # anything-but prefix test-
        ("p7", {"id": 7, "detail": {"state": "paid"}, "amount": 1, "poison": True}),
        ("dev-8", {"id": 8, "detail": {"state": "paid"}, "amount": 1e-7}),  # pattern 0 (> -4e-6)
    ]
    for key, item in records:
        kinesis.put_record(StreamName=stream, Data=json.dumps(item).encode(), PartitionKey=key)

    env = {"AWS_ENDPOINT_URL": moto.url, "AWS_ENDPOINT_URL_LAMBDA": fake_lambda.url}
    with daemon_for(text, tmp_path, env) as d:
        d.wait_ready()
        failed = wait_for(
            lambda: sqs.receive_message(QueueUrl=failed_url, WaitTimeSeconds=1).get("Messages"),
            50,
            message="the poison record in the OnFailure queue",
        )
        wait_for(lambda: {i["id"] for b in delivered for i in b} == {1, 3, 5, 8}, 20, message="all")
        assert metric(d, "poller_records_total", stream=f"orders-{tag}-{function}", outcome="filtered") == 3
        assert d.stop() == 0, d.tail()

    invoked = [[r["kinesis"]["partitionKey"] for r in i.event["Records"]] for i in fake_lambda.invocations]
    assert all(len(batch) <= 500 for batch in invoked)
    assert not {"p2", "p4", "test-6"} & {key for batch in invoked for key in batch}
    poisoned = [batch for batch in invoked if batch == ["p7"]]
    assert len(poisoned) == 3  # alone after bisection, MaximumRetryAttempts 2 + 1 attempts
    assert len(failed) == 1
    body = json.loads(failed[0]["Body"])
    assert json.loads(body["payload"])["id"] == 7
    assert (body["reason"], body["attempts"]) == ("function_error", 3)


def test_an_sqs_mapping_imported_and_run_filters_and_batches_as_the_mapping_said(
    moto: MotoServer, fake_lambda: FakeLambda, tmp_path: Path
) -> None:
    """sqs.json: messages whose body the filter does not match are deleted
    without an invocation; the others reach the function in batches of at most
    10, and a reported batch item failure sends that message back to the queue."""
    tag = uuid.uuid4().hex[:6]
    region = "us-east-2"
    queue, function = f"my-queue-{tag}", f"my-function-{tag}"
    esm = json.loads(
        (ESM / "sqs.json")
        .read_text()
        .replace(":my-queue", f":{queue}")
        .replace("function:my-function", f"function:{function}")
    )
    sqs = aws("sqs", moto, region)
    url = sqs.create_queue(QueueName=queue, Attributes={"VisibilityTimeout": "2"})["QueueUrl"]
    seen: list[str] = []

    def consumer(event: dict[str, Any], context: Any) -> dict[str, Any]:
        failures = []
        for r in event["Records"]:
            body = json.loads(r["body"])
            seen.append(body["n"])
            if body["n"] == "once" and seen.count("once") == 1:
                failures.append({"itemIdentifier": r["messageId"]})
        return {"batchItemFailures": failures}

    fake_lambda.add(function, consumer)
    text = import_esm(esm, tmp_path)
    wanted = [json.dumps({"RequestCode": "BBBB", "n": str(i)}) for i in range(25)]
    others = [json.dumps({"RequestCode": "AAAA", "n": f"x{i}"}) for i in range(5)] + ["plain text"]
    bodies = [*wanted, *others, json.dumps({"RequestCode": "BBBB", "n": "once"})]
    for start in range(0, len(bodies), 10):
        chunk = bodies[start : start + 10]
        sqs.send_message_batch(
            QueueUrl=url, Entries=[{"Id": str(i), "MessageBody": b} for i, b in enumerate(chunk)]
        )

    env = {"AWS_ENDPOINT_URL": moto.url, "AWS_ENDPOINT_URL_LAMBDA": fake_lambda.url}
    with daemon_for(text, tmp_path, env) as d:
        d.wait_ready()
        wait_for(lambda: seen.count("once") == 2 and len(set(seen)) == 26, 40, message="every match")

        def depth() -> int:
            attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
            return int(attrs["ApproximateNumberOfMessages"]) + int(
                attrs["ApproximateNumberOfMessagesNotVisible"]
            )

        wait_for(lambda: depth() == 0, 30, message="every message deleted")
        assert d.stop() == 0, d.tail()
    assert sorted(set(seen)) == sorted([str(i) for i in range(25)] + ["once"])
    assert all(len(i.event["Records"]) <= 10 for i in fake_lambda.invocations)


def test_a_dynamodb_mapping_imported_and_run_filters_on_the_new_image_and_keeps_failures(
    moto: MotoServer, fake_lambda: FakeLambda, tmp_path: Path
) -> None:
    """dynamodb.json: only INSERT and MODIFY of items whose NewImage has status
    "active" reach the function; MaximumRetryAttempts 0 tries a failing record
    once, alone after bisection; its SNS destination has no counterpart, so the
    record is kept in the checkpoint store's poller_failures, as the import said."""
    tag = uuid.uuid4().hex[:6]
    region = "us-east-1"
    table, function = f"BarkTable-{tag}", f"publishNewBark-{tag}"
    ddb = aws("dynamodb", moto, region)
    arn = streamed_table(ddb, table)
    esm = json.loads((ESM / "dynamodb.json").read_text())
    esm["EventSourceArn"] = arn
    esm["FunctionArn"] = esm["FunctionArn"].replace("function:publishNewBark", f"function:{function}")

    delivered: list[tuple[str, str]] = []

    def consumer(event: dict[str, Any], context: Any) -> None:
        for r in event["Records"]:
            if "poison" in r["dynamodb"]["NewImage"]:
                raise RuntimeError("poison")
        delivered.extend((r["eventName"], r["dynamodb"]["Keys"]["id"]["S"]) for r in event["Records"])

    fake_lambda.add(function, consumer)
    text = import_esm(esm, tmp_path)

    def item(key: str, status: str, **more: dict[str, str]) -> dict[str, Any]:
        return {"id": {"S": key}, "status": {"S": status}, **more}

    ddb.put_item(TableName=table, Item=item("a", "active"))  # INSERT, active
    ddb.put_item(TableName=table, Item=item("b", "retired"))  # INSERT, filtered out
    ddb.put_item(TableName=table, Item=item("a", "active", note={"S": "edited"}))  # MODIFY, active
    ddb.put_item(TableName=table, Item=item("p", "active", poison={"BOOL": True}))  # fails
    ddb.delete_item(TableName=table, Key={"id": {"S": "a"}})  # REMOVE, filtered out
    ddb.put_item(TableName=table, Item=item("c", "active"))

    env = {"AWS_ENDPOINT_URL": moto.url, "AWS_ENDPOINT_URL_LAMBDA": fake_lambda.url}
    store = tmp_path / "checkpoints.sqlite"
    name = f"{table}-{function}"
    with daemon_for(text, tmp_path, env) as d:
        d.wait_ready()
        wait_for(
            lambda: delivered == [("INSERT", "a"), ("MODIFY", "a"), ("INSERT", "c")],
            40,
            message=f"the matching changes delivered in order (so far {delivered})",
        )
        wait_for(
            lambda: metric(d, "poller_records_total", stream=name, outcome="filtered") == 2,
            10,
            message="the retired item and the removal filtered out",
        )
        assert d.stop() == 0, d.tail()
    with sqlite3.connect(store) as db:
        rows = db.execute("SELECT stream, reason, attempts, payload FROM poller_failures").fetchall()
    assert [(r[0], r[1], r[2]) for r in rows] == [(name, "function_error", 1)]
    kept = json.loads(rows[0][3])
    assert kept["eventName"] == "INSERT" and kept["dynamodb"]["Keys"] == {"id": {"S": "p"}}


def test_a_handler_on_kinesis_needs_no_on_failure_and_keeps_failures_in_its_checkpoint_store(
    moto: MotoServer, tmp_path: Path
) -> None:
    """No on_failure, as with Lambda: the daemon starts, the record that always
    fails lands in the store's poller_failures, and the shard goes on past it."""
    name = f"no-dest-{uuid.uuid4().hex[:6]}"
    kinesis = aws("kinesis", moto, "us-east-1")
    kinesis.create_stream(StreamName=name, ShardCount=1)
    log, store = tmp_path / "handler.jsonl", tmp_path / "checkpoints.sqlite"
    cfg = {
        "name": "no_destination",
        "source": {
            "type": "kinesis",
            "stream": name,
            "endpoint_url": moto.url,
            "region": "us-east-1",
            "idle_poll_seconds": 0.2,
        },
        "batch": {"size": 10, "window_seconds": 0.2},
        "retry": {"max_attempts": 2, "backoff_initial_seconds": 0.05, "backoff_max_seconds": 0.2},
        "sink": {
            "type": "handler",
            "handler": "tests.handlers.failing:poison",
            "code_path": str(ROOT),
            "checkpoint_dsn": str(store),
        },
    }
    with Daemon([cfg], env={"HANDLER_LOG": str(log)}) as d:
        d.wait_ready()
        sequences = [
            kinesis.put_record(
                StreamName=name, Data=json.dumps({"id": i, "poison": i == 4}).encode(), PartitionKey="k"
            )["SequenceNumber"]
            for i in range(10)
        ]
        wait_for(
            lambda: (
                sorted(e["handled"] for e in journal.read(log) if "handled" in e)
                == [*range(4), *range(5, 10)]
            ),
            40,
            message="every record but the poison one handled",
        )
        wait_for(lambda: _checkpoint(store) == sequences[-1], 20, message="the checkpoint at the last record")
        assert d.stop() == 0, d.tail()
    with sqlite3.connect(store) as db:
        rows = db.execute(
            "SELECT stream, sequence_number, reason, attempts, payload FROM poller_failures"
        ).fetchall()
    assert rows == [
        ("no_destination", sequences[4], "handler_error", 2, json.dumps({"id": 4, "poison": True}))
    ]


def _checkpoint(store: Path) -> str | None:
    try:
        with sqlite3.connect(store) as db:
            row = db.execute(
                "SELECT sequence_number FROM poller_checkpoints WHERE shard_id NOT LIKE '%#%'"
            ).fetchone()
    except sqlite3.Error:
        return None
    return row[0] if row else None


def test_iam_policy_holds_the_snapshot_scan_and_the_function_invoke_the_daemon_made(
    moto: MotoServer, fake_lambda: FakeLambda, tmp_path: Path
) -> None:
    """A DynamoDB table snapshotted, then its stream, into a lambda function, with
    every AWS call logged at the daemon's own clients: `poller iam-policy` for
    that stream file names each action seen (Scan and InvokeFunction included)."""
    tag = uuid.uuid4().hex[:6]
    table, function = f"iam-snap-{tag}", f"iam-fn-{tag}"
    ddb = aws("dynamodb", moto, "us-east-1")
    streamed_table(ddb, table)
    ddb.put_item(TableName=table, Item={"id": {"S": "before"}})
    seen: list[str] = []  # the keys delivered
    fake_lambda.add(
        function,
        lambda event, context: seen.extend(r["dynamodb"]["Keys"]["id"]["S"] for r in event["Records"]),
    )
    cfg = {
        "name": f"iam_snapshot_{tag}",
        "source": {
            "type": "dynamodb",
            "table": table,
            "region": "us-east-1",
            "snapshot": {"mode": "initial", "segments": 1},
        },
        "sink": {
            "type": "lambda",
            "function": f"arn:aws:lambda:us-east-1:123456789012:function:{function}",
            "region": "us-east-1",
            "checkpoint_dsn": str(tmp_path / "checkpoints.sqlite"),
        },
    }
    log = tmp_path / "calls.log"
    env = {"AWS_ENDPOINT_URL": moto.url, "AWS_ENDPOINT_URL_LAMBDA": fake_lambda.url, **recording(log)}
    with Daemon([cfg], env=env) as d:
        d.wait_ready()
        wait_for(lambda: "before" in seen, 30, message="the snapshot's item delivered")
        ddb.put_item(TableName=table, Item={"id": {"S": "after"}})
        # (The stream delivers "before" again too: it was written within the snapshot's margin.)
        wait_for(lambda: "after" in seen, 30, message="the stream's item delivered")
        assert d.stop() == 0, d.tail()
    observed = {iam_action(service, operation) for service, operation in calls(log)}
    assert {"dynamodb:Scan", "lambda:InvokeFunction", "dynamodb:GetRecords"} <= observed
    (loaded,) = load_path(d.dir, env={})
    missing = observed - actions(policy([loaded]))
    assert not missing, f"the policy lacks {sorted(missing)}"
