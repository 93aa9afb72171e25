"""Sinks that hand records to user code as a Lambda event: `handler` calls a
Python function in this process, `lambda` (lambda_sink.py) invokes a deployed
function. Both send the exact event-source-mapping event of the source and
read the answer as Lambda does, `batchItemFailures` included.

User code cannot join a database transaction, so delivery is at least once:
the checkpoints and processed SQS message ids go to a checkpoint store (the
SQL sinks' own bookkeeping tables, no target table) in a transaction of its
own, after user code has returned. A crash in between delivers those records
again.

With `tumbling_window_seconds` the records go through `windows.py` instead,
whose window rows the checkpoint store writes in the same transaction as the
checkpoints.
"""

from __future__ import annotations

import abc
import asyncio
import contextvars
import functools
import importlib
import inspect
import os
import sys
import threading
import weakref
from collections.abc import Callable
from typing import Any

from poller.config import HandlerSinkConfig, UserCodeSinkConfig
from poller.context import LambdaContext, function_arn, log_stream_name
from poller.events import lambda_event
from poller.observability.logging import get_logger
from poller.records import Checkpoint, PartialFailure, Record, RecordError, TransientError
from poller.rows import RowOp
from poller.sink_api import CommitResult, Fence, Sink, Transaction
from poller.sinks.factory import checkpoint_store
from poller.sinks.session_bounds import SessionBounds
from poller.sinks.windows import SHAPE, WINDOWS_TABLE, TumblingWindows, WindowOptions, create_table

log = get_logger()


class HandlerError(RecordError):
    """The handler raised: Lambda's function error, for the whole batch."""

    reason = "handler_error"


class HandlerTimeout(RecordError):
    reason = "handler_timeout"


class HandlerLoadError(RuntimeError):
    """The handler cannot be imported; the stream restarts and tries again."""


def item_identifier(record: Record) -> str:
    """What `batchItemFailures` names a record by: the message id (SQS) or the
    sequence number (streams); both are the record's `sequence_number`."""
    return record.sequence_number


def batch_item_failures(response: Any, records: list[Record]) -> set[str]:
    """The records user code reported failed, read as Lambda reads them.

    No `batchItemFailures` (None, `{}`, an empty list, or any other value than
    an object) means all succeeded. An entry whose `itemIdentifier` is missing,
    empty, or not a record of this batch fails the whole batch.
    """
    if not isinstance(response, dict):
        return set()
    items = response.get("batchItemFailures")
    if items is None:
        return set()
    if not isinstance(items, list):
        raise RecordError(f"batchItemFailures is a {type(items).__name__}, not a list: the batch failed")
    known = {item_identifier(r) for r in records}
    failed: set[str] = set()
    for item in items:
        ident = item.get("itemIdentifier") if isinstance(item, dict) else None
        if not isinstance(ident, str) or ident not in known:
            raise RecordError(
                f"batchItemFailures entry {item!r} names no record of this batch: the batch failed"
            )
        failed.add(ident)
    return failed


def _key(record: Record) -> tuple[str, str, int]:
    return (record.shard_id, record.sequence_number, record.sub_sequence)


