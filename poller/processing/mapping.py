"""Records → row operations, through the `columns` JMESPath expressions.

A plain dotted path (`data.order_id`) is the common case and is read with
dict lookups: jmespath's interpreter costs several µs per field, which is most
of a record's budget on the hot path.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jmespath

from poller.records import MappingError, Record
from poller.rows import APPEND_COLUMNS as APPEND_COLUMNS
from poller.rows import APPEND_KEY as APPEND_KEY
from poller.rows import RowOp as RowOp
from poller.rows import TableShape
from poller.rows import last_op_per_key as last_op_per_key

_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")

Getter = Callable[[dict[str, Any]], Any]


def compile_path(expr: str) -> Getter:
    if _DOTTED.match(expr):
        parts = expr.split(".")
        if len(parts) == 1:
            name = parts[0]
            return lambda view: view.get(name)
        if len(parts) == 2:
            a, b = parts

            def two(view: dict[str, Any]) -> Any:
                v = view.get(a)
                return v.get(b) if isinstance(v, dict) else None

            return two

        def many(view: dict[str, Any]) -> Any:
            v: Any = view
            for p in parts:
                if not isinstance(v, dict):
                    return None
                v = v.get(p)
            return v

        return many
    search: Getter = jmespath.compile(expr).search
    return search


# The fields of `Record.normalized()` that are read straight from the record.
_RECORD_FIELDS = frozenset(
    {
        "data",
        "sequence_number",
        "sub_sequence",
        "shard_id",
        "arrival_time",
        "source",
        "stream",
        "partition_key",
    }
)
_EMPTY: dict[str, Any] = {}


def compile_values(exprs: list[str | None]) -> Callable[[Record], list[Any]]:
    """One function computing every column of a record, equal to evaluating each
    expression (`compile_path`) over `record.normalized()`, without building that view.

    Plain dotted paths become straight-line dict lookups: the root is read from
    `record.meta` when present there (it overrides the record's own fields in
    the view, as in `normalized()`), else from the record, and each root is
    read once however many columns share it. Only other JMESPath expressions
    need the view, which is then built once per record. The function is
    generated from source (as `dataclasses` does) because the per-column call
    overhead of closures was most of the mapping cost.
    """
    env: dict[str, Any] = {"_EMPTY": _EMPTY, "dict": dict}
    body: list[str] = ["    meta = record.meta"]
    roots: dict[str, str] = {}  # root name -> local holding it as a dict (or _EMPTY)
    outs: list[str] = []
    view_needed = False
    for i, expr in enumerate(exprs):
        if expr is None:
            outs.append("None")
            continue
        if not _DOTTED.match(expr):
            view_needed = True
            env[f"_g{i}"] = jmespath.compile(expr).search
            outs.append(f"_g{i}(view)")
            continue
        root, *rest = expr.split(".")
        raw = f"r{len(roots)}"
        if root not in roots:
            read = f"record.{root}" if root in _RECORD_FIELDS else "None"
            body.append(f"    {raw} = meta[{root!r}] if {root!r} in meta else {read}")
            body.append(f"    d{raw} = {raw} if isinstance({raw}, dict) else _EMPTY")
            roots[root] = raw
        raw = roots[root]
        if not rest:
            outs.append(raw)
            continue
        cur = f"d{raw}"
        for depth, part in enumerate(rest):
            name = f"v{i}_{depth}"
            if depth == 0:
                body.append(f"    {name} = {cur}.get({part!r})")
            else:
                body.append(f"    {name} = {cur}.get({part!r}) if isinstance({cur}, dict) else None")
            cur = name
        outs.append(cur)
    if view_needed:
        body.insert(0, "    view = record.normalized()")
    body.append(f"    return [{', '.join(outs)}]")
    source = "def values(record):\n" + "\n".join(body) + "\n"
    exec(compile(source, "<poller.mapping.values>", "exec"), env)
    fn: Callable[[Record], list[Any]] = env["values"]
    return fn


class Mapper:
    """Maps a decoded record to the row operations of one target table."""

    def __init__(
        self,
        columns: dict[str, str] | None,
        key: list[str],
        on_delete: str = "delete",
        soft_delete_column: str | None = None,
    ):
        self.soft_delete_column = soft_delete_column if on_delete == "soft_delete" else None
        self.on_delete = on_delete
        shape = TableShape.of(columns, key, on_delete, soft_delete_column)
        self.append = shape.append
        self.columns = shape.columns
        self.key = shape.key
        self.key_index = shape.key_index
        cols = APPEND_COLUMNS if columns is None else columns
        self._values = compile_values([cols.get(c) for c in self.columns])
        self._soft_idx = self.columns.index(self.soft_delete_column) if self.soft_delete_column else None

    def ops(self, record: Record) -> list[RowOp]:
        removed = record.meta.get("event_name") == "REMOVE"
        if removed and self.on_delete == "ignore" and not self.append:
            return []
        try:
            values = self._values(record)
        except Exception as e:  # a JMESPath function applied to the wrong type
            raise MappingError(f"mapping failed: {e}") from e
        key = tuple([values[i] for i in self.key_index])
        if None in key:
            missing = [self.key[n] for n, k in enumerate(key) if k is None]
            raise MappingError(f"key column(s) {missing} evaluated to null")
        if self._soft_idx is not None:
            values[self._soft_idx] = removed
        elif removed and not self.append:
            return [RowOp(key, None)]
        return [RowOp(key, tuple(values))]
