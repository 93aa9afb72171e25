"""Rows as the map stage hands them to a sink: the value types both sides share.

A `RowOp` is the final state wanted for one key of the target table (values
to upsert, or None to delete). A `RowShape` is what a sink needs to know of
the mapping: the column order of `values`, the key columns and where they
stand, and whether the table is an append log. The map stage
(`processing/mapping.py`) produces both; sinks only read them, so neither
side imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

# Append mode (no `columns`): the whole record, unique on its position.
APPEND_COLUMNS: dict[str, str] = {
    "stream": "stream",
    "shard_id": "shard_id",
    "sequence_number": "sequence_number",
    "sub_sequence": "sub_sequence",
    "partition_key": "partition_key",
    "arrival_time": "arrival_time",
    "data": "data",
}
APPEND_KEY = ["shard_id", "sequence_number", "sub_sequence"]


@dataclass(slots=True)
class RowOp:
    """The final state wanted for one key: `values` to upsert, or None to delete."""

    key: tuple[Any, ...]
    values: tuple[Any, ...] | None


class RowShape(Protocol):
    """What a sink knows of the mapping (a `Mapper` is one)."""

    @property
    def columns(self) -> list[str]: ...

    @property
    def key(self) -> list[str]: ...

    @property
    def key_index(self) -> list[int]: ...

    @property
    def append(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class TableShape:
    """A `RowShape` worked out from the sink's config alone."""

    columns: list[str]
    key: list[str]
    key_index: list[int]
    append: bool

    @classmethod
    def of(
        cls,
        columns: dict[str, str] | None,
        key: list[str],
        on_delete: str = "delete",
        soft_delete_column: str | None = None,
    ) -> TableShape:
        """The shape `Mapper(columns, key, on_delete, soft_delete_column)` produces."""
        if on_delete != "soft_delete":
            soft_delete_column = None
        names = list(APPEND_COLUMNS if columns is None else columns)
        if soft_delete_column and soft_delete_column not in names:
            names.append(soft_delete_column)
        keys = list(APPEND_KEY if columns is None else key)
        return cls(names, keys, [names.index(k) for k in keys], columns is None)


def last_op_per_key(ops: list[RowOp]) -> list[RowOp]:
    """Keep each key's final operation, in first-seen order: a multi-row upsert
    may not touch one row twice, and only the final state matters."""
    if len(ops) < 2:
        return ops
    latest: dict[tuple[Any, ...], RowOp] = {}
    for op in ops:
        latest[op.key] = op
    if len(latest) == len(ops):
        return ops
    return list(latest.values())