class EventSink(Sink):
    """The commit of a sink whose rows are user code's business.

    `deliver` hands records to user code and returns its answer; `commit`
    turns that answer into success, a `PartialFailure` for the failure policy,
    or a record error, and then records the checkpoint in the store.
    """

    def __init__(
        self,
        cfg: UserCodeSinkConfig,
        stream: str,
        failures_table: str | None = None,
        windows: WindowOptions | None = None,
        bounds: SessionBounds | None = None,
    ):
        checkpoint_dsn = cfg.checkpoint_dsn
        self.checkpoint_dsn = checkpoint_dsn
        self.failures_table = failures_table
        self.report_batch_item_failures = cfg.report_batch_item_failures
        self.windows: TumblingWindows | None = None
        windows = windows or WindowOptions.for_seconds(cfg.tumbling_window_seconds)
        if windows is None:
            self.store = checkpoint_store(checkpoint_dsn, failures_table, bounds=bounds)
        else:
            self.store = checkpoint_store(checkpoint_dsn, failures_table, WINDOWS_TABLE, SHAPE, bounds=bounds)
            self.windows = TumblingWindows(stream, windows, self.store, self)
        # Delivered but not yet recorded (the store failed): a retry of the
        # commit records them without handing them to user code again.
        self._unrecorded: set[tuple[str, str, int]] = set()

    @abc.abstractmethod
    async def deliver(self, records: list[Record]) -> Any:
        """Hand `records` to user code as one Lambda event; return its answer.
        Raises RecordError when user code fails, TransientError when it cannot be reached."""

    @abc.abstractmethod
    async def invoke(self, records: list[Record], fields: dict[str, Any], source_arn: str) -> Any:
        """One invocation with the event `{"Records": [...], **fields}` (a tumbling
        window's fields); the answer, parsed. Errors as for `deliver`."""

    def fit(self, records: list[Record], fields: dict[str, Any]) -> int:
        """How many of `records` one invocation with `fields` takes."""
        return len(records)

    def failed_items(self, answer: Any, records: list[Record]) -> set[str]:
        return batch_item_failures(answer, records) if self.report_batch_item_failures else set()

    async def open(self) -> None:
        if self.windows is not None:
            # The store reads its window table's columns when it opens: create it first.
            boot = checkpoint_store(self.checkpoint_dsn, self.failures_table)
            try:
                await boot.open()
                await create_table(boot)
            finally:
                await boot.close()
        await self.store.open()
        if self.windows is not None:
            await self.windows.start()

    async def close(self) -> None:
        if self.windows is not None:
            await self.windows.close()
        await self.store.close()

    async def ping(self) -> None:
        await self.store.ping()

    def commit_age(self) -> float:
        return self.store.commit_age()  # user code's time is not a commit's

    def coerce(self, ops: list[RowOp]) -> list[RowOp]:
        return ops  # user code takes records, not rows: the map stage gives none

    async def commit(self, tx: Transaction) -> CommitResult:
        if self.windows is not None:
            return await self.windows.commit(tx)
        records = [r for r in tx.records if _key(r) not in self._unrecorded]
        if records and tx.messages:
            # A redelivered SQS message that an earlier delivery recorded is not run again.
            seen = await self.store.processed_ids(tx.stream, [item_identifier(r) for r in records])
            records = [r for r in records if item_identifier(r) not in seen]
        if records:
            answer = await self.deliver(records)
            failed = batch_item_failures(answer, records) if self.report_batch_item_failures else set()
            if failed:
                raise PartialFailure(
                    f"{len(failed)} of {len(records)} records reported failed (batchItemFailures)", failed
                )
            self._unrecorded.update(_key(r) for r in records)
        result = await self.store.commit(tx)
        self._unrecorded.difference_update(_key(r) for r in tx.records)
        result.rows = len(records)
        return result

    async def shard_taken(self, stream: str, shard_id: str, fence: Fence) -> None:
        if self.windows is not None:
            await self.windows.adopt(shard_id, fence)

    async def load_checkpoints(self, stream: str) -> dict[str, Checkpoint]:
        return await self.store.load_checkpoints(stream)

    async def delete_checkpoints(self, stream: str, shard_ids: list[str]) -> None:
        await self.store.delete_checkpoints(stream, shard_ids)

    async def processed_ids(self, stream: str, ids: list[str]) -> set[str]:
        return await self.store.processed_ids(stream, ids)

    async def purge_processed(self, stream: str, older_than_seconds: float) -> int:
        return await self.store.purge_processed(stream, older_than_seconds)


def load_handler(spec: str, code_path: str | None) -> Callable[..., Any]:
    """Import `package.module:function`, with `code_path` (default: the working
    folder) first on the import path, as Lambda puts /var/task."""
    module_name, _, name = spec.partition(":")
    path = os.path.abspath(code_path or os.getcwd())
    if path not in sys.path:
        sys.path.insert(0, path)
    try:
        module = importlib.import_module(module_name)
    except Exception as e:
        raise HandlerLoadError(
            f"cannot import handler module {module_name!r} (from {path}): {type(e).__name__}: {e}"
        ) from e
    function = getattr(module, name, None)
    if not callable(function):
        raise HandlerLoadError(f"handler {spec!r}: module {module_name!r} has no function {name!r}")
    return function  # type: ignore[no-any-return]


# One limit per handler function (and event loop), shared by every stream that
# calls it: handlers written for Lambda may keep per-invocation state in module
# globals (Powertools' module-level BatchProcessor does), which is only safe if
# invocations do not overlap.
_LIMITS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Semaphore]] = (
    weakref.WeakKeyDictionary()
)


