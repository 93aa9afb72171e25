"""Partial batch responses with Powertools' BatchProcessor, as its docs show.

A record whose JSON payload has `"fail": true` raises in the record handler;
Powertools then reports it in `batchItemFailures`. Each record handled is
written down with its id.
"""

from __future__ import annotations

import json
from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.kinesis_stream_event import KinesisStreamRecord
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from tests.handlers import journal

# By default Powertools raises when every record of a batch failed (a function
# error, which the poller bisects); a retry batch made only of the failing
# messages would then depend on how they came back together. Reported per
# message instead, each delivery is one attempt.
sqs_processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
kinesis_processor = BatchProcessor(event_type=EventType.KinesisDataStreams)


def _handle(item: dict[str, Any], ident: str) -> None:
    if item.get("fail"):
        journal.write({"failed": item["id"], "item": ident})
        raise ValueError(f"order {item['id']} cannot be processed")
    journal.write({"handled": item["id"], "item": ident})


def sqs_record(record: SQSRecord) -> None:
    _handle(json.loads(record.body), record.message_id)


def kinesis_record(record: KinesisStreamRecord) -> None:
    _handle(record.kinesis.data_as_json(), record.kinesis.sequence_number)


def sqs_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    return process_partial_response(
        event=event, record_handler=sqs_record, processor=sqs_processor, context=context
    )


def kinesis_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    return process_partial_response(
        event=event, record_handler=kinesis_record, processor=kinesis_processor, context=context
    )
