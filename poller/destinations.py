"""On-failure destinations. Lambda's failure records carry no payload; ours
carry the record, its error, and its attempts.

`table` is written by the sink in the transaction that moves the checkpoint
past the record. `sqs` and `file` are written just before that transaction, so
a crash in between sends the record again (at least once, never lost). An
unreachable destination is a transient error: the stream waits.

A destination that refuses a failure because of what it contains (a NUL byte
a text column cannot hold, a body over the queue's `MaximumMessageSize`)
never blocks the stream: the failure is stored in a form it accepts (base64
payload; or, for a queue, a truncated body carrying the payload's size and
SHA-256) and, where anything had to be left out, whole in the fallback file
(`fallback_path`, JSON lines), which the stored record names.

The `file` destination and the fallback file are written by
`failure_file.append_lines`: a record starts on a fresh line, a failed write
leaves the file as it was, and what returns is on disk.
"""

from __future__ import annotations

import asyncio
import hashlib
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from poller.aws import aws_client, classify_aws, error_code
from poller.config import FileDestination, OnFailure, SqsDestination, TableDestination
from poller.failure_file import append_lines
from poller.jsonenc import ascii_dumps
from poller.observability import metrics
from poller.observability.logging import get_logger
from poller.records import Failure, TransientError

log = get_logger()

DEFAULT_FALLBACK_PATH = "poller-failures-fallback.jsonl"
# SQS refuses these for what the messages contain, not for the queue's state.
_CONTENT_CODES = {
    "InvalidMessageContents",
    "BatchRequestTooLong",
    "AWS.SimpleQueueService.BatchRequestTooLong",
    "MessageTooLong",
    "InvalidParameterValue",
}


class Destination:
    name = "none"
    in_transaction = False

    def __init__(self, fallback_path: str = DEFAULT_FALLBACK_PATH):
        self.fallback_path = Path(fallback_path)
        self._fallback_lock = asyncio.Lock()

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def store_fallback(self, failures: list[Failure], why: str) -> None:
        """Keep failures the destination refused, whole, in the fallback file;
        each is marked with where it went. Only a write error (disk full) waits."""
        lines = "".join(
            ascii_dumps({**f.as_dict(), "refused_by": self.name, "refusal": why}) + "\n" for f in failures
        )
        async with self._fallback_lock:
            try:
                await asyncio.to_thread(append_lines, self.fallback_path, lines.encode("ascii"))
            except OSError as e:
                raise TransientError(f"cannot write failure fallback file {self.fallback_path}: {e}") from e
        for f in failures:
            f.stored_at = str(self.fallback_path)
            metrics.FAILED_FALLBACK.labels(f.record.stream, self.name).inc()
        log.error(
            "failure destination refused records; kept in the fallback file",
            destination=self.name,
            path=str(self.fallback_path),
            records=len(failures),
            sequence=failures[0].record.sequence_number,
            refusal=why,
        )

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

    def __init__(self, table: str, fallback_path: str = DEFAULT_FALLBACK_PATH):
        super().__init__(fallback_path)
        self.table = table


class FileDest(Destination):
    name = "file"

    def __init__(self, path: str):
        super().__init__(path)
        self.path = Path(path)
        self._lock = asyncio.Lock()

    async def send(self, failures: list[Failure]) -> None:
        # JSON with ASCII escapes holds any payload: a file refuses nothing.
        lines = "".join(ascii_dumps(f.as_dict()) + "\n" for f in failures)
        async with self._lock:
            try:
                await asyncio.to_thread(append_lines, self.path, lines.encode("ascii"))
            except OSError as e:
                raise TransientError(f"cannot write failure file {self.path}: {e}") from e


