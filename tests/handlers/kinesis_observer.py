"""The Powertools Kinesis handler, watched: each invocation writes down the
sequence numbers it was given and the checkpoint the poller had stored when
it started (read from the SQLite checkpoint store named by CHECKPOINT_DB)."""

from __future__ import annotations

import os
import sqlite3
from typing import Any

from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse

from tests.handlers import journal, powertools_batch


def _stored_checkpoint() -> str | None:
    with sqlite3.connect(os.environ["CHECKPOINT_DB"]) as db:
        # `#start` keeps a LATEST start, not a position of the shard.
        row = db.execute(
            "SELECT sequence_number FROM poller_checkpoints WHERE shard_id <> '#start'"
        ).fetchone()
    return None if row is None else str(row[0])


def lambda_handler(event: dict[str, Any], context: Any) -> PartialItemFailureResponse:
    journal.write(
        {
            "invocation": [r["kinesis"]["sequenceNumber"] for r in event["Records"]],
            "checkpoint": _stored_checkpoint(),
        }
    )
    return powertools_batch.kinesis_handler(event, context)
