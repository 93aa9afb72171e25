"""On-failure destinations. Lambda's failure records carry no payload; ours
carry the record, its error, and its attempts.

`table` is written by the sink in the transaction that moves the checkpoint
past the record. `sqs` and `file` are written just before that transaction, so
a crash in between sends the record again (at least once, never lost). An
unreachable destination is a transient error: the stream waits.
"""

from __future__ import annotations

import asyncio
import json
import os
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from poller.aws import aws_client, classify_aws
from poller.config import FileDestination, OnFailure, SqsDestination, TableDestination
from poller.observability.logging import get_logger
from poller.records import TransientError
from poller.sinks.base import Failure
from poller.sinks.coercion import json_default

log = get_logger()


class Destination:
    name = "none"
    in_transaction = False

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def send(self, failures: list[Failure]) -> None:
        for f in failures:
            log.error(
                "record dropped: no on_failure destination",
                stream=f.record.stream,
                shard=f.record.shard_id,
                sequence=f.record.sequence_number,
                reason=f.reason,
                error=f.error_message,
            )


class TableDest(Destination):
    name = "table"
    in_transaction = True

    def __init__(self, table: str):
        self.table = table


class FileDest(Destination):
    name = "file"

    def __init__(self, path: str):
        self.path = Path(path)
        self._lock = asyncio.Lock()

    async def send(self, failures: list[Failure]) -> None:
        lines = "".join(json.dumps(f.as_dict(), default=json_default) + "\n" for f in failures)
        async with self._lock:
            try:
                await asyncio.to_thread(self._append, lines)
            except OSError as e:
                raise TransientError(f"cannot write failure file {self.path}: {e}") from e

    def _append(self, lines: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(lines)
            fh.flush()
            os.fsync(fh.fileno())


class SqsDest(Destination):
    name = "sqs"

    def __init__(self, cfg: SqsDestination):
        self.cfg = cfg
        self._stack = AsyncExitStack()
        self._client: Any = None

    async def open(self) -> None:
        self._client = await self._stack.enter_async_context(
            aws_client("sqs", self.cfg.region, self.cfg.endpoint_url)
        )

    async def close(self) -> None:
        await self._stack.aclose()

    async def send(self, failures: list[Failure]) -> None:
        fifo = self.cfg.queue_url.endswith(".fifo")
        for start in range(0, len(failures), 10):
            chunk = failures[start : start + 10]
            entries = []
            for i, f in enumerate(chunk):
                body = json.dumps(f.as_dict(), default=json_default)
                entry: dict[str, Any] = {"Id": str(i), "MessageBody": body}
                if fifo:
                    entry["MessageGroupId"] = f"{f.record.stream}:{f.record.shard_id}"[:128]
                    entry["MessageDeduplicationId"] = (
                        f"{f.record.shard_id}:{f.record.sequence_number}:{f.record.sub_sequence}"[-128:]
                    )
                entries.append(entry)
            try:
                resp = await self._client.send_message_batch(QueueUrl=self.cfg.queue_url, Entries=entries)
            except Exception as e:
                raise (
                    classify_aws(e)
                    if isinstance(classify_aws(e), TransientError)
                    else TransientError(f"failure queue refused the batch: {e}")
                ) from e
            if resp.get("Failed"):
                raise TransientError(
                    f"failure queue refused {len(resp['Failed'])} message(s): {resp['Failed'][0]}"
                )


def build_destination(cfg: OnFailure | None, default_table: bool) -> Destination:
    if isinstance(cfg, TableDestination):
        return TableDest(cfg.table)
    if isinstance(cfg, FileDestination):
        return FileDest(cfg.path)
    if isinstance(cfg, SqsDestination):
        return SqsDest(cfg)
    return TableDest("poller_failures") if default_table else Destination()
