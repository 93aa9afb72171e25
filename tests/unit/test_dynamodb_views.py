"""Each StreamViewType either works with the mapping asked of it or is a clear
start-up error naming the stream and the field."""

from __future__ import annotations

from typing import Any

import pytest

from poller.config import StreamConfig, parse_stream
from poller.sources.dynamodb_views import (
    ViewTypeMismatch,
    check_view_type,
    events_passed,
    root_paths,
    view_type_problems,
)

KEYS = {"id"}
ARN = "arn:aws:dynamodb:us-east-1:1:table/users/stream/2024"


def cfg(
    columns: dict[str, str] | None,
    *,
    key: list[str] | None = None,
    filters: list[dict[str, Any]] | None = None,
    **sink: Any,
) -> StreamConfig:
    s: dict[str, Any] = {"type": "postgres", "dsn": "postgresql://x/y", "table": "users", **sink}
    if columns is not None:
        s["columns"] = columns
        s["key"] = key or ["id"]
    return parse_stream(
        {
            "name": "users",
            "source": {"type": "dynamodb", "table": "users"},
            "filters": filters or [],
            "sink": s,
        },
        "users.yaml",
    )


SYNC = {"id": "keys.id", "name": "data.name", "email": "data.email"}


@pytest.mark.parametrize("view", ["NEW_IMAGE", "NEW_AND_OLD_IMAGES"])
def test_a_table_sync_works_on_streams_with_the_new_image(view: str) -> None:
    assert view_type_problems(cfg(SYNC), view, KEYS) == []
    assert view_type_problems(cfg(SYNC, on_delete="ignore"), view, KEYS) == []


def test_keys_only_supports_key_columns_and_metadata() -> None:
    c = cfg({"id": "data.id", "k": "keys.id", "kind": "event_name", "seq": "sequence_number"})
    assert view_type_problems(c, "KEYS_ONLY", KEYS) == []


def test_keys_only_rejects_columns_reading_images() -> None:
    problems = view_type_problems(cfg({"id": "keys.id", "name": "new.name"}), "KEYS_ONLY", KEYS)
    assert len(problems) == 1
    assert problems[0].startswith("sink.columns.name: reads `new.name`, but KEYS_ONLY records carry no new")
    problems = view_type_problems(cfg(SYNC), "KEYS_ONLY", KEYS)
    assert [p.split(":")[0] for p in problems] == ["sink.columns.name", "sink.columns.email"]
    assert "INSERT/MODIFY records carry only the keys" in problems[0]


def test_keys_only_rejects_a_whole_document_column() -> None:
    (problem,) = view_type_problems(cfg({"id": "keys.id", "doc": "data"}), "KEYS_ONLY", KEYS)
    assert problem.startswith("sink.columns.doc: reads `data`")


def test_old_image_cannot_feed_upserts() -> None:
    (problem,) = view_type_problems(cfg({"id": "keys.id", "name": "data.name"}), "OLD_IMAGE", KEYS)
    assert "INSERT/MODIFY records carry only the keys" in problem
    assert "NEW_IMAGE or NEW_AND_OLD_IMAGES" in problem


def test_old_columns_need_the_old_image() -> None:
    c = cfg({"id": "keys.id", "before": "old.name"})
    (problem,) = view_type_problems(c, "NEW_IMAGE", KEYS)
    assert problem.startswith("sink.columns.before: reads `old.name`, but NEW_IMAGE records carry no old")
    assert view_type_problems(c, "NEW_AND_OLD_IMAGES", KEYS) == []


def test_soft_delete_needs_the_old_image() -> None:
    c = cfg(SYNC, on_delete="soft_delete", soft_delete_column="deleted")
    problems = view_type_problems(c, "NEW_IMAGE", KEYS)
    assert [p.split(":")[0] for p in problems] == ["sink.columns.name", "sink.columns.email"]
    assert "REMOVE records carry only the keys" in problems[0]
    assert "OLD_IMAGE or NEW_AND_OLD_IMAGES, or on_delete `delete` / `ignore`" in problems[0]
    assert view_type_problems(c, "NEW_AND_OLD_IMAGES", KEYS) == []
    # Key-only columns survive a soft delete on any view type.
    only_keys = cfg({"id": "keys.id"}, on_delete="soft_delete", soft_delete_column="deleted")
    assert view_type_problems(only_keys, "KEYS_ONLY", KEYS) == []