class SqsDest(Destination):
    name = "sqs"
    _DEFAULT_MAX_BYTES = 262_144  # SQS's limit before 2025, and moto's

    def __init__(self, cfg: SqsDestination):
        super().__init__(cfg.fallback_path)
        self.cfg = cfg
        self._stack = AsyncExitStack()
        self._client: Any = None
        self.max_bytes = self._DEFAULT_MAX_BYTES

    async def open(self) -> None:
        self._client = await self._stack.enter_async_context(
            aws_client("sqs", self.cfg.region, self.cfg.endpoint_url)
        )
        try:
            resp = await self._client.get_queue_attributes(
                QueueUrl=self.cfg.queue_url, AttributeNames=["MaximumMessageSize"]
            )
            self.max_bytes = int(resp.get("Attributes", {}).get("MaximumMessageSize", self.max_bytes))
        except Exception as e:  # sending will say what is wrong with the queue
            log.warning("failure queue attributes unavailable", queue=self.cfg.queue_url, error=str(e))

    async def close(self) -> None:
        await self._stack.aclose()

    def _body(self, f: Failure) -> str:
        body = ascii_dumps(f.as_dict())
        if len(body) <= self.max_bytes:  # ASCII (json escapes the rest): characters are bytes
            return body
        doc = f.as_dict()
        raw = f.record.raw_data
        doc.update(
            payload="",
            payload_truncated=True,
            payload_bytes=len(raw),
            payload_sha256=hashlib.sha256(raw).hexdigest(),
            payload_stored_at=str(self.fallback_path),
        )
        # Shorten the free-text fields until the record fits; never cut the JSON itself.
        for name, keep in (("error_message", 1000), ("error_message", 200), ("partition_key", 64)):
            if isinstance(doc.get(name), str):
                doc[name] = doc[name][:keep]
            body = ascii_dumps(doc)
            if len(body) <= self.max_bytes:
                return body
        # Still too large (a very long fallback path, a queue limit near SQS's 1 KiB floor):
        # what finds the record in the fallback file, and why it failed.
        keys = ("stream", "shard_id", "sequence_number", "sub_sequence", "message_id", "reason")
        minimal = {k: doc[k] for k in keys} | {
            "payload_truncated": True,
            "payload_bytes": len(raw),
            "payload_sha256": doc["payload_sha256"],
            "payload_stored_at": doc["payload_stored_at"][-200:],
        }
        return ascii_dumps(minimal)

    async def send(self, failures: list[Failure]) -> None:
        oversized = [f for f in failures if len(ascii_dumps(f.as_dict())) > self.max_bytes]
        if oversized:
            # The whole record is kept before the truncated one is sent.
            await self.store_fallback(
                oversized, f"larger than the queue's MaximumMessageSize {self.max_bytes}"
            )
        pending = [(f, self._body(f)) for f in failures]
        while pending:
            chunk: list[tuple[Failure, str]] = []
            size = 0
            while pending and len(chunk) < 10 and (not chunk or size + len(pending[0][1]) <= self.max_bytes):
                size += len(pending[0][1])
                chunk.append(pending.pop(0))
            await self._send_chunk(chunk)

    async def _send_chunk(self, chunk: list[tuple[Failure, str]]) -> None:
        fifo = self.cfg.queue_url.endswith(".fifo")
        entries = []
        for i, (f, body) in enumerate(chunk):
            entry: dict[str, Any] = {"Id": str(i), "MessageBody": body}
            if fifo:
                entry["MessageGroupId"] = f"{f.record.stream}:{f.record.shard_id}"[:128]
                entry["MessageDeduplicationId"] = hashlib.sha256(
                    f"{f.record.shard_id}:{f.record.sequence_number}:{f.record.sub_sequence}".encode()
                ).hexdigest()
            entries.append(entry)
        try:
            resp = await self._client.send_message_batch(QueueUrl=self.cfg.queue_url, Entries=entries)
        except Exception as e:
            if error_code(e) in _CONTENT_CODES:
                await self.store_fallback([f for f, _ in chunk], f"{error_code(e)}: {e}")
                return
            err = classify_aws(e)
            raise (
                err if isinstance(err, TransientError) else TransientError(f"failure queue refused: {e}")
            ) from e
        failed = resp.get("Failed") or []
        refused = [chunk[int(x["Id"])][0] for x in failed if x.get("SenderFault")]
        if refused:
            await self.store_fallback(refused, f"{failed[0].get('Code')}: {failed[0].get('Message')}")
        if len(refused) < len(failed):
            raise TransientError(
                f"failure queue refused {len(failed) - len(refused)} message(s): {failed[0]}"
            )


def build_destination(cfg: OnFailure | None, default_table: bool) -> Destination:
    if isinstance(cfg, TableDestination):
        return TableDest(cfg.table, cfg.fallback_path)
    if isinstance(cfg, FileDestination):
        return FileDest(cfg.path)
    if isinstance(cfg, SqsDestination):
        return SqsDest(cfg)
    return TableDest("poller_failures") if default_table else Destination()
