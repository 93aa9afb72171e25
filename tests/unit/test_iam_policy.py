"""`poller iam-policy`: the actions each part of a stream calls, on the ARNs it names;
and `deploy/iam-policy.json` is the command's output for the example configs.
(That the daemon calls no other action is checked against its logged calls in
tests/integration/test_operator_commands.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from poller.config import parse_stream
from poller.operator.iam import actions, iam_action, policy

ROOT = Path(__file__).resolve().parents[2]


def stream(**over: Any) -> Any:
    data: dict[str, Any] = {
        "name": "orders-eu",
        "source": {"type": "kinesis", "stream": "orders", "region": "eu-west-1"},
        "sink": {"type": "postgres", "dsn": "postgresql://u@db/app", "table": "t"},
    }
    data.update(over)
    return parse_stream(data, "test.yaml", env={})


def statements(*streams: Any, **kw: Any) -> dict[str, dict[str, Any]]:
    return {s["Sid"]: s for s in policy(list(streams), **kw)["Statement"]}


def test_batch_calls_are_authorised_by_their_single_action() -> None:
    assert iam_action("sqs", "DeleteMessageBatch") == "sqs:DeleteMessage"
    assert iam_action("sqs", "ChangeMessageVisibilityBatch") == "sqs:ChangeMessageVisibility"
    assert iam_action("sqs", "SendMessageBatch") == "sqs:SendMessage"
    assert iam_action("dynamodbstreams", "GetRecords") == "dynamodb:GetRecords"
    assert iam_action("lambda", "Invoke") == "lambda:InvokeFunction"
    assert iam_action("kinesis", "ListShards") == "kinesis:ListShards"


def test_a_kinesis_stream_is_read_on_its_own_arn() -> None:
    (s,) = statements(stream()).values()
    assert s["Sid"] == "OrdersEuReadKinesis"
    assert s["Resource"] == "arn:aws:kinesis:eu-west-1:*:stream/orders"
    assert s["Action"] == [
        "kinesis:DescribeStreamSummary",
        "kinesis:GetRecords",
        "kinesis:GetShardIterator",
        "kinesis:ListShards",
    ]
    arn = "arn:aws:kinesis:us-east-2:111122223333:stream/clicks"
    (s,) = statements(stream(source={"type": "kinesis", "stream": arn})).values()
    assert s["Resource"] == arn


def test_a_dynamodb_table_needs_describe_table_only_when_found_by_name() -> None:
    by_table = statements(stream(source={"type": "dynamodb", "table": "users", "region": "us-east-1"}))
    assert by_table["OrdersEuFindStream"]["Action"] == ["dynamodb:DescribeTable"]
    assert by_table["OrdersEuReadStream"]["Resource"] == "arn:aws:dynamodb:us-east-1:*:table/users/stream/*"
    arn = "arn:aws:dynamodb:us-east-1:111122223333:table/users/stream/2024-01-01T00:00:00.000"
    by_arn = statements(stream(source={"type": "dynamodb", "stream_arn": arn}))
    assert list(by_arn) == ["OrdersEuReadStream"] and by_arn["OrdersEuReadStream"]["Resource"] == arn


def test_queues_are_named_from_their_urls_and_a_failure_queue_is_only_sent_to() -> None:
    url = "https://sqs.eu-central-1.amazonaws.com/111122223333/orders"
    failed = "https://sqs.eu-central-1.amazonaws.com/111122223333/orders-failed"
    got = statements(
        stream(
            source={"type": "sqs", "queue_url": url},
            on_failure={"type": "sqs", "queue_url": failed},
        )
    )
    assert got["OrdersEuConsumeQueue"]["Resource"] == "arn:aws:sqs:eu-central-1:111122223333:orders"
    assert got["OrdersEuFailureQueue"] == {
        "Sid": "OrdersEuFailureQueue",
        "Effect": "Allow",
        "Action": ["sqs:GetQueueAttributes", "sqs:SendMessage"],
        "Resource": "arn:aws:sqs:eu-central-1:111122223333:orders-failed",
    }


def test_a_lambda_sink_invokes_only_its_function_and_qualifier() -> None:
    got = statements(
        stream(sink={"type": "lambda", "function": "orders-fn", "qualifier": "live", "region": "eu-west-1"})
    )
    assert got["OrdersEuInvokeFunction"]["Resource"] == "arn:aws:lambda:eu-west-1:*:function:orders-fn:live"
    assert got["OrdersEuInvokeFunction"]["Action"] == ["lambda:InvokeFunction"]


def test_kms_is_an_option_limited_to_the_services_the_streams_use() -> None:
    key = "arn:aws:kms:eu-west-1:111122223333:key/abcd"
    assert "DecryptEncryptedSources" not in statements(stream())
    kms = statements(stream(), kms_keys=[key])["DecryptEncryptedSources"]
    assert kms["Action"] == ["kms:Decrypt"] and kms["Resource"] == key
    assert kms["Condition"] == {"StringEquals": {"kms:ViaService": ["kinesis.eu-west-1.amazonaws.com"]}}


def test_handler_sinks_and_sql_sinks_add_no_aws_action() -> None:
    handler = stream(sink={"type": "handler", "handler": "app:handler"})
    assert actions(policy([handler])) == actions(policy([stream()]))


def test_a_dynamodb_lease_store_gets_what_it_calls_on_its_own_table_only() -> None:
    handler = {"type": "handler", "handler": "app:handler"}
    leased = stream(
        sink=handler,
        coordination={"lease_store": "dynamodb", "table": "orders-leases", "region": "eu-west-1"},
    )
    got = statements(leased)
    assert got["OrdersEuLeases"] == {
        "Sid": "OrdersEuLeases",
        "Effect": "Allow",
        "Action": [
            "dynamodb:ConditionCheckItem",
            "dynamodb:CreateTable",
            "dynamodb:DeleteItem",
            "dynamodb:DescribeTable",
            "dynamodb:GetItem",
            "dynamodb:PutItem",
            "dynamodb:Query",
            "dynamodb:UpdateItem",
        ],
        "Resource": "arn:aws:dynamodb:eu-west-1:*:table/orders-leases",
    }
    default = statements(stream(sink=handler, coordination={"lease_store": "dynamodb"}))
    assert default["OrdersEuLeases"]["Resource"] == "arn:aws:dynamodb:*:*:table/poller-leases"
    # Leases in the sink's database need no AWS permission.
    assert actions(policy([stream(coordination={"lease_seconds": 5})])) == actions(policy([stream()]))


def test_deploy_iam_policy_is_the_commands_output_for_the_examples() -> None:
    # A clean environment: the examples' ${VAR:-default} take their defaults.
    done = subprocess.run(
        [sys.executable, "-m", "poller", "iam-policy", "--config", str(ROOT / "config")],
        capture_output=True,
        text=True,
        env={"PATH": os.environ.get("PATH", "")},
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    committed = json.loads((ROOT / "deploy" / "iam-policy.json").read_text())
    assert json.loads(done.stdout) == committed, "regenerate: poller iam-policy --config config/"
