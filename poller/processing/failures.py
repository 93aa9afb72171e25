"""The one failure policy every source and sink goes through.

Transient errors (the database or AWS unavailable, throttling) are retried
with capped exponential backoff and full jitter for as long as it takes; they
never cost a record an attempt. Record errors cost the records involved an
attempt; a failing batch is bisected until the failing records stand alone,
the good ones commit in their order, and only the failing ones reach the
on-failure destination (or, for SQS, go back to the queue).

User code may also name the records it failed (Lambda's `batchItemFailures`,
raised by the handler and lambda sinks as `PartialFailure`). Only those cost an
attempt; the rest count as delivered and are not handed to user code again,
except in a stream after the first failed record, which is delivered again so
that per-key order holds — as Lambda retries from the lowest failed sequence
number.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from poller.config import RetryConfig
from poller.observability import metrics
from poller.observability.logging import get_logger
from poller.records import (
    Failure,
    LockWaitTimeout,
    PartialFailure,
    Record,
    RecordError,
    TransientError,
    contained,
    describe_error,
)
from poller.retry import Backoff as Backoff  # re-exported for older imports
from poller.rows import RowOp
from poller.sink_api import CommitResult, FailureDestination, Fenced, Sink, Transaction

log = get_logger()

Decision = Literal["retry", "fail", "release"]


@dataclass(slots=True)
class Unit:
    """The smallest thing that commits or fails alone: one decoded stream
    record, or one SQS message with everything decoded from it."""

    source: Record  # the record as read (its payload goes to the destination)
    records: list[Record] = field(default_factory=list)
    ops: list[RowOp] = field(default_factory=list)
    token: Any = None  # Position for streams, the in-flight message for SQS
    index: int = 0  # order within its batch
    failure: Failure | None = None
    released: bool = False
    filtered: bool = False
    attempts: int = 0
    first_failed_at: float | None = None
    sent: bool = False  # failure already written to a non-transactional destination
    delivered: bool = False  # user code has processed it: a commit only records that

    def fail(self, reason: str, error: BaseException, attempts: int | None = None) -> None:
        now = time.time()
        self.failure = Failure(
            record=self.source,
            reason=reason,
            error_class=type(error).__name__,
            error_message=describe_error(error),
            attempts=self.attempts if attempts is None else attempts,
            first_failure_at=self.first_failed_at or now,
            last_failure_at=now,
            dedup_id=self.source.meta.get("message_id"),
        )
        self.ops = []

    def fail_with(self, error: RecordError, attempts: int | None = None) -> None:
        self.fail(error.reason, error, attempts)


class Checkpointer(Protocol):
    """Puts a stream's checkpoint rows into a transaction: `checkpoint(tx)` is
    entered just before the sink commits `tx` and left, without an error, only
    once it committed (a shard's commits take turns under it)."""

    def checkpoint(self, tx: Transaction) -> AbstractAsyncContextManager[None]: ...


class FailurePolicy:
    """Commits units through a sink, applying the retry rules.

    The source supplies three callables: `build_tx` (what one commit writes,
    checkpoints included), `decide` (what an exhausted record error means for
    a unit: retry, fail to the destination, or release back to the queue) and
    `skip` (units that must not commit now, e.g. behind a failed FIFO message).
    `ordered` says whether units depend on the ones before them (stream records
    do; SQS messages do not), which decides what a partial failure holds back.
    """

    def __init__(
        self,
        stream: str,
        retry: RetryConfig,
        sink: Sink,
        destination: FailureDestination,
        build_tx: Callable[[list[Unit]], Transaction],
        decide: Callable[[Unit, RecordError], Decision],
        skip: Callable[[Unit], bool] = lambda u: False,
        on_health: Callable[[bool], None] = lambda ok: None,
        shard: str = "",
        ordered: bool = True,
        checkpointer: Checkpointer | None = None,
    ):
        self.stream = stream
        self.retry = retry
        self.sink = sink
        self.destination = destination
        self.build_tx = build_tx
        self.decide = decide
        self.skip = skip
        self.on_health = on_health
        self.shard = shard
        self.ordered = ordered
        self.checkpointer = checkpointer
        self.backoff = Backoff(retry.backoff_initial_seconds, retry.backoff_max_seconds)
        self.transient_failures = 0

    async def commit(self, units: list[Unit]) -> list[CommitResult]:
        """Commit every unit (as rows, as a failure, or released). Returns one
        result per transaction committed."""
        results: list[CommitResult] = []
        started = time.monotonic()
        await self._commit_range(units, results)
        metrics.BATCH_DURATION.labels(self.stream).observe(time.monotonic() - started)
        return results

    async def _commit_range(self, units: list[Unit], results: list[CommitResult]) -> None:
        transient = 0
        record_round = 0
        while True:
            for u in units:
                if not u.released and u.failure is None and self.skip(u):
                    u.released = True
            active = [u for u in units if not u.released]
            if not active:
                return
            try:
                await self._send_failures(active)
                result = await self._commit_once(active)
            except TransientError as e:
                transient += 1
                self._transient(e, transient)
                await asyncio.sleep(self.backoff.delay(transient))
                continue
            except RecordError as e:
                metrics.SINK_ERRORS.labels(self.stream, "record").inc()
                reported = self._reported(active, e)
                if reported:
                    record_round += 1
                    units = await self._partial(active, reported, e, results)
                    if any(u.failure is None and not u.released for u in reported):
                        await asyncio.sleep(self.backoff.delay(record_round))
                    continue
                live = [u for u in active if u.failure is None and not u.delivered]
                refused = (
                    [u for u in active if u.failure is not None and u.failure.stored_at is None]
                    if self.destination.in_transaction
                    else []
                )
                if not live:
                    # Only failure rows (and checkpoints) were left: the destination
                    # refused a failure as it was. Store it in a form it accepts, or
                    # else in the fallback file, and go on: it never blocks the stream.
                    await self._store_refused(refused, e)
                    continue
                if len(live) + len(refused) > 1 and len(active) > 1 and self.retry.bisect_on_error:
                    metrics.BISECTIONS.labels(self.stream).inc()
                    mid = len(active) // 2
                    await self._commit_range(active[:mid], results)
                    await self._commit_range(active[mid:], results)
                    return
                record_round += 1
                again = self._attempt(live, e)
                log.warning(
                    "record error",
                    stream=self.stream,
                    shard=self.shard,
                    sequence=live[0].source.sequence_number,
                    records=len(live),
                    attempts=live[0].attempts,
                    error=str(e),
                )
                if again:
                    await asyncio.sleep(self.backoff.delay(record_round))
                continue
            if transient:
                self._healthy()
            results.append(result)
            return

    async def _commit_once(self, active: list[Unit]) -> CommitResult:
        """One commit attempt. Whatever the sink raises that is neither transient
        nor a record error is a record error too (containment by construction):
        bisection then finds the record that causes it, and a deterministic
        error can never hold the stream back as a "transient" one would."""
        try:
            tx = self._transaction(active)
            if self.checkpointer is None:
                return await self.sink.commit(tx)
            async with self.checkpointer.checkpoint(tx):
                return await self.sink.commit(tx)
        except (TransientError, RecordError, Fenced):
            raise  # Fenced: the lease is another worker's now; the shard's worker stops
        except Exception as e:
            log.error(
                "unexpected sink error; treated as a record error", error=describe_error(e), exc_info=True
            )
            raise contained(e, "sink") from e

    async def _store_refused(self, units: list[Unit], e: RecordError) -> None:
        failures = [u.failure for u in units if u.failure is not None]
        if not failures:
            # Nothing of ours left to blame (the checkpoint rows themselves?): wait.
            self.transient_failures += 1
            self._transient(TransientError(f"commit refused with no record left: {e}"), 5)
            await asyncio.sleep(self.backoff.delay(self.transient_failures))
            return
        if not all(f.safe for f in failures):
            for f in failures:
                f.safe = True
            log.warning(
                "failure destination refused a failure record; storing it in safe form (base64 payload)",
                stream=self.stream,
                shard=self.shard,
                records=len(failures),
                error=describe_error(e),
            )
            return
        await self.destination.store_fallback(failures, describe_error(e))

    def _transaction(self, active: list[Unit]) -> Transaction:
        tx = self.build_tx(active)
        tx.records = [u.source for u in active if _deliverable(u)]
        if tx.failures:
            tx.failures = [f for f in tx.failures if f.stored_at is None]
        return tx

    def _attempt(self, units: list[Unit], e: RecordError) -> bool:
        """Charge each unit an attempt and apply `decide`; True if any is to be retried."""
        metrics.RETRIES.labels(self.stream, "record").inc()
        metrics.EVENTS_FAILED.labels(self.stream).inc(len(units))
        now = time.time()
        again = False
        for u in units:
            u.attempts += 1
            u.first_failed_at = u.first_failed_at or now
            decision = self.decide(u, e)
            if decision == "fail":
                u.fail(getattr(e, "reason", "record_error"), e)
            elif decision == "release":
                u.released = True
            else:
                again = True
        return again

    @staticmethod
    def _reported(active: list[Unit], e: RecordError) -> list[Unit]:
        """The units user code named as failed, in order (none for other errors)."""
        if not isinstance(e, PartialFailure):
            return []
        return [u for u in active if _deliverable(u) and u.source.sequence_number in e.item_ids]

    async def _partial(
        self, active: list[Unit], reported: list[Unit], e: RecordError, results: list[CommitResult]
    ) -> list[Unit]:
        """Apply a partial failure; returns the units still to commit."""
        first = active.index(reported[0])
        held = active[first:] if self.ordered else reported
        held_ids = {id(u) for u in held}
        for u in active:
            if _deliverable(u) and id(u) not in held_ids:
                u.delivered = True
        if self.ordered and first:
            # The checkpoint moves to just before the first failed record now,
            # whatever happens to it and to the records after it.
            await self._commit_range(active[:first], results)
            active = active[first:]
        self._attempt(reported, e)
        log.warning(
            "records reported failed",
            stream=self.stream,
            shard=self.shard,
            sequence=reported[0].source.sequence_number,
            records=len(reported),
            attempts=reported[0].attempts,
            error=str(e),
        )
        return active

    async def _send_failures(self, units: list[Unit]) -> None:
        if self.destination.in_transaction:
            return
        pending = [u for u in units if u.failure is not None and not u.sent]
        if pending:
            try:
                await self.destination.send([u.failure for u in pending if u.failure is not None])
            except TransientError:
                raise
            except Exception as e:
                # A destination refuses what it cannot hold by storing it elsewhere
                # (destinations.py); anything else is its bug or its outage: wait.
                raise TransientError(f"failure destination: {type(e).__name__}: {describe_error(e)}") from e
            for u in pending:
                u.sent = True

    def _transient(self, e: TransientError, n: int) -> None:
        self.transient_failures += 1
        metrics.RETRIES.labels(self.stream, "transient").inc()
        metrics.SINK_ERRORS.labels(self.stream, "transient").inc()
        metrics.BLOCKED.labels(self.stream, self.shard).set(1)
        self.on_health(False)
        what = "transient error, retrying"
        if isinstance(e, LockWaitTimeout):
            metrics.LOCK_WAITS.labels(self.stream).inc()
            what = "commit gave up waiting for a lock another transaction holds (a frozen replica?), retrying"
        (log.warning if n < 5 else log.error)(
            what,
            stream=self.stream,
            shard=self.shard,
            attempt=n,
            error=str(e),
        )

    def _healthy(self) -> None:
        metrics.BLOCKED.labels(self.stream, self.shard).set(0)
        self.on_health(True)


def _deliverable(u: Unit) -> bool:
    """Still to be handed to user code (handler and lambda sinks)."""
    return u.failure is None and not u.filtered and not u.delivered and not u.released


def count_failures(stream: str, destination: FailureDestination, units: list[Unit]) -> None:
    for u in units:
        if u.failure is not None and not u.released:
            metrics.FAILED.labels(stream, destination.name, u.failure.reason).inc()
            metrics.RECORDS.labels(stream, "failed").inc()