def _limit(spec: str, size: int) -> asyncio.Semaphore:
    per_loop = _LIMITS.setdefault(asyncio.get_running_loop(), {})
    return per_loop.setdefault(spec, asyncio.Semaphore(size))


def _is_async(function: Callable[..., Any]) -> bool:
    call = getattr(function, "__call__", None)  # noqa: B004 - an object with an async __call__
    return inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(call)


def _in_thread(call: Callable[[], Any], name: str) -> asyncio.Future[Any]:
    """Run `call` in a daemon thread of its own. Python cannot stop a handler
    that runs past its timeout; in a pool its thread would be joined at exit
    and hold up the shutdown, and stuck threads would fill the pool."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def settle(error: BaseException | None, result: Any) -> None:
        if future.done():  # given up on: timed out or cancelled
            return
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)

    def run() -> None:
        try:
            result, error = call(), None
        except BaseException as e:  # the loop decides what it means
            result, error = None, e
        try:
            loop.call_soon_threadsafe(settle, error, result)
        except RuntimeError:
            pass  # the loop is gone: nobody waits for this answer any more

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


class HandlerSink(EventSink):
    """Calls `function(event, context)` in this process: `async def` handlers on
    the event loop, plain ones in a thread, so the loop keeps reading and
    checkpointing while they work."""

    kind = "handler"

    def __init__(
        self,
        cfg: HandlerSinkConfig,
        stream: str,
        failures_table: str | None = None,
        windows: WindowOptions | None = None,
        bounds: SessionBounds | None = None,
    ):
        super().__init__(cfg, stream, failures_table, windows, bounds)
        self.cfg = cfg
        self.stream = stream
        self.function_name = cfg.function_name or stream
        self.function: Callable[..., Any] | None = None
        self.is_async = False
        self._log_stream = log_stream_name()
        self._limit: asyncio.Semaphore | None = None

    async def open(self) -> None:
        self.function = load_handler(self.cfg.handler, self.cfg.code_path)
        self.is_async = _is_async(self.function)
        self._limit = _limit(self.cfg.handler, self.cfg.max_concurrency)
        await super().open()

    def context(self, region: str, source_arn: str) -> LambdaContext:
        return LambdaContext(
            function_name=self.function_name,
            invoked_function_arn=function_arn(self.function_name, region, source_arn),
            memory_limit_in_mb=self.cfg.memory_limit_in_mb,
            timeout_seconds=self.cfg.timeout_seconds,
            log_stream_name=self._log_stream,
            stream=self.stream,
        )

    async def deliver(self, records: list[Record]) -> Any:
        first = records[0]
        return await self._call(lambda_event(records), first.region, first.event_source_arn)

    async def invoke(self, records: list[Record], fields: dict[str, Any], source_arn: str) -> Any:
        region = records[0].region if records else _region_of(source_arn)
        return await self._call({**lambda_event(records), **fields}, region, source_arn)

    async def _call(self, event: dict[str, Any], region: str, source_arn: str) -> Any:
        function = self.function
        if function is None or self._limit is None:
            raise TransientError("handler sink is not open")
        async with self._limit:
            context = self.context(region, source_arn)
            if self.is_async:
                task: asyncio.Future[Any] = asyncio.ensure_future(function(event, context))
            else:
                run = functools.partial(contextvars.copy_context().run, function, event, context)
                task = _in_thread(run, f"handler-{self.stream}-{context.aws_request_id[:8]}")
            try:
                done, _ = await asyncio.wait({task}, timeout=self.cfg.timeout_seconds)
            except asyncio.CancelledError:
                task.cancel()
                raise
            if not done:
                task.cancel()
                if not self.is_async:
                    log.warning(
                        "handler timed out; its thread runs on until the function returns",
                        stream=self.stream,
                        request_id=context.aws_request_id,
                    )
                raise HandlerTimeout(
                    f"Task timed out after {self.cfg.timeout_seconds:g} seconds "
                    f"(request {context.aws_request_id})"
                )
            try:
                return task.result()
            except TransientError:
                raise  # a handler written for the poller may ask for a retry that costs no attempt
            except (Exception, SystemExit) as e:
                raise HandlerError(f"{type(e).__name__}: {e}") from e


def _region_of(arn: str) -> str:
    """The region of an event source ARN (`arn:aws:kinesis:REGION:...`)."""
    parts = arn.split(":")
    return parts[3] if len(parts) > 3 else ""
