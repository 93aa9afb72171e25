"""Tumbling windows for the handler and lambda sinks, as Lambda has them
(`TumblingWindowInSeconds`, Kinesis and DynamoDB Streams).

Each shard's records are grouped into fixed windows `[k·W, (k+1)·W)` of epoch
seconds by their arrival time (Kinesis `ApproximateArrivalTimestamp`, DynamoDB
`ApproximateCreationDateTime`). Every invocation carries the window, the
`state` the function returned last in that window on that shard (`{}` at
first), and the two flags; when the window ends one more invocation, with no
records and `isFinalInvokeForWindow: true`, hands the function its state to
act on, and the state is dropped. A state over 1 MiB ends the window early:
that state goes to a final invocation with `isWindowTerminatedEarly: true`,
and the window goes on with `{}`.

Invariants:

- A shard's window is a row of `poller_windows` in the checkpoint store (one
  per stream and shard), written by the same store transaction as the
  checkpoint it goes with. A replay after a crash therefore starts from a
  checkpoint with the state that belongs to it.
- The row's `through` position: every record of the shard at or below it is
  in the state, or was in a window whose final invocation was made. Records at
  or below it are never handed over again, so a record is folded into its
  window once even when an earlier attempt of the same commit got that far.
- The state in memory moves only when an invocation succeeded; a failed
  invocation leaves it as it was for the retry.
- A record never goes to a window before the shard's current one (arrival
  times are approximate): it joins the current window.
- A window gets its final invocation when a record of a later window arrives,
  when the shard ends (with its SHARD_END checkpoint), or from the timer: the
  window ended more than `grace` seconds ago, the shard has been quiet that
  long, and every record handed to the sink has been checkpointed.
- The row remembers the checkpoint it was written with. A row whose
  checkpoint is not the shard's stored one (a `checkpoints rewind` moved it)
  is not used: the records read again start fresh windows.
- Windows need one lane per shard (`parallelization_factor: 1`, checked by the
  config): records reach the sink in shard order.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from dataclasses import dataclass, field, replace
from dataclasses import fields as dataclass_fields
from typing import Any, Protocol

from poller.config import HandlerSinkConfig, LambdaSinkConfig, StreamConfig
from poller.events import window_fields
from poller.jsonenc import json_default
from poller.observability.logging import get_logger
from poller.records import (
    Checkpoint,
    PartialFailure,
    Position,
    Record,
    RecordError,
    ShardState,
    TransientError,
)
from poller.retry import Backoff
from poller.rows import RowOp, TableShape
from poller.sink_api import CommitResult, Fence, Fenced, Transaction
from poller.sinks import ddl
from poller.sinks.base import SqlSink

log = get_logger()

WINDOWS_TABLE = "poller_windows"
MAX_STATE_BYTES = 1024 * 1024  # Lambda: "a maximum of 1 MB per shard"
COLUMNS = [
    "stream",
    "shard_id",
    "window_start",
    "window_end",
    "state",  # JSON text; NULL once the window's final invocation was made
    "through_sequence",
    "through_sub_sequence",
    "checkpoint_sequence",
    "checkpoint_sub_sequence",
    "event_source_arn",
]
SHAPE = TableShape(COLUMNS, ["stream", "shard_id"], [0, 1], False)

TICK_SECONDS = 0.25


@dataclass(frozen=True, slots=True)
class WindowOptions:
    seconds: int
    grace: float  # after a window's end, and of quiet on the shard, before the timer closes it
    load_at_open: bool  # one process reads every shard: load every row at start
    final_attempts: int  # a final invocation failing this often is given up
    # Beyond the grace, how long a window found in the store at start waits for
    # its shard's first commit: the reader may not have handed over yet what it
    # read since the last checkpoint.
    startup_quiet: float = 10.0

    @classmethod
    def for_seconds(cls, seconds: int) -> WindowOptions | None:
        """Defaults for a sink built without its stream's settings."""
        return cls(seconds, 3.5, True, 3) if seconds else None


