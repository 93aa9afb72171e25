"""SQS: competing long-pollers, batches committed with their message ids, then
deleted; visibility kept alive while a message is being worked on.

Exactly once into the database comes from the `poller_processed` table: a
message id is written in the same transaction as its rows, so a redelivery
(visibility expired before the delete, or a crash after the commit) is
recognised and only deleted.
"""

from __future__ import annotations

import asyncio
import math
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from poller.aws import aws_client, classify_aws, error_code, is_throttling
from poller.aws_clock import AwsClock
from poller.config import SqsSource, StreamConfig
from poller.observability import metrics
from poller.observability.logging import get_logger
from poller.processing.batching import take_batch
from poller.processing.failures import Decision, FailurePolicy, Unit, count_failures
from poller.processing.pipeline import Preparer
from poller.records import SQS, Record, RecordError, TransientError
from poller.retry import Backoff, retry_until_stopped, sleep_unless
from poller.sink_api import FailureDestination, MessageWrite, Sink, Transaction
from poller.sources import fast_parse
from poller.sources.base import SourceConsumer

log = get_logger()
# A delete that fails is tried again a few times; then the idempotency table
# makes the redelivery harmless.
_DELETE_BACKOFF = Backoff(0.2, 5.0)


@dataclass(slots=True)
class InFlight:
    message_id: str
    receipt_handle: str
    group_id: str | None
    receive_count: int
    extended_at: float  # monotonic time the visibility was last set
    lane: int
    size: int = 0  # bytes held for it (`message_size`)


# SQS's largest message (body and message attributes): what one message may be when
# the queue does not say.
_SQS_MAX_MESSAGE = 1024 * 1024


def message_size(msg: dict[str, Any], body: bytes) -> int:
    """A received message's size as SQS counts it against MaximumMessageSize: the
    body's UTF-8 bytes plus each message attribute's name, type and value."""
    size = len(body)
    for name, attr in msg.get("MessageAttributes", {}).items():
        value = attr.get("StringValue")
        size += len(name) + len(attr.get("DataType", ""))
        size += len(value.encode()) if isinstance(value, str) else len(attr.get("BinaryValue") or b"")
    return size


def _worth_retrying(failure: dict[str, Any] | None) -> bool:
    """A DeleteMessageBatch entry that failed for another reason than its receipt handle."""
    if failure is None:
        return False
    return not failure.get("SenderFault") or "Receipt" not in failure.get("Code", "")


def receive_count(attributes: dict[str, Any]) -> int:
    return int(attributes.get("ApproximateReceiveCount", "1"))


def to_record(msg: dict[str, Any], stream: str, queue_arn: str, region: str) -> Record:
    attrs = msg.get("Attributes", {})
    body = msg.get("Body", "")
    raw = body.encode("utf-8")
    message_attributes = {
        k: v.get("StringValue", v.get("BinaryValue")) for k, v in msg.get("MessageAttributes", {}).items()
    }
    group = attrs.get("MessageGroupId")
    sent = attrs.get("SentTimestamp")
    return Record(
        source=SQS,
        stream=stream,
        shard_id=group or "",
        sequence_number=msg["MessageId"],
        data=raw,
        raw_data=raw,
        arrival_time=int(sent) / 1000.0 if sent else time.time(),
        meta={
            "message_id": msg["MessageId"],
            "group_id": group,
            "attributes": attrs,
            "message_attributes": message_attributes,
            "receive_count": receive_count(attrs),
        },
        raw=msg,
        event_source_arn=queue_arn,
        region=region,
    )


