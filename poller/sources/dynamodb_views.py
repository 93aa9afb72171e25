"""Does a stream's mapping fit the table's StreamViewType?

A DynamoDB stream carries only what its view type says: KEYS_ONLY records
have no images, NEW_IMAGE ones no old image, OLD_IMAGE ones no new image. A
mapping that reads what never comes would not fail: it would quietly write
nulls (or a filter would quietly drop everything). The view type is only
known once DescribeStream has answered, so this runs at start-up and turns
such a mapping into a `ViewTypeMismatch` naming the stream and the field.

Only what is certain to go wrong is reported: `columns` expressions are
walked for the fields they read from the normalized record (`new.x`,
`old.x`, `data.x`, `keys.x`), and the events that matter are narrowed by
`eventName` filters and by `on_delete`.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

import jmespath

from poller.config import ConfigError, DatabaseSinkConfig, StreamConfig

__all__ = ["VIEW_TYPES", "ViewTypeMismatch", "check_view_type", "view_type_problems"]

EVENTS = ("INSERT", "MODIFY", "REMOVE")

#: The images each view type puts in a record ("new", "old").
VIEW_TYPES: dict[str, frozenset[str]] = {
    "KEYS_ONLY": frozenset(),
    "NEW_IMAGE": frozenset({"new"}),
    "OLD_IMAGE": frozenset({"old"}),
    "NEW_AND_OLD_IMAGES": frozenset({"new", "old"}),
}

_FIX = {
    "new": "a stream view type of NEW_IMAGE or NEW_AND_OLD_IMAGES",
    "old": "a stream view type of OLD_IMAGE or NEW_AND_OLD_IMAGES",
}


class ViewTypeMismatch(ConfigError):
    """The configured mapping cannot work on this stream; str() has one line per problem.

    A `ConfigError`: the fix is in the stream file (or the table's stream
    settings), so the stream is stopped rather than restarted in a loop.
    """


def check_view_type(
    cfg: StreamConfig, stream_arn: str, view_type: str, key_attributes: Collection[str] | None
) -> None:
    """Raise `ViewTypeMismatch` if the mapping or the filters need what `view_type` leaves out."""
    problems = view_type_problems(cfg, view_type, key_attributes)
    if problems:
        raise ViewTypeMismatch(
            [f"stream {cfg.name!r} ({stream_arn}, StreamViewType {view_type}): {p}" for p in problems]
        )


def view_type_problems(
    cfg: StreamConfig, view_type: str, key_attributes: Collection[str] | None
) -> list[str]:
    """One `field: reason` line per problem (empty: the mapping fits)."""
    images = VIEW_TYPES.get(view_type)
    if images is None:
        return [f"source: unknown StreamViewType {view_type!r}"]
    events = events_passed(cfg.filters)
    problems = _filter_problems(cfg.filters, images, view_type)
    sink = cfg.sink
    if isinstance(sink, DatabaseSinkConfig) and sink.columns is not None:
        problems += _column_problems(sink, images, view_type, events, key_attributes)
    return problems


def events_passed(filters: list[dict[str, Any]]) -> set[str]:
    """The event names the filters can let through.

    Only patterns that pin `eventName` to plain strings narrow the set; any
    other pattern (content-based, `anything-but`, `$or`) may pass any event.
    """
    if not filters:
        return set(EVENTS)
    passed: set[str] = set()
    for pattern in filters:
        rule = pattern.get("eventName")
        if not isinstance(rule, list) or not all(isinstance(v, str) for v in rule):
            return set(EVENTS)
        passed.update(v for v in rule if v in EVENTS)
    return passed


def _filter_problems(filters: list[dict[str, Any]], images: frozenset[str], view_type: str) -> list[str]:
    problems = []
    for index, pattern in enumerate(filters):
        body = pattern.get("dynamodb")
        if not isinstance(body, dict):
            continue
        for field, image in (("NewImage", "new"), ("OldImage", "old")):
            if field in body and image not in images:
                problems.append(
                    f"filters.{index}: matches on dynamodb.{field}, which {view_type} records never "
                    f"carry, so the pattern cannot work as meant; it needs {_FIX[image]}"
                )
    return problems


def _column_problems(
    sink: DatabaseSinkConfig,
    images: frozenset[str],
    view_type: str,
    events: set[str],
    key_attributes: Collection[str] | None,
) -> list[str]:
    assert sink.columns is not None
    removes = "REMOVE" in events
    # Events whose record values are written to the row: upserts, and a REMOVE
    # only when soft delete rewrites the row from it.
    written = {e for e in events if e != "REMOVE"}
    if removes and sink.on_delete == "soft_delete":
        written.add("REMOVE")
    # Events whose record must yield the key: every one, except a REMOVE that is ignored.
    keyed = set(events) if sink.on_delete != "ignore" else written
    problems = []
    for column, expr in sink.columns.items():
        is_key = column in sink.key
        needs = keyed if is_key else written
        for root, attr in sorted(root_paths(expr), key=lambda p: (p[0], p[1] or "")):
            shown = f"{root}.{attr}" if attr else root
            where = f"sink.columns.{column}: reads `{shown}`"
            if root in ("new", "old"):
                if root not in images:
                    problems.append(
                        f"{where}, but {view_type} records carry no {root} image; "
                        f"it needs {_FIX[root]}, or read `keys.*` / `data.*`"
                    )
                elif is_key:
                    lacking = sorted(e for e in needs if e == ("REMOVE" if root == "new" else "INSERT"))
                    if lacking:
                        problems.append(
                            f"{where} for a key column, but {lacking[0]} records have no {root} image; "
                            f"read the key from `keys.*` or `data.*`"
                        )
            elif root == "data":
                if attr is not None and key_attributes is not None and attr in key_attributes:
                    continue  # `data` always holds at least the keys
                if key_attributes is None and attr is not None:
                    continue  # cannot tell a key attribute from another: say nothing
                lacking = sorted(
                    (e for e in needs if ("old" if e == "REMOVE" else "new") not in images),
                    key=EVENTS.index,
                )
                if lacking:
                    problems.append(
                        f"{where}, but on a {view_type} stream {'/'.join(lacking)} records carry "
                        f"only the keys, so the column would be written as null; "
                        f"it needs {_needed_view(lacking)}"
                        + (
                            ", or on_delete `delete` / `ignore`"
                            if lacking == ["REMOVE"] and sink.on_delete == "soft_delete"
                            else ""
                        )
                    )
    return problems


def _needed_view(events: list[str]) -> str:
    wanted = {"old" if e == "REMOVE" else "new" for e in events}
    if wanted == {"new", "old"}:
        return "a stream view type of NEW_AND_OLD_IMAGES"
    return _FIX[wanted.pop()]


# -- which fields a JMESPath expression reads from the root -----------------------------

Path = tuple[str, str | None]

_ROOTED = frozenset(
    {"index_expression", "projection", "value_projection", "filter_projection", "flatten", "pipe"}
)
_ALL_CHILDREN = frozenset(
    {
        "function_expression",
        "multi_select_list",
        "multi_select_dict",
        "key_val_pair",
        "or_expression",
        "and_expression",
        "not_expression",
        "comparator",
    }
)


def root_paths(expr: str) -> set[Path]:
    """(top-level field, its first sub-field or None) for every path read from the root.

    `new.tags[0]` → {("new", "tags")}; `join(',', new.ss) || data` →
    {("new", "ss"), ("data", None)}. Sub-expressions evaluated against
    something else (the right of a pipe, inside a projection or `&expr`) are
    not paths from the root and are left out.
    """
    return set(_paths(jmespath.compile(expr).parsed))


def _paths(node: dict[str, Any]) -> Iterable[Path]:
    kind = node["type"]
    children: list[dict[str, Any]] = node.get("children", [])
    if kind == "field":
        yield (str(node["value"]), None)
    elif kind == "subexpression":
        head = children[0]
        if head["type"] == "field":
            yield (str(head["value"]), _head_field(children[1]))
        else:
            yield from _paths(head)
    elif kind in _ROOTED:
        yield from _paths(children[0])
    elif kind in _ALL_CHILDREN:
        for child in children:
            yield from _paths(child)


def _head_field(node: dict[str, Any]) -> str | None:
    """The first field name a relative expression reads (`tags` in `tags[0].x`)."""
    if node["type"] == "field":
        return str(node["value"])
    if node["type"] in ("subexpression", "index_expression", "projection", "filter_projection"):
        return _head_field(node["children"][0])
    return None