def test_a_filter_that_drops_removes_lifts_the_soft_delete_requirement() -> None:
    c = cfg(
        SYNC,
        on_delete="soft_delete",
        soft_delete_column="deleted",
        filters=[{"eventName": ["INSERT", "MODIFY"]}],
    )
    assert view_type_problems(c, "NEW_IMAGE", KEYS) == []


def test_a_key_column_must_be_readable_on_every_event() -> None:
    (problem,) = view_type_problems(cfg({"id": "new.id", "name": "data.name"}), "NEW_IMAGE", KEYS)
    assert problem.startswith("sink.columns.id: reads `new.id` for a key column, but REMOVE records")
    assert view_type_problems(cfg({"id": "new.id"}, on_delete="ignore"), "NEW_IMAGE", KEYS) == []
    (problem,) = view_type_problems(cfg({"id": "old.id"}), "NEW_AND_OLD_IMAGES", KEYS)
    assert "INSERT records have no old image" in problem


def test_expressions_are_walked_not_just_dotted_paths() -> None:
    c = cfg({"id": "keys.id", "tags": "join(',', new.tags || `[]`)", "n": "length(old.items[*].x)"})
    problems = view_type_problems(c, "KEYS_ONLY", KEYS)
    assert [p.split(":")[0] for p in problems] == ["sink.columns.tags", "sink.columns.n"]


def test_unknown_key_schema_reports_only_certain_problems() -> None:
    assert view_type_problems(cfg(SYNC), "KEYS_ONLY", None) == []
    assert len(view_type_problems(cfg({"id": "keys.id", "x": "new.x"}), "KEYS_ONLY", None)) == 1


def test_append_mode_stores_whatever_the_stream_carries() -> None:
    for view in ("KEYS_ONLY", "NEW_IMAGE", "OLD_IMAGE", "NEW_AND_OLD_IMAGES"):
        assert view_type_problems(cfg(None), view, KEYS) == []


def test_filters_on_missing_images_are_rejected() -> None:
    c = cfg(SYNC, filters=[{"eventName": ["INSERT"]}, {"dynamodb": {"OldImage": {"id": {"N": ["1"]}}}}])
    (problem,) = view_type_problems(c, "NEW_IMAGE", KEYS)
    assert problem.startswith("filters.1: matches on dynamodb.OldImage, which NEW_IMAGE records never carry")
    assert view_type_problems(c, "NEW_AND_OLD_IMAGES", KEYS) == []


def test_the_error_names_the_stream_its_arn_and_view_type() -> None:
    with pytest.raises(ViewTypeMismatch) as e:
        check_view_type(cfg({"id": "keys.id", "name": "new.name"}), ARN, "KEYS_ONLY", KEYS)
    assert str(e.value).startswith(f"stream 'users' ({ARN}, StreamViewType KEYS_ONLY): sink.columns.name:")
    check_view_type(cfg(SYNC), ARN, "NEW_IMAGE", KEYS)  # fits: no error


def test_events_passed_by_filters() -> None:
    assert events_passed([]) == {"INSERT", "MODIFY", "REMOVE"}
    assert events_passed([{"eventName": ["INSERT"]}, {"eventName": ["MODIFY"]}]) == {"INSERT", "MODIFY"}
    assert events_passed([{"eventName": [{"anything-but": ["REMOVE"]}]}]) == {"INSERT", "MODIFY", "REMOVE"}
    assert events_passed([{"eventName": ["INSERT"]}, {"dynamodb": {}}]) == {"INSERT", "MODIFY", "REMOVE"}


@pytest.mark.parametrize(
    ("expr", "paths"),
    [
        ("new.name", {("new", "name")}),
        ("data", {("data", None)}),
        ("data.a.b", {("data", "a")}),
        ("new.tags[0]", {("new", "tags")}),
        ("new.tags[*].x", {("new", "tags")}),
        ("data.items[?x > `1`].y", {("data", "items")}),
        ("join(',', new.ss) || data", {("new", "ss"), ("data", None)}),
        ("{a: new.x, b: old.y}", {("new", "x"), ("old", "y")}),
        ("new.x | y", {("new", "x")}),
        ("sort_by(new.l, &x)", {("new", "l")}),
        ("event_name == 'REMOVE'", {("event_name", None)}),
        ("`1`", set()),
    ],
)
def test_root_paths(expr: str, paths: set[tuple[str, str | None]]) -> None:
    assert root_paths(expr) == paths
