"""An SQS FIFO consumer that makes itself idempotent, as Lambda code must
(delivery is at least once): each message's effect is written in one DynamoDB
transaction with a conditional put of its MessageDeduplicationId, so a
redelivered message finds its id taken and changes nothing.

The effect is not idempotent on its own (it adds to running totals), so the
totals show whether any message was applied twice. With CRASH_MARKER set, the
process kills itself right after applying a message whose body says
`"crash": true`, once: the crash that makes SQS deliver the batch again.
"""

from __future__ import annotations

import json
import os
import signal
from typing import Any

import boto3

from tests.handlers import journal

# Created once per process, outside the handler, as Lambda code does.
dynamodb = boto3.client("dynamodb", endpoint_url=os.environ.get("DYNAMODB_ENDPOINT"), region_name="us-east-1")
PROCESSED = os.environ.get("PROCESSED_TABLE", "processed")
TOTALS = os.environ.get("TOTALS_TABLE", "totals")


def lambda_handler(event: dict[str, Any], context: Any) -> None:
    for record in event["Records"]:
        dedup_id = record["attributes"]["MessageDeduplicationId"]
        order = json.loads(record["body"])
        try:
            dynamodb.transact_write_items(
                TransactItems=[
                    {
                        "Put": {
                            "TableName": PROCESSED,
                            "Item": {"dedup_id": {"S": dedup_id}},
                            "ConditionExpression": "attribute_not_exists(dedup_id)",
                        }
                    },
                    {
                        "Update": {
                            "TableName": TOTALS,
                            "Key": {"id": {"S": "all"}},
                            "UpdateExpression": "ADD amount :amount, orders :one",
                            "ExpressionAttributeValues": {
                                ":amount": {"N": str(order["amount"])},
                                ":one": {"N": "1"},
                            },
                        }
                    },
                ]
            )
            effect = "applied"
        except dynamodb.exceptions.TransactionCanceledException:
            effect = "duplicate"
        journal.write(
            {
                "dedup_id": dedup_id,
                "effect": effect,
                "receive_count": record["attributes"]["ApproximateReceiveCount"],
            }
        )
        marker = os.environ.get("CRASH_MARKER")
        if order.get("crash") and marker and not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
