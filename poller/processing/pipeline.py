"""decode → filter → age check → map → coerce: source records into commit units.

The map stage (`mapping.Mapper`, from the sink's `columns`) turns a record
into row operations; the sink then types them for its columns
(`Sink.coerce`). A sink that takes records rather than rows (user code) has
no `columns`, and its units carry no rows.

Everything here is per record and synchronous; a record that cannot be
decoded or mapped becomes a failed unit on its own, so it never holds back
the records around it and never needs bisection to be found.

Containment by construction: *any* exception raised while one record is
decoded, filtered, mapped or coerced is that record's failure — whatever its
type, known or not — so a surprise in user data never escapes into a lane.
Only exceptions that are not `Exception`s (cancellation, KeyboardInterrupt)
pass through.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from poller.config import DatabaseSinkConfig, StreamConfig
from poller.events import filter_view
from poller.observability import metrics
from poller.processing.decoders import Decoder, build_decoder
from poller.processing.failures import Unit
from poller.processing.filters import Matcher, compile_patterns
from poller.processing.mapping import Mapper
from poller.records import Record, RecordError, contained
from poller.rows import RowOp
from poller.sink_api import Sink


class RecordAgeError(RecordError):
    reason = "record_age"


class Preparer:
    def __init__(self, cfg: StreamConfig, sink: Sink, clock: Callable[[], float] = time.time):
        self.cfg = cfg
        self.sink = sink
        self.decoder: Decoder = build_decoder(cfg.decoders, cfg.limits)
        self.matcher: Matcher = compile_patterns(cfg.filters)
        self.filtering = bool(cfg.filters)
        self.max_age = cfg.retry.max_record_age_seconds
        self.clock = clock
        self._filtered = metrics.RECORDS.labels(cfg.name, "filtered")
        s = cfg.sink
        self.mapper: Mapper | None = (
            Mapper(s.columns, s.key, s.on_delete, s.soft_delete_column)
            if isinstance(s, DatabaseSinkConfig)
            else None
        )

    def rows(self, record: Record) -> list[RowOp]:
        """The map stage then the sink's coercion, for one decoded record."""
        if self.mapper is None:
            return []
        return self.sink.coerce(self.mapper.ops(record))

    def _expand(self, record: Record) -> list[Record]:
        try:
            children = self.decoder(record)
        except RecordError:
            raise
        except Exception as e:
            raise contained(e, "decode") from e
        if self.filtering:
            try:
                kept = [c for c in children if self.matcher.matches(filter_view(c))]
            except RecordError:
                raise
            except Exception as e:
                raise contained(e, "filter") from e
            if len(kept) != len(children):
                self._filtered.inc(len(children) - len(kept))
            return kept
        return children

    def _too_old(self, record: Record, now: float) -> bool:
        return (
            self.max_age is not None and record.arrival_time > 0 and now - record.arrival_time > self.max_age
        )

    def stream_units(self, records: list[Record]) -> list[Unit]:
        """One unit per decoded record, positioned by (sequence, sub-sequence);
        a source record that yields nothing still moves the checkpoint."""
        units: list[Unit] = []
        now = self.clock()
        # Bound once: this loop runs per record.
        map_ops = self.mapper.ops if self.mapper is not None else None
        coerce = self.sink.coerce
        aging = self.max_age is not None
        expand = self._expand if self.filtering else self.decoder
        for record in records:
            if aging and self._too_old(record, now):
                u = Unit(source=record, token=record.position, index=len(units))
                u.fail(
                    "record_age",
                    RecordAgeError(f"record is older than {self.max_age} s"),
                    attempts=0,
                )
                units.append(u)
                continue
            try:
                children = expand(record)
            except Exception as e:
                u = Unit(source=record, token=record.position, index=len(units))
                u.fail_with(contained(e, "decode"), attempts=1)
                units.append(u)
                continue
            if not children:
                units.append(Unit(source=record, token=record.position, index=len(units), filtered=True))
                continue
            for child in children:
                u = Unit(source=child, records=[child], token=child.position, index=len(units))
                try:
                    u.ops = coerce(map_ops(child)) if map_ops is not None else []
                except Exception as e:
                    u.fail_with(contained(e, "mapping"), attempts=1)
                units.append(u)
        return units

    def message_unit(self, record: Record, token: object, index: int) -> Unit:
        """One unit per SQS message, whatever it decodes into."""
        u = Unit(source=record, token=token, index=index)
        if self._too_old(record, self.clock()):
            u.fail("record_age", RecordAgeError(f"message is older than {self.max_age} s"), attempts=0)
            return u
        try:
            children = self._expand(record)
        except Exception as e:
            u.fail_with(contained(e, "decode"), attempts=1)
            return u
        u.records = children
        u.filtered = not children
        try:
            for child in children:
                u.ops.extend(self.rows(child))
        except Exception as e:
            u.records = []
            u.fail_with(contained(e, "mapping"), attempts=1)
        return u