class SqsConsumer(SourceConsumer):
    def __init__(
        self,
        cfg: StreamConfig,
        sink: Sink,
        destination: FailureDestination,
        preparer: Preparer,
        on_source_ready: Callable[[], None],
        on_health: Callable[[bool], None],
        clock: AwsClock | None = None,
    ):
        super().__init__(cfg, sink, destination, preparer, on_source_ready, on_health, clock)
        assert isinstance(cfg.source, SqsSource)
        self.src: SqsSource = cfg.source
        self.inflight: dict[str, InFlight] = {}
        self._capacity = asyncio.Condition()
        # Bytes held in `inflight`, and messages that receives under way may still
        # bring (each counted at the queue's largest size): both bounds are kept with
        # them, as if every receive came back full of the largest messages.
        self._inflight_bytes = 0
        self._reserved = 0
        self._largest_message = _SQS_MAX_MESSAGE
        self.lanes = max(1, self.src.max_concurrency)
        self.queues: list[asyncio.Queue[Record]] = [asyncio.Queue() for _ in range(self.lanes)]
        self._rr = 0
        self.visibility = 30
        self.fifo = self.src.queue_url.endswith(".fifo")
        self.queue_arn = ""
        self.region = ""
        self.client: Any = None
        self._busy = 0
        self._inflight_gauge = metrics.SQS_INFLIGHT.labels(self.name)
        self._inflight_bytes_gauge = metrics.SQS_INFLIGHT_BYTES.labels(self.name)
        self._received = metrics.RECORDS.labels(self.name, "received")

    # -- lifecycle -------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        from poller.aws import region_of

        self.region = region_of(self.src.region)
        async with aws_client(
            "sqs", self.src.region, self.src.endpoint_url, read_timeout=self.src.wait_seconds + 15
        ) as client:
            self.client = client
            fast_parse.install(client, ["ReceiveMessage"])
            # GetQueueAttributes is measured first; later, a long poll that waited is
            # too long a round trip to use, and the next call is measured instead.
            self.clock.watch(client)
            if not await self._describe(stop):
                return
            self.on_source_ready()
            pollers = [
                asyncio.create_task(self._poll(stop), name=f"{self.name}-poll-{i}")
                for i in range(self.src.max_concurrency)
            ]
            workers = [
                asyncio.create_task(self._work(lane, stop), name=f"{self.name}-work-{lane}")
                for lane in range(self.lanes)
            ]
            keeper = asyncio.create_task(self._keep_visible(), name=f"{self.name}-visibility")
            purger = asyncio.create_task(self._purge(), name=f"{self.name}-purge")
            try:
                await self._until_stop_or_crash(stop, [*pollers, *workers, keeper, purger])
                # Stop receiving, finish what we hold.
                for t in pollers:
                    t.cancel()
                await asyncio.gather(*pollers, return_exceptions=True)
                # Everything received is either committed and deleted, or released.
                while self.inflight:  # noqa: ASYNC110 - emptied by several tasks
                    await asyncio.sleep(0.05)
            finally:
                for t in [*pollers, *workers, keeper, purger]:
                    t.cancel()
                await asyncio.gather(*pollers, *workers, keeper, purger, return_exceptions=True)
                await self._release_all()

    async def _until_stop_or_crash(self, stop: asyncio.Event, tasks: list[asyncio.Task[None]]) -> None:
        """Wait for `stop`. A task of this consumer never ends on its own: one that
        does died of a bug, and the whole stream fails with its error (the
        supervisor logs it, reports the stream not ready and restarts it; the
        messages held are released) rather than a lane going silently quiet."""
        stopper = asyncio.create_task(stop.wait())
        try:
            done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if stop.is_set():
            return
        for task in done:
            error = None if task.cancelled() else task.exception()
            raise RuntimeError(f"{task.get_name()} stopped unexpectedly: {error!r}") from error

    async def _describe(self, stop: asyncio.Event) -> bool:
        """Read the queue's attributes; False if stopped before it answered."""

        def unreachable(e: Exception, attempt: int) -> None:
            log.warning("queue unreachable, retrying", stream=self.name, error=str(e), attempt=attempt)

        try:
            resp = await retry_until_stopped(
                stop,
                lambda: self.client.get_queue_attributes(
                    QueueUrl=self.src.queue_url,
                    AttributeNames=["VisibilityTimeout", "QueueArn", "FifoQueue", "MaximumMessageSize"],
                ),
                Backoff(0.5, 30.0),
                retryable=lambda e: not isinstance(classify_aws(e), RecordError),
                on_retry=unreachable,
            )
        except Exception as e:
            raise RuntimeError(f"queue {self.src.queue_url}: {e}") from e
        if resp is None:
            return False
        attrs = resp.get("Attributes", {})
        self.visibility = self.src.visibility_timeout_seconds or int(attrs.get("VisibilityTimeout", "30"))
        self.fifo = attrs.get("FifoQueue") == "true" or self.fifo
        self.queue_arn = attrs.get("QueueArn", "")
        self._largest_message = int(attrs.get("MaximumMessageSize", _SQS_MAX_MESSAGE))
        log.info("queue ready", stream=self.name, visibility_timeout=self.visibility, fifo=self.fifo)
        return True

    # -- receiving ---------------------------------------------------------------------

    def _room(self) -> int:
        """Messages one receive may ask for now (at most 10), leaving both bounds
        kept even if it and every receive under way come back full of messages of
        the queue's largest size. With nothing held or coming, one message is
        always taken, however large: a queue never stalls on a message over the
        byte bound."""
        messages = self.src.max_inflight_messages - len(self.inflight) - self._reserved
        free_bytes = self.src.max_inflight_bytes - self._inflight_bytes
        by_size = free_bytes // self._largest_message - self._reserved
        if by_size <= 0 and not self.inflight and not self._reserved:
            by_size = 1
        return max(0, min(10, messages, by_size))

    async def _poll(self, stop: asyncio.Event) -> None:
        failures = 0
        backoff = Backoff(0.2, 20.0)
        while not stop.is_set():
            async with self._capacity:
                await self._capacity.wait_for(lambda: self._room() > 0)
                room = self._room()
                self._reserved += room
            try:
                resp = await self.client.receive_message(
                    QueueUrl=self.src.queue_url,
                    MaxNumberOfMessages=room,
                    WaitTimeSeconds=self.src.wait_seconds,
                    MessageSystemAttributeNames=["All"],
                    MessageAttributeNames=["All"],
                    VisibilityTimeout=self.visibility,
                )
                if failures > 3:
                    self.on_health(True)
                failures = 0
            except asyncio.CancelledError:
                self._reserved -= room
                raise
            except Exception as e:
                self._reserved -= room
                failures += 1
                if is_throttling(e):
                    metrics.THROTTLES.labels(self.name, "ReceiveMessage").inc()
                if failures > 3:
                    self.on_health(False)
                log.warning("receive failed, retrying", stream=self.name, error=str(e), attempt=failures)
                await sleep_unless(stop, backoff.delay(failures))
                continue
            # From here to the notify nothing awaits: the reservation turns into
            # what was received in one step.
            self._reserved -= room
            now = time.monotonic()
            for msg in resp.get("Messages", []):
                self._received.inc()
                held = self.inflight.get(msg["MessageId"])
                if held is not None:
                    # Received again while we hold it: a standard queue may deliver a
                    # message twice, and a visibility can run out. One copy is enough
                    # to process, but only the newest receipt handle is sure to delete it.
                    held.receipt_handle = msg["ReceiptHandle"]
                    held.extended_at = now
                    held.receive_count = receive_count(msg.get("Attributes", {}))
                    metrics.RECORDS.labels(self.name, "duplicate").inc()
                    log.info("received again while in flight", stream=self.name, message_id=held.message_id)
                    continue
                record = to_record(msg, self.name, self.queue_arn, self.region)
                group = record.meta["group_id"]
                lane = self._lane(group)
                size = message_size(msg, record.raw_data)
                self.inflight[msg["MessageId"]] = InFlight(
                    msg["MessageId"],
                    msg["ReceiptHandle"],
                    group,
                    record.meta["receive_count"],
                    now,
                    lane,
                    size,
                )
                self._inflight_bytes += size
                self.queues[lane].put_nowait(record)
            self._inflight_gauge.set(len(self.inflight))
            self._inflight_bytes_gauge.set(self._inflight_bytes)
            async with self._capacity:
                self._capacity.notify_all()  # what was reserved and not received is room again

    def _lane(self, group: str | None) -> int:
        # A FIFO group always goes to the same lane so its messages stay in order.
        if group is not None:
            return zlib.crc32(group.encode()) % self.lanes
        self._rr = (self._rr + 1) % self.lanes
        return self._rr

    # -- processing --------------------------------------------------------------------

    async def _work(self, lane: int, stop: asyncio.Event) -> None:
        queue, size, window = self.queues[lane], self.cfg.batch.size, self.cfg.batch.window_seconds
        while True:
            batch = await take_batch(queue, size, window, flush=stop)
            self._busy += 1
            try:
                await self._process(batch)
            finally:
                self._busy -= 1

    async def _process(self, records: list[Record]) -> None:
        ids = [r.sequence_number for r in records]
        try:
            done_before = await self.sink.processed_ids(self.name, ids)
        except TransientError:
            done_before = set()  # the transaction checks again
        if done_before:
            metrics.RECORDS.labels(self.name, "duplicate").inc(len(done_before))
            await self._delete([i for i in ids if i in done_before])
            records = [r for r in records if r.sequence_number not in done_before]
        if not records:
            return
        if self.fifo:
            # SQS hands a group's messages out in order; sorting by the FIFO
            # sequence number keeps that order even if two receives raced.
            records.sort(key=lambda r: int(r.meta["attributes"].get("SequenceNumber", "0")))
        units = [
            self.preparer.message_unit(r, self.inflight.get(r.sequence_number), i)
            for i, r in enumerate(records)
        ]
        for u in units:
            if u.failure is not None and self.destination.name == "none":
                u.failure, u.released = None, True  # left to the queue's redrive policy
        stopped: dict[str, int] = {}

        def decide(u: Unit, _: RecordError) -> Decision:
            count = u.source.meta.get("receive_count", 1)
            if isinstance(u.token, InFlight):  # newer if the message was received again
                count = max(count, u.token.receive_count)
            # SQS counts the attempts: each one was a delivery.
            u.attempts = max(u.attempts, count)
            if self.fifo and u.source.meta.get("group_id") is not None:
                g = u.source.meta["group_id"]
                stopped[g] = min(stopped.get(g, u.index), u.index)
            if count >= self.cfg.retry.max_attempts and self.destination.name != "none":
                return "fail"
            return "release"

        def skip(u: Unit) -> bool:
            g = u.source.meta.get("group_id")
            return g is not None and g in stopped and u.index > stopped[g]

        for u in units:  # a FIFO group stops at its first failed message
            if u.released and self.fifo and u.source.meta.get("group_id") is not None:
                g = u.source.meta["group_id"]
                stopped[g] = min(stopped.get(g, u.index), u.index)

        policy = FailurePolicy(
            self.name,
            self.cfg.retry,
            self.sink,
            self.destination,
            build_tx=self._transaction,
            decide=decide,
            skip=skip if self.fifo else (lambda u: False),
            on_health=self.on_health,
            ordered=False,  # a message reported failed holds back no other (FIFO: `skip` does)
        )
        results = await policy.commit(units)
        committed = [u for u in units if not u.released]
        rows = sum(r.rows for r in results)
        dup_ids: set[str] = set().union(*(r.duplicate_ids for r in results)) if results else set()
        written = sum(
            1
            for u in committed
            if u.failure is None and not u.filtered and u.source.sequence_number not in dup_ids
        )
        metrics.RECORDS.labels(self.name, "written").inc(written)
        if dup_ids:
            metrics.RECORDS.labels(self.name, "duplicate").inc(len(dup_ids))
        metrics.BATCH_SIZE.labels(self.name).observe(len(committed))
        count_failures(self.name, self.destination, committed)
        log.debug("batch committed", stream=self.name, messages=len(committed), rows=rows)
        await self._delete([u.source.sequence_number for u in committed])
        released = [u for u in units if u.released]
        if released:
            await self._release(released)

    def _transaction(self, units: list[Unit]) -> Transaction:
        tx = Transaction(stream=self.name)
        for u in units:
            tx.messages.append(MessageWrite(u.source.sequence_number, u.ops if u.failure is None else []))
            if u.failure is not None and self.destination.in_transaction:
                tx.failures.append(u.failure)
        return tx

    # -- acknowledging -----------------------------------------------------------------

    async def _delete(self, message_ids: list[str]) -> None:
        held = [self.inflight[m] for m in message_ids if m in self.inflight]
        for start in range(0, len(held), 10):
            pending = held[start : start + 10]
            for attempt in range(5):
                sent = [m.receipt_handle for m in pending]
                entries = [{"Id": str(i), "ReceiptHandle": h} for i, h in enumerate(sent)]
                try:
                    resp = await self.client.delete_message_batch(
                        QueueUrl=self.src.queue_url, Entries=entries
                    )
                except Exception as e:
                    log.warning(
                        "delete failed, retrying",
                        stream=self.name,
                        error=str(e),
                        attempt=attempt + 1,
                    )
                    await asyncio.sleep(_DELETE_BACKOFF.delay(attempt + 1))
                    continue
                failed = {f["Id"]: f for f in resp.get("Failed", [])}
                metrics.SQS_DELETED.labels(self.name).inc(len(entries) - len(failed))
                # Again: what failed for a reason other than its receipt handle, and
                # what was received again during the call (its newest handle is the
                # one sure to delete it). Otherwise an invalid receipt handle means
                # another delivery holds it: that one finds it processed and deletes it.
                pending = [
                    m
                    for i, m in enumerate(pending)
                    if m.receipt_handle != sent[i] or _worth_retrying(failed.get(str(i)))
                ]
                if not pending:
                    break
                await asyncio.sleep(_DELETE_BACKOFF.delay(attempt + 1))
        await self._forget(message_ids)

    async def _release(self, units: list[Unit]) -> None:
        """Make failed messages visible again after a backoff that grows with
        their receive count (no destination: the queue's redrive policy decides)."""
        r = self.cfg.retry
        for u in units:
            held = self.inflight.get(u.source.sequence_number)
            if held is None:
                continue
            for _ in range(3):  # again if the message was received anew meanwhile
                handle = held.receipt_handle
                delay = min(
                    r.backoff_max_seconds,
                    r.backoff_initial_seconds * 2 ** max(0, held.receive_count - 1),
                )
                try:
                    await self.client.change_message_visibility(
                        QueueUrl=self.src.queue_url,
                        ReceiptHandle=handle,
                        VisibilityTimeout=math.ceil(delay),
                    )
                except Exception as e:
                    log.warning(
                        "could not release message",
                        stream=self.name,
                        message_id=held.message_id,
                        error=str(e),
                    )
                    break
                if held.receipt_handle == handle:
                    break
        metrics.SQS_RELEASED.labels(self.name).inc(len(units))
        await self._forget([u.source.sequence_number for u in units])

    async def _release_all(self) -> None:
        """On shutdown, hand what we still hold back to the queue at once."""
        held = list(self.inflight.values())
        for start in range(0, len(held), 10):
            chunk = held[start : start + 10]
            try:
                await self.client.change_message_visibility_batch(
                    QueueUrl=self.src.queue_url,
                    Entries=[
                        {"Id": str(i), "ReceiptHandle": m.receipt_handle, "VisibilityTimeout": 0}
                        for i, m in enumerate(chunk)
                    ],
                )
            except Exception as e:
                log.warning("could not release messages on stop", stream=self.name, error=str(e))
        self.inflight.clear()
        self._inflight_bytes = 0
        self._inflight_gauge.set(0)
        self._inflight_bytes_gauge.set(0)

    async def _forget(self, message_ids: list[str]) -> None:
        for m in message_ids:
            held = self.inflight.pop(m, None)
            if held is not None:
                self._inflight_bytes -= held.size
        self._inflight_gauge.set(len(self.inflight))
        self._inflight_bytes_gauge.set(self._inflight_bytes)
        async with self._capacity:
            self._capacity.notify_all()

    # -- background --------------------------------------------------------------------

    async def _keep_visible(self) -> None:
        """Extend the visibility of messages still being worked on at half the timeout."""
        half = self.visibility / 2
        while True:
            await asyncio.sleep(max(0.5, min(half / 2, 5.0)))
            now = time.monotonic()
            due = [m for m in list(self.inflight.values()) if now - m.extended_at >= half]
            for start in range(0, len(due), 10):
                chunk = due[start : start + 10]
                try:
                    await self.client.change_message_visibility_batch(
                        QueueUrl=self.src.queue_url,
                        Entries=[
                            {
                                "Id": str(i),
                                "ReceiptHandle": m.receipt_handle,
                                "VisibilityTimeout": self.visibility,
                            }
                            for i, m in enumerate(chunk)
                        ],
                    )
                except Exception as e:
                    log.warning(
                        "visibility extension failed",
                        stream=self.name,
                        error=str(e),
                        code=error_code(e),
                    )
                    continue
                for m in chunk:
                    m.extended_at = now
                metrics.SQS_VISIBILITY_EXTENSIONS.labels(self.name).inc(len(chunk))

    async def _purge(self) -> None:
        """Processed ids are only needed while SQS could redeliver the message."""
        while True:
            try:
                n = await self.sink.purge_processed(self.name, self.src.idempotency_retention_seconds)
                if n:
                    log.info("purged processed message ids", stream=self.name, rows=n)
            except TransientError as e:
                log.warning("purge of processed ids failed", stream=self.name, error=str(e))
            await asyncio.sleep(3600)
