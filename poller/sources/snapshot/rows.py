"""A snapshot's own checkpoint rows, and what they say: pure, no I/O.

They live in the sink's checkpoint table under the stream's name, beside the
shard rows, and are written in the same transactions as the rows they
account for:

- `#snapshot`: the snapshot itself, as JSON in `sequence_number`:
  `{"began": ISO, "segments": N, "done": ISO or null, "resync": bool}`.
  `began` is the stream position recorded before the first Scan (also
  stored as the `#start` row when the stream has no shard rows): the stream
  is read from there once the scan is done. `resync` marks a re-sync after a
  retention gap, which drops the stale shard rows when it completes.
- `#snapshot/segment-I-of-N`: where segment I's next page starts, as the
  typed JSON of the last page's LastEvaluatedKey (no row: the segment has not
  committed a page; `done`: it has ended), and in `sub_sequence` the items it
  committed so far.

The state is always RUNNING: a SHARD_END row of an id that no listing shows
would be taken for a tombstone and deleted.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from poller.records import Checkpoint, ShardState

SNAPSHOT_ID = "#snapshot"
_SEGMENT_PREFIX = SNAPSHOT_ID + "/segment-"
_DONE = "done"

# MySQL keeps 1,024 characters of `sequence_number`: a LastEvaluatedKey too long
# to store (keys of over ~700 bytes) leaves the segment's row where it was, so a
# restart reads a few pages again rather than skipping any.
MAX_KEY_TEXT = 1000


def is_snapshot_row(checkpoint_id: str) -> bool:
    return checkpoint_id == SNAPSHOT_ID or checkpoint_id.startswith(_SEGMENT_PREFIX)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


def _moment(text: object) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class SnapshotState:
    """The `#snapshot` row."""

    began: datetime
    segments: int
    done: datetime | None = None
    resync: bool = False

    def row(self, stream: str) -> Checkpoint:
        body = {
            "began": _iso(self.began),
            "segments": self.segments,
            "done": _iso(self.done) if self.done else None,
            "resync": self.resync,
        }
        return Checkpoint(stream, SNAPSHOT_ID, json.dumps(body, separators=(",", ":")), 0, ShardState.RUNNING)

    @classmethod
    def parse(cls, row: Checkpoint | None) -> SnapshotState | None:
        """None when there is no row, or one that cannot be read (then a new snapshot starts)."""
        if row is None or not row.sequence_number:
            return None
        try:
            body = json.loads(row.sequence_number)
        except ValueError:
            return None
        if not isinstance(body, dict):
            return None
        began = _moment(body.get("began"))
        segments = body.get("segments")
        if began is None or not isinstance(segments, int) or segments < 1:
            return None
        return cls(began, segments, _moment(body.get("done")), bool(body.get("resync")))


def segment_id(index: int, total: int) -> str:
    return f"{_SEGMENT_PREFIX}{index}-of-{total}"


def parse_segment_id(checkpoint_id: str) -> tuple[int, int] | None:
    """(index, total) of a segment row's id; None for any other id."""
    if not checkpoint_id.startswith(_SEGMENT_PREFIX):
        return None
    index, of, total = checkpoint_id.removeprefix(_SEGMENT_PREFIX).partition("-of-")
    if not (of and index.isdigit() and total.isdigit()) or int(index) >= int(total):
        return None
    return int(index), int(total)


def encode_key(key: dict[str, Any]) -> str:
    """A LastEvaluatedKey (typed attribute values; key attributes are S, N or B) as JSON text."""
    out: dict[str, dict[str, str]] = {}
    for name, value in key.items():
        ((kind, item),) = value.items()
        out[name] = {kind: base64.b64encode(item).decode() if kind == "B" else str(item)}
    return json.dumps(out, sort_keys=True, separators=(",", ":"))


def decode_key(text: str) -> dict[str, Any]:
    """`encode_key`'s text back as an ExclusiveStartKey; ValueError if it is not one."""
    body = json.loads(text)
    if not isinstance(body, dict) or not body:
        raise ValueError("not a key")
    out: dict[str, Any] = {}
    for name, value in body.items():
        if not isinstance(value, dict) or len(value) != 1:
            raise ValueError(f"attribute {name!r} is not a typed key value")
        ((kind, item),) = value.items()
        if kind not in ("S", "N", "B") or not isinstance(item, str):
            raise ValueError(f"attribute {name!r}: {kind} is not a key type")
        out[name] = {kind: base64.b64decode(item) if kind == "B" else item}
    return out


@dataclass(frozen=True, slots=True)
class SegmentProgress:
    """One segment's row: where its next page starts, and what it committed."""

    index: int
    total: int
    start_key: dict[str, Any] | None = None  # None: from the segment's first page
    items: int = 0
    done: bool = False

    @property
    def checkpoint_id(self) -> str:
        return segment_id(self.index, self.total)

    def after_page(self, items: int, last_key: dict[str, Any] | None) -> SegmentProgress:
        """The progress once a page of `items` items ending at `last_key` commits."""
        return SegmentProgress(self.index, self.total, last_key, self.items + items, last_key is None)

    def row(self, stream: str) -> Checkpoint | None:
        """The row to write, or None when the key cannot be stored (the row stays where it was)."""
        if self.done:
            text = _DONE
        elif self.start_key is None:
            text = ""
        else:
            text = encode_key(self.start_key)
            if len(text) > MAX_KEY_TEXT:
                return None
        return Checkpoint(stream, self.checkpoint_id, text, self.items, ShardState.RUNNING)

    @classmethod
    def parse(cls, row: Checkpoint, index: int, total: int) -> SegmentProgress:
        """The stored progress; an unreadable key restarts the segment from its first page."""
        text = row.sequence_number or ""
        items = max(0, row.sub_sequence)
        if text == _DONE:
            return cls(index, total, None, items, True)
        if not text:
            return cls(index, total, None, items)
        try:
            return cls(index, total, decode_key(text), items)
        except ValueError:
            return cls(index, total, None, 0)


def progress_of(rows: dict[str, Checkpoint], total: int) -> list[SegmentProgress]:
    """Every segment's progress from the stored rows (segments of another count are ignored)."""
    found: dict[int, SegmentProgress] = {}
    for checkpoint_id, row in rows.items():
        parsed = parse_segment_id(checkpoint_id)
        if parsed is not None and parsed[1] == total:
            found[parsed[0]] = SegmentProgress.parse(row, *parsed)
    return [found.get(i) or SegmentProgress(i, total) for i in range(total)]


def switch_over_gap(
    began: datetime, now: datetime, retention_seconds: float
) -> tuple[datetime, datetime] | None:
    """The time range the stream no longer holds when it is read from `began`
    (the snapshot took longer than the retention): (began, oldest moment still
    held), or None when nothing is lost."""
    oldest = datetime.fromtimestamp(now.timestamp() - retention_seconds, UTC)
    return (began, oldest) if began < oldest else None