def window_options(cfg: StreamConfig) -> WindowOptions | None:
    """The stream's window settings, or None when its sink has no windows."""
    sink = cfg.sink
    if not isinstance(sink, HandlerSinkConfig | LambdaSinkConfig) or not sink.tumbling_window_seconds:
        return None
    src = cfg.source
    poll = max(getattr(src, "idle_poll_seconds", 1.0), getattr(src, "max_idle_poll_seconds", 1.0))
    # A record that arrived just before the end is read within one idle poll and
    # waits at most one batch window before it reaches the sink.
    grace = poll + cfg.batch.window_seconds + 1.0
    return WindowOptions(
        sink.tumbling_window_seconds, grace, cfg.coordination is None, cfg.retry.max_attempts
    )


class WindowStateError(RecordError):
    """The function's answer has no usable `state` (Lambda: a failed invocation)."""

    reason = "window_state_error"


class InvocationFailed(PartialFailure):
    """An invocation failed after others of the same commit had succeeded: the
    records before it are done, so only its own records cost an attempt."""

    def __init__(self, error: RecordError, records: list[Record]):
        super().__init__(str(error), {r.sequence_number for r in records})
        self.reason = error.reason


class UserCode(Protocol):
    """What the windows need of a handler or lambda sink."""

    def fit(self, records: list[Record], fields: dict[str, Any]) -> int:
        """How many of `records` (at least 1) one invocation takes with `fields`;
        raises a RecordError when not even the first fits."""
        ...

    async def invoke(self, records: list[Record], fields: dict[str, Any], source_arn: str) -> Any:
        """One invocation with `{"Records": [...], **fields}`; returns the answer.
        RecordError when the function failed, TransientError when unreachable."""
        ...

    def failed_items(self, answer: Any, records: list[Record]) -> set[str]:
        """The `batchItemFailures` of the answer (empty when not honoured)."""
        ...


