"""`poller checkpoints show | rewind`.

A rewind only writes checkpoint rows the daemon already reads at its start,
in one transaction; it takes effect when the stream next starts.

- **Whole stream**: every row of the stream goes (shard rows, lane rows,
  SHARD_END tombstones) and the `#start` row holds the moment: the daemon then
  opens every listed shard with no checkpoint AT_TIMESTAMP of it. Lineage stays
  coherent because the tombstones go too: a parent still within retention is
  unfinished again, so it is read first and its children after it — rewinding
  to before a split reopens the parents. TRIM_HORIZON is the moment 1970-01-01
  (every record still kept is after it); LATEST is now minus the source's
  `latest_margin_seconds`, as the daemon's own LATEST start.
- **One shard** (`--shard`) and its descendants: a shard with a record at or
  after the moment gets a checkpoint just before that record (its sequence
  number with sub-sequence -1: the resume drops what is at or below it, which
  is nothing of that record); its descendants' rows are deleted, so they are
  read after it again (from the stream's stored start, or TRIM_HORIZON). A
  shard with nothing at or after the moment is put at its end: SHARD_END if it
  is closed, else just past its newest record (or no row if it has none).

With `coordination:` the rows are where the workers keep them (the sink's
database, or the DynamoDB lease table: `lease_table`), and a rewind is
refused while a worker holds a live lease on what it rewrites (the stream, or
the shard and its descendants) unless forced: a running worker keeps its place
in memory and overwrites its shards' rows with its next commits. Without it, a
rewind is refused while a daemon is live on the stream. Both are decided
where a take or a daemon cannot slip in between check and write (`guard`).
The rewind also opens again the ended leases of the shards it makes
unfinished (no worker takes an ended lease). Every row it replaces is
returned as it was (`Change.old`), so that it can be undone.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from poller.config import DynamoDBSource, ShardSourceCommon, SqsSource, StreamConfig
from poller.operator.errors import OperatorError
from poller.operator.guard import Guard
from poller.operator.lease_table import keeps_checkpoints, open_lease_table
from poller.operator.render import table
from poller.operator.sources import first_unread, last_record, moment, shard_api
from poller.operator.stores import CheckpointRow, open_store
from poller.records import Checkpoint, ShardState
from poller.sources.shards.api import AFTER_SEQUENCE_NUMBER, TRIM_HORIZON, ShardApi, ShardInfo, StartAt
from poller.sources.shards.positions import START_ID, parse_lane_id, start_row
from poller.sources.snapshot.rows import SNAPSHOT_ID

TRIM_HORIZON_MOMENT = datetime(1970, 1, 1, tzinfo=UTC)
BEFORE_RECORD = -1  # sub-sequence of a checkpoint just before a record
PAST_RECORD = 2**62  # sub-sequence of a checkpoint past every user record of a record


@dataclass(frozen=True, slots=True)
class Target:
    kind: str  # "timestamp" | "trim_horizon" | "latest"
    at: datetime | None = None


@dataclass(slots=True)
class Change:
    """One row a rewind replaces: its stored position before and after (None: no row)."""

    shard_id: str
    old: Checkpoint | None
    new: Checkpoint | None
    note: str = ""  # what a row that goes means, when `new` is None

    @property
    def was(self) -> str:
        return _describe(self.old)

    @property
    def now(self) -> str:
        return self.note if self.new is None and self.note else _describe(self.new)


@dataclass(slots=True)
class Rewound:
    changes: list[Change]
    guard: Guard  # what --force wrote over
    dry_run: bool = False


class CheckpointRows(Protocol):
    """Where a stream's checkpoint rows are: the sink's database (`stores.Store`) or the
    DynamoDB lease table (`lease_table.LeaseTable`)."""

    async def checkpoint_rows(self, stream: str) -> dict[str, CheckpointRow]: ...

    async def rewrite(
        self, stream: str, drop: list[str], new: list[Checkpoint], guard: Guard, *, dry_run: bool = False
    ) -> None: ...


@asynccontextmanager
async def open_checkpoints(cfg: StreamConfig) -> AsyncIterator[CheckpointRows]:
    if keeps_checkpoints(cfg):
        async with open_lease_table(cfg) as lease_table:
            yield lease_table
    else:
        async with open_store(cfg) as store:
            yield store


def _describe(c: Checkpoint | None) -> str:
    if c is None:
        return "(no row)"
    if c.shard_id == START_ID:
        return f"start at {c.sequence_number}"
    if c.state == ShardState.SHARD_END:
        return "SHARD_END"
    if c.sub_sequence == BEFORE_RECORD:
        return f"before {c.sequence_number}"
    if c.sub_sequence >= PAST_RECORD:
        return f"after {c.sequence_number}"
    sub = f"/{c.sub_sequence}" if c.sub_sequence else ""
    return f"{c.sequence_number}{sub}"


def _no_checkpoints(cfg: StreamConfig) -> None:
    if isinstance(cfg.source, SqsSource):
        raise OperatorError(
            f"{cfg.name}: SQS has no checkpoints: messages are deleted once committed; "
            "`poller failures` and the queue's redrive policy cover what failed"
        )


# --------------------------------------------------------------------------- show


async def show(cfg: StreamConfig) -> list[CheckpointRow]:
    _no_checkpoints(cfg)
    async with open_checkpoints(cfg) as store:
        rows = await store.checkpoint_rows(cfg.name)
    return [rows[k] for k in sorted(rows)]


def show_text(name: str, rows: list[CheckpointRow]) -> str:
    cells = [
        [
            r.checkpoint.shard_id,
            str(r.checkpoint.state),
            r.checkpoint.sequence_number or "-",
            _sub(r.checkpoint.sub_sequence),
            ",".join(r.checkpoint.parent_shard_ids) or "-",
            r.updated_at.isoformat() if r.updated_at else "-",
        ]
        for r in rows
    ]
    head = f"stream {name}: {len(rows)} checkpoint row(s)"
    if not cells:
        return head
    return head + "\n" + table(["ROW", "STATE", "SEQUENCE", "SUB", "PARENTS", "UPDATED AT"], cells, "  ")


def _sub(sub: int) -> str:
    if sub == BEFORE_RECORD:
        return "before"
    return "all" if sub >= PAST_RECORD else str(sub)


def show_json(rows: list[CheckpointRow]) -> list[dict[str, object]]:
    return [
        {
            "shard_id": r.checkpoint.shard_id,
            "state": str(r.checkpoint.state),
            "sequence_number": r.checkpoint.sequence_number,
            "sub_sequence": r.checkpoint.sub_sequence,
            "parent_shard_ids": list(r.checkpoint.parent_shard_ids),
            "updated_at": r.updated_at.isoformat() if r.updated_at else None,
        }
        for r in rows
    ]


# --------------------------------------------------------------------------- rewind


def _moment(cfg: StreamConfig, target: Target) -> datetime:
    if target.kind == "trim_horizon":
        return TRIM_HORIZON_MOMENT
    now = datetime.now(UTC)
    if target.kind == "latest":
        assert isinstance(cfg.source, ShardSourceCommon)
        return now - timedelta(seconds=cfg.source.latest_margin_seconds)
    assert target.at is not None
    at = target.at if target.at.tzinfo is not None else target.at.replace(tzinfo=UTC)
    if at > now:
        raise OperatorError(f"{at.isoformat()} is in the future: a stream cannot be read from there")
    return at


async def rewind(
    cfg: StreamConfig,
    target: Target,
    shard: str | None = None,
    *,
    force: bool = False,
    dry_run: bool = False,
) -> Rewound:
    """Rewrite the stream's checkpoint rows; returns what changed (`dry_run`: what would,
    with nothing written). Refused (unless `force`) while a worker holds a live lease on
    a shard it rewrites or, without `coordination:`, while a daemon is live on the
    stream: checked where no take or start can slip in between (`guard`)."""
    _no_checkpoints(cfg)
    async with open_checkpoints(cfg) as store:
        rows = await store.checkpoint_rows(cfg.name)
        plan: dict[str, Checkpoint | None] | None = None
        if shard is None:
            since = _moment(cfg, target)
            drop, new = list(rows), [start_row(cfg.name, since)]
            changes = [
                Change(row_id, rows[row_id].checkpoint, None, "read again from the start below")
                for row_id in sorted(rows)
                if row_id not in (START_ID, SNAPSHOT_ID)
            ]
            was = rows.get(START_ID)
            changes.append(Change(START_ID, was.checkpoint if was else None, new[0]))
            if isinstance(cfg.source, DynamoDBSource) and cfg.source.snapshot.mode != "none":
                # The snapshot brings the table up to date: the stream resumes where it began.
                snapshot = rows.get(SNAPSHOT_ID)
                changes.append(
                    Change(
                        SNAPSHOT_ID,
                        snapshot.checkpoint if snapshot else None,
                        None,
                        "a new snapshot at the next start; the stream then resumes where it begins, "
                        "not at the moment above",
                    )
                )
            elif SNAPSHOT_ID in rows:
                changes.append(Change(SNAPSHOT_ID, rows[SNAPSHOT_ID].checkpoint, None, "(no row)"))
        else:
            async with shard_api(cfg) as api:
                listed = {s.shard_id: s for s in await api.list_shards()}
                if shard not in listed:
                    raise OperatorError(f"{cfg.name}: no shard {shard!r} in the stream's listing")
                plan = await _plan(api, cfg, target, listed, shard, rows)
            drop = [cid for cid in rows if (parse_lane_id(cid) or (cid,))[0] in plan]
            new = [c for c in plan.values() if c is not None]
            changes = [
                Change(sid, rows[sid].checkpoint if sid in rows else None, c) for sid, c in plan.items()
            ]
            # A lane's row goes with its shard's: said, so that it can be put back too.
            changes += [
                Change(cid, rows[cid].checkpoint, None, "read again from its shard's row")
                for cid in sorted(drop)
                if cid not in plan
            ]
        guard = Guard(cfg, plan, force)
        await store.rewrite(cfg.name, drop, new, guard, dry_run=dry_run)
    return Rewound(changes, guard, dry_run)


async def _plan(
    api: ShardApi,
    cfg: StreamConfig,
    target: Target,
    listed: dict[str, ShardInfo],
    root: str,
    rows: dict[str, CheckpointRow],
) -> dict[str, Checkpoint | None]:
    """The new row of `root` and of each descendant (None: no row), parents first."""
    children: dict[str, list[str]] = {}
    for s in listed.values():
        for p in s.parent_ids:
            children.setdefault(p, []).append(s.shard_id)
    since = None if target.kind == "latest" else _moment(cfg, target)
    plan: dict[str, Checkpoint | None] = {}
    reopened: set[str] = set()
    queue = deque([root])
    while queue:
        shard_id = queue.popleft()
        if shard_id in plan:
            continue
        info = listed[shard_id]
        queue.extend(children.get(shard_id, []))
        if any(p in reopened for p in info.parent_ids):
            reopened.add(shard_id)  # read again after its parent: no row
            plan[shard_id] = None
            continue
        parents = tuple(info.parent_ids)
        if since is not None:
            start = moment(since) if since != TRIM_HORIZON_MOMENT else StartAt(TRIM_HORIZON)
            found = await first_unread(api, info, start)
            if found is not None:
                reopened.add(shard_id)
                plan[shard_id] = Checkpoint(
                    cfg.name, shard_id, found.sequence_number, BEFORE_RECORD, parent_shard_ids=parents
                )
                continue
        plan[shard_id] = await _at_end(api, cfg.name, info, rows.get(shard_id))
    return plan


async def _at_end(
    api: ShardApi, stream: str, info: ShardInfo, row: CheckpointRow | None
) -> Checkpoint | None:
    parents = tuple(info.parent_ids)
    if info.closed:
        return Checkpoint(stream, info.shard_id, None, 0, ShardState.SHARD_END, parents)
    position = row.checkpoint.sequence_number if row is not None else None
    start = StartAt(AFTER_SEQUENCE_NUMBER, position) if position else StartAt(TRIM_HORIZON)
    last = await last_record(api, info, start)
    if last is not None:
        return Checkpoint(stream, info.shard_id, last.sequence_number, PAST_RECORD, parent_shard_ids=parents)
    return row.checkpoint if row is not None else None


def position(c: Checkpoint | None) -> str:
    """A stored row exactly, as `checkpoints show` has it: SEQUENCE/SUB STATE."""
    if c is None:
        return "(no row)"
    return f"{c.sequence_number or '-'}/{c.sub_sequence} {c.state}"


def rewind_text(name: str, rewound: Rewound) -> str:
    rows = [[c.shard_id, position(c.old), c.now] for c in rewound.changes]
    head = (
        f"stream {name}: dry run, nothing written; a rewind would replace these rows"
        if rewound.dry_run
        else f"stream {name}: rewound; takes effect when the stream next starts. It replaced these rows"
    )
    return f"{head} (WAS: sequence number/sub-sequence state):\n" + table(["ROW", "WAS", "NOW"], rows, "  ")


def rewind_json(rewound: Rewound) -> list[dict[str, object]]:
    return [
        {"shard_id": c.shard_id, "was": c.was, "now": c.now, "old": _stored(c.old), "new": _stored(c.new)}
        for c in rewound.changes
    ]


def _stored(c: Checkpoint | None) -> dict[str, object] | None:
    if c is None:
        return None
    return {"sequence_number": c.sequence_number, "sub_sequence": c.sub_sequence, "state": str(c.state)}