def window_start(arrival: float, seconds: int) -> int:
    """The start of the window an arrival time falls in (windows are aligned on the epoch)."""
    return int(arrival // seconds) * seconds


def read_state(answer: Any) -> str:
    """The answer's `state` as the JSON text it is kept and passed on as (the
    function gets back what JSON keeps of it), non-ASCII escaped."""
    if not isinstance(answer, dict) or not isinstance(answer.get("state"), dict):
        got = "no object" if not isinstance(answer, dict) else f"state {type(answer.get('state')).__name__}"
        raise WindowStateError(
            f"a function on a tumbling window must return {{'state': {{...}}}} (got {got}): "
            "the invocation failed"
        )
    try:
        return json.dumps(answer["state"], default=json_default, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError) as e:
        raise WindowStateError(f"the returned state is not JSON: {e}") from None


def state_bytes(text: str) -> int:
    """The state's size as compact UTF-8 JSON. Escaped text is never shorter,
    so it is measured again only when it looks too large."""
    if len(text) <= MAX_STATE_BYTES:
        return len(text)
    plain = json.dumps(json.loads(text), separators=(",", ":"), ensure_ascii=False)
    return len(plain.encode("utf-8", "surrogatepass"))


@dataclass(slots=True)
class ShardWindow:
    """One shard's window as in memory and in its row."""

    shard_id: str
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    loaded: bool = False
    fence: Fence | None = None  # the lease the row was loaded under
    start: int | None = None  # None: no window yet
    end: int = 0
    # The state as JSON text: each invocation gets its own copy, so a handler that
    # changes the dict it was given (as Lambda's examples do) cannot change this.
    # None: the window's final invocation was made.
    state: str | None = None
    through: Position | None = None
    checkpoint: Position | None = None  # the shard's checkpoint as last stored
    arn: str = ""
    early: bool = False  # the state outgrew the bound: an early final is due
    handed: Position | None = None  # the last record handed to the sink
    activity: float = field(default_factory=time.monotonic)
    final_failures: int = 0
    retry_at: float = 0.0
    unsaved: bool = False  # closed by the timer, row not stored yet

    @property
    def open(self) -> bool:
        return self.start is not None and self.state is not None

    def pending(self) -> bool:
        """Records handed to the sink that are not checkpointed yet."""
        return self.handed is not None and self.handed.is_after(self.checkpoint)

    def done(self, record: Record) -> bool:
        return self.through is not None and not record.position.is_after(self.through)

    def row(self, stream: str, checkpoint: Position | None) -> tuple[Any, ...]:
        t, c = self.through, checkpoint
        return (
            stream,
            self.shard_id,
            self.start,
            self.end,
            self.state,
            t.sequence_number if t else None,
            t.sub_sequence if t else None,
            c.sequence_number if c else None,
            c.sub_sequence if c else None,
            self.arn,
        )


class TumblingWindows:
    """The windows of one stream's shards, delivered through `code` and kept in `store`."""

    def __init__(self, stream: str, options: WindowOptions, store: SqlSink, code: UserCode):
        self.stream = stream
        self.options = options
        self.store = store
        self.code = code
        self.shards: dict[str, ShardWindow] = {}
        self._stopping = asyncio.Event()
        self._timer: asyncio.Task[None] | None = None
        self._backoff = Backoff(0.5, 30.0)

    # -- life -------------------------------------------------------------------------

    async def start(self) -> None:
        """After the store opened: the stored windows (when this process reads every
        shard), then the timer that closes windows no later record closes."""
        self._stopping.clear()
        self.shards.clear()
        if self.options.load_at_open:
            rows = await self._select(None)
            checkpoints = await self.store.load_checkpoints(self.stream)
            quiet_from = time.monotonic() + self.options.startup_quiet
            for row in rows:
                shard = ShardWindow(row[0], loaded=True, activity=quiet_from)
                self._load(shard, row, checkpoints.get(row[0]))
                self.shards[shard.shard_id] = shard
        self._timer = asyncio.create_task(self._run_timer(), name=f"windows-{self.stream}")

    async def adopt(self, shard_id: str, fence: Fence) -> None:
        """The shard's lease is this process's now: its stored window is loaded, so
        that the timer closes it even if no record comes (after the quiet period a
        start gives the reader to catch up)."""
        shard = self.shards.setdefault(shard_id, ShardWindow(shard_id))
        async with shard.lock:
            await self._ensure_loaded(shard, fence)
            shard.activity = time.monotonic() + self.options.startup_quiet

    async def close(self) -> None:
        """Stop the timer; a final invocation under way is let finish (the
        supervisor's shutdown deadline bounds it)."""
        self._stopping.set()
        timer, self._timer = self._timer, None
        if timer is not None:
            await timer

    # -- the commit ------------------------------------------------------------------

    async def commit(self, tx: Transaction) -> CommitResult:
        shard_id = _shard_of(tx)
        if shard_id is None:
            return await self.store.commit(tx)
        shard = self.shards.setdefault(shard_id, ShardWindow(shard_id))
        async with shard.lock:
            await self._ensure_loaded(shard, tx.fence)
            for r in tx.records:
                if r.position.is_after(shard.handed):
                    shard.handed = r.position
            ending = any(c.shard_id == shard_id and c.state is ShardState.SHARD_END for c in tx.checkpoints)
            try:
                await self._settle(shard)
                delivered = await self._deliver(shard, tx.records)
                await self._settle(shard)  # the stored state stays within the bound
                if ending and shard.open:
                    # Lambda closes the window of a shard that ends; its children start their own.
                    await self._final(shard, early=False)
            finally:
                shard.activity = time.monotonic()
            stored = [c.position for c in tx.checkpoints if c.shard_id == shard_id and c.position]
            checkpoint = stored[-1] if stored else shard.checkpoint
            ops = self._ops(shard, checkpoint, ending)
            try:
                result = await self.store.commit(replace(tx, ops=[*tx.ops, *ops]))
            except Fenced:
                shard.loaded = False  # another worker's now: read again if it comes back
                raise
            shard.checkpoint = checkpoint
            shard.unsaved = False
            if ending:
                del self.shards[shard_id]
        result.rows = delivered
        return result

    def _ops(self, shard: ShardWindow, checkpoint: Position | None, ending: bool) -> list[RowOp]:
        """The shard's row as the transaction leaves it: written with the
        checkpoint it goes with, deleted with the shard's SHARD_END."""
        key = (self.stream, shard.shard_id)
        if ending:
            return self.store.coerce([RowOp(key, None)])
        if shard.start is None:
            return []
        return self.store.coerce([RowOp(key, shard.row(self.stream, checkpoint))])

    async def _deliver(self, shard: ShardWindow, records: list[Record]) -> int:
        """Hand `records` over, window by window; the number delivered."""
        fresh = [r for r in records if not shard.done(r)]
        delivered = 0
        for start, group in self._groups(shard, fresh):
            if shard.open and start > (shard.start or 0):
                await self._final(shard, early=False)
            if shard.start is None or start > shard.start:
                shard.start, shard.end = start, start + self.options.seconds
                shard.state = "{}"
            elif shard.state is None:
                log.warning(
                    "a record arrived for a window already closed: it opens again with a fresh state",
                    stream=self.stream,
                    shard=shard.shard_id,
                    sequence=group[0].sequence_number,
                )
                shard.state = "{}"
            shard.arn = group[0].event_source_arn or shard.arn
            while group:
                await self._settle(shard)
                taken = await self._invoke(shard, group, progress=delivered > 0)
                delivered += taken
                group = group[taken:]
        return delivered

    async def _invoke(self, shard: ShardWindow, group: list[Record], progress: bool) -> int:
        """One invocation with as many of `group` as it takes; how many it took.
        A failure after others of this commit succeeded blames this invocation only."""
        fields = self._fields(shard, final=False, early=False)
        part = group[:1]
        try:
            part = group[: max(1, self.code.fit(group, fields))]
            answer = await self.code.invoke(part, fields, shard.arn)
            state = read_state(answer)
            failed = self.code.failed_items(answer, part)
        except RecordError as e:
            if progress:
                raise InvocationFailed(e, part) from e
            raise
        ok = len(part)
        if failed:
            ok = next(i for i, r in enumerate(part) if r.sequence_number in failed)
        if ok:
            shard.through = part[ok - 1].position
        shard.state = state
        if state_bytes(state) > MAX_STATE_BYTES:
            shard.early = True
        if failed:
            raise PartialFailure(
                f"{len(failed)} of {len(part)} records reported failed (batchItemFailures)", failed
            )
        return len(part)

    async def _settle(self, shard: ShardWindow) -> None:
        """An early end that is due: its final invocation, then the same window with `{}`."""
        if shard.early and shard.open:
            await self._final(shard, early=True)

    async def _final(self, shard: ShardWindow, *, early: bool) -> None:
        """The window's final invocation: the state it ends with, no records."""
        fields = self._fields(shard, final=True, early=early)
        try:
            await self.code.invoke([], fields, shard.arn)
        except TransientError:
            raise
        except RecordError as e:
            # Lambda stops the shard until the final invocation succeeds; here it is
            # retried without blaming any record, a bounded number of times.
            shard.final_failures += 1
            if shard.final_failures < self.options.final_attempts:
                raise TransientError(
                    f"final invocation of window {fields['window']['start']} failed "
                    f"({shard.final_failures} of {self.options.final_attempts} attempts): {e}"
                ) from e
            log.error(
                "final invocation of a window failed on every attempt: its state is dropped",
                stream=self.stream,
                shard=shard.shard_id,
                window=fields["window"]["start"],
                attempts=shard.final_failures,
                state_bytes=len(shard.state or ""),
                error=str(e),
            )
        log.debug(
            "window closed",
            stream=self.stream,
            shard=shard.shard_id,
            window=fields["window"]["start"],
            early=early,
        )
        shard.final_failures = 0
        shard.early = False
        shard.state = "{}" if early else None

    def _fields(self, shard: ShardWindow, *, final: bool, early: bool) -> dict[str, Any]:
        assert shard.start is not None
        return window_fields(
            shard.start,
            shard.end,
            json.loads(shard.state or "{}"),
            shard.shard_id,
            shard.arn,
            final=final,
            terminated_early=early,
        )

    def _groups(self, shard: ShardWindow, records: list[Record]) -> list[tuple[int, list[Record]]]:
        """Consecutive records of one window, never one before the shard's current window."""
        groups: list[tuple[int, list[Record]]] = []
        floor = shard.start
        for r in records:
            start = window_start(r.arrival_time, self.options.seconds)
            if floor is not None and start < floor:
                start = floor
            floor = start
            if groups and groups[-1][0] == start:
                groups[-1][1].append(r)
            else:
                groups.append((start, [r]))
        return groups

    # -- the timer --------------------------------------------------------------------

    async def _run_timer(self) -> None:
        while not self._stopping.is_set():
            try:
                await asyncio.wait_for(self._stopping.wait(), TICK_SECONDS)
                return
            except TimeoutError:
                pass
            for shard in list(self.shards.values()):
                if self._stopping.is_set():
                    return
                if shard.fence is not None and not shard.fence.current():
                    # The lease is no longer this process's: its new holder closes the
                    # window from the stored state; a final call from here would be a second.
                    self.shards.pop(shard.shard_id, None)
                    continue
                if not shard.lock.locked() and self._due(shard):
                    await self._close_by_timer(shard)

    def _due(self, shard: ShardWindow) -> bool:
        now, mono = time.time(), time.monotonic()
        if not shard.loaded or mono < shard.retry_at or shard.pending():
            return False
        if shard.unsaved:
            return True
        grace = self.options.grace
        return shard.open and now >= shard.end + grace and mono - shard.activity >= grace

    async def _close_by_timer(self, shard: ShardWindow) -> None:
        async with shard.lock:
            if not self._due(shard):  # a commit came first
                return
            try:
                if shard.open:
                    await self._settle(shard)
                    await self._final(shard, early=False)
                    shard.unsaved = True
                row = shard.row(self.stream, shard.checkpoint)
                ops = self.store.coerce([RowOp((self.stream, shard.shard_id), row)])
                await self.store.commit(Transaction(stream=self.stream, ops=ops, fence=shard.fence))
                shard.unsaved = False
            except Fenced:
                self.shards.pop(shard.shard_id, None)
                log.info("window left to the shard's new owner", stream=self.stream, shard=shard.shard_id)
            except Exception as e:
                attempt = max(shard.final_failures, 1)
                shard.retry_at = time.monotonic() + self._backoff.delay(attempt)
                log.warning(
                    "closing a window failed; retrying",
                    stream=self.stream,
                    shard=shard.shard_id,
                    error=f"{type(e).__name__}: {e}",
                )

    # -- the rows ---------------------------------------------------------------------

    async def _ensure_loaded(self, shard: ShardWindow, fence: Fence | None) -> None:
        if shard.loaded and shard.fence == fence:
            return
        rows = await self._select(shard.shard_id)
        checkpoints = await self.store.load_checkpoints(self.stream)
        fresh = ShardWindow(shard.shard_id, loaded=True, fence=fence)
        self._load(fresh, rows[0] if rows else None, checkpoints.get(shard.shard_id))
        for f in dataclass_fields(ShardWindow):
            if f.name != "lock":  # held by the caller
                setattr(shard, f.name, getattr(fresh, f.name))

    def _load(self, shard: ShardWindow, row: tuple[Any, ...] | None, checkpoint: Checkpoint | None) -> None:
        """`shard` as its row says, if the row goes with the shard's stored checkpoint."""
        stored = checkpoint.position if checkpoint is not None else None
        shard.checkpoint = stored
        if row is None:
            return
        written = _position(shard.shard_id, row[6], row[7])
        if _key(written) != _key(stored):
            log.warning(
                "window state not used: the shard's checkpoint moved since it was stored (a rewind?)",
                stream=self.stream,
                shard=shard.shard_id,
            )
            return
        shard.start, shard.end = int(row[1]), int(row[2])
        shard.state = row[3]
        shard.through = _position(shard.shard_id, row[4], row[5])
        shard.arn = row[8] or ""
        shard.handed = shard.through if shard.through and shard.through.is_after(stored) else stored

    async def _select(self, shard_id: str | None) -> list[tuple[Any, ...]]:
        """Rows (shard_id, window_start, window_end, state, through_sequence,
        through_sub_sequence, checkpoint_sequence, checkpoint_sub_sequence,
        event_source_arn) of the stream, or of one shard."""
        sql = f"SELECT {', '.join(COLUMNS[1:])} FROM {ddl.quote_ident(WINDOWS_TABLE)} WHERE stream = ?" + (
            " AND shard_id = ?" if shard_id is not None else ""
        )
        args = (self.stream,) if shard_id is None else (self.stream, shard_id)
        try:
            return await select(self.store, sql, args)
        except (TransientError, RecordError):
            raise
        except Exception as e:
            raise self.store.classify(e) from e


def _shard_of(tx: Transaction) -> str | None:
    """The shard a transaction commits for: its records', or its shard checkpoint's
    (lane rows and the `#start` row have a `#` in their id)."""
    if tx.records:
        return tx.records[0].shard_id
    shards = {c.shard_id for c in tx.checkpoints if "#" not in c.shard_id}
    return shards.pop() if len(shards) == 1 else None


def _position(shard_id: str, sequence: Any, sub: Any) -> Position | None:
    return None if sequence is None else Position(shard_id, str(sequence), int(sub or 0))


def _key(p: Position | None) -> tuple[int, int] | None:
    return None if p is None else p.key()


# -- SQL of the three stores ------------------------------------------------------------


def table_ddl(kind: str) -> list[str]:
    """The statements creating `poller_windows` in a store of `kind` (postgres, mysql, sqlite)."""
    t, quote, suffix, first = {
        "postgres": (ddl.POSTGRES, '"', "", ["SELECT pg_advisory_xact_lock(727274)"]),
        "mysql": (ddl.MYSQL, "`", " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4", []),
        "sqlite": (ddl.SQLITE, '"', "", []),
    }[kind]
    return [
        *first,
        f"CREATE TABLE IF NOT EXISTS {ddl.quote_ident(WINDOWS_TABLE, quote)} ("
        f"stream {t.key} NOT NULL, shard_id {t.key} NOT NULL, "
        f"window_start {t.bigint} NOT NULL, window_end {t.bigint} NOT NULL, state {t.long_text}, "
        f"through_sequence {t.text}, through_sub_sequence {t.bigint}, "
        f"checkpoint_sequence {t.text}, checkpoint_sub_sequence {t.bigint}, "
        f"event_source_arn {t.text}, PRIMARY KEY (stream, shard_id)){suffix}",
    ]


async def create_table(store: SqlSink) -> None:
    """Create `poller_windows` through an open store (before a store that keeps
    window rows opens: it reads the table's columns when it opens)."""
    try:
        async with store.transaction() as conn:
            for stmt in table_ddl(store.kind):
                await conn.execute(stmt)
    except (TransientError, RecordError):
        raise
    except Exception as e:
        raise store.classify(e) from e


async def select(store: SqlSink, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    """Run `sql`, written with `?` placeholders and `"` quotes, in the store's dialect."""
    async with store.transaction() as conn:
        if store.kind == "postgres":
            n = itertools.count(1)
            rows = await conn.fetch(re.sub(r"\?", lambda _: f"${next(n)}", sql), *args)
            return [tuple(r) for r in rows]
        if store.kind == "mysql":
            await conn.execute(sql.replace("?", "%s").replace('"', "`"), args)
            return [tuple(r) for r in await conn.fetchall()]
        async with conn.execute(sql, args) as cur:
            return [tuple(r) for r in await cur.fetchall()]
