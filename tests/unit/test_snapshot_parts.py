"""The snapshot's pure parts: its rows and what they say, the read budget,
a scanned item as a record, and the `snapshot` settings."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from poller.config import ConfigError, parse_stream
from poller.events import lambda_record
from poller.records import Checkpoint
from poller.sources.dynamodb_records import _DESERIALIZER, deserialize_image, plain_value, snapshot_record
from poller.sources.snapshot import (
    SNAPSHOT_ID,
    ReadBudget,
    SegmentProgress,
    SnapshotState,
    decode_key,
    encode_key,
    is_snapshot_row,
    progress_of,
    segment_id,
    switch_over_gap,
)

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)

# -- rows ------------------------------------------------------------------------------------


def test_the_snapshot_row_says_when_it_began_how_many_segments_and_whether_it_is_done() -> None:
    state = SnapshotState(NOW, 4)
    row = state.row("users")
    assert (row.stream, row.shard_id, row.state) == ("users", SNAPSHOT_ID, "RUNNING")
    assert SnapshotState.parse(row) == state
    done = SnapshotState(NOW, 4, NOW + timedelta(hours=1), resync=True)
    assert SnapshotState.parse(done.row("users")) == done


@pytest.mark.parametrize(
    "text", [None, "", "{", "[]", '{"began": "x", "segments": 4}', '{"began": "2024-05-01"}']
)
def test_an_unreadable_snapshot_row_means_no_snapshot(text: str | None) -> None:
    assert SnapshotState.parse(Checkpoint("users", SNAPSHOT_ID, text)) is None


@pytest.mark.parametrize(
    "key",
    [
        {"id": {"N": "42"}},
        {"pk": {"S": "tenant#7"}, "sk": {"S": "order/2024-05-01"}},
        {"blob": {"B": b"\x00\xffkey"}, "n": {"N": "-1.5E+3"}},
    ],
)
def test_a_last_evaluated_key_survives_its_row(key: dict[str, Any]) -> None:
    assert decode_key(encode_key(key)) == key
    progress = SegmentProgress(1, 4).after_page(100, key)
    row = progress.row("users")
    assert row is not None and row.shard_id == "#snapshot/segment-1-of-4" and row.sub_sequence == 100
    assert SegmentProgress.parse(row, 1, 4) == progress


def test_a_segment_ends_with_its_last_page_and_counts_its_items() -> None:
    p = SegmentProgress(0, 2).after_page(100, {"id": {"N": "1"}}).after_page(30, None)
    assert p.done and p.items == 130 and p.start_key is None
    row = p.row("users")
    assert row is not None and row.sequence_number == "done"
    assert SegmentProgress.parse(row, 0, 2) == p


def test_a_key_too_long_to_store_leaves_the_row_where_it_was() -> None:
    """MySQL keeps 1,024 characters: the segment reads a page again after a restart
    rather than skip one."""
    assert SegmentProgress(0, 1).after_page(10, {"id": {"S": "x" * 2000}}).row("users") is None


def test_an_unreadable_segment_row_restarts_that_segment() -> None:
    row = Checkpoint("users", segment_id(2, 4), '{"id": {"X": "1"}}', 500)
    assert SegmentProgress.parse(row, 2, 4) == SegmentProgress(2, 4)


def test_progress_of_every_segment_ignores_rows_of_another_count() -> None:
    rows = {
        segment_id(0, 3): Checkpoint("users", segment_id(0, 3), "done", 10),
        segment_id(1, 3): Checkpoint("users", segment_id(1, 3), encode_key({"id": {"N": "5"}}), 7),
        segment_id(1, 4): Checkpoint("users", segment_id(1, 4), "done", 99),
        "shardId-1": Checkpoint("users", "shardId-1", "123"),
    }
    assert progress_of(rows, 3) == [
        SegmentProgress(0, 3, None, 10, True),
        SegmentProgress(1, 3, {"id": {"N": "5"}}, 7),
        SegmentProgress(2, 3),
    ]
    assert [is_snapshot_row(k) for k in rows] == [True, True, True, False]
    assert is_snapshot_row(SNAPSHOT_ID) and not is_snapshot_row("#start")


def test_a_snapshot_longer_than_the_retention_leaves_a_gap_at_switch_over() -> None:
    day = 24 * 3600.0
    assert switch_over_gap(NOW, NOW + timedelta(hours=23), day) is None
    gap = switch_over_gap(NOW, NOW + timedelta(hours=26), day)
    assert gap == (NOW, NOW + timedelta(hours=2))


# -- the read budget ----------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_the_budget_spaces_calls_by_what_pages_cost(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pages of 5 units at 10 units/s: a call every half second, whatever the
    number of segments waiting, and no credit saved up while idle."""
    clock = Clock()
    monkeypatch.setattr("poller.sources.snapshot.budget.sleep_unless", lambda stop, s: _advance(clock, s))
    budget = ReadBudget(10.0, clock)
    starts = []
    for _ in range(20):
        reserved = await budget.reserve(_Never())
        starts.append(clock.now)
        budget.spent(reserved or 0.0, 5.0)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert all(abs(g - 0.5) < 1e-9 for g in gaps), gaps
    assert budget.consumed == 100
    clock.now += 60  # idle for a minute: no burst afterwards
    first = clock.now
    for _ in range(3):
        budget.spent(await budget.reserve(_Never()) or 0.0, 5.0)
    assert clock.now - first == pytest.approx(1.0)


async def _advance(clock: Clock, seconds: float) -> bool:
    clock.now += seconds
    return False


class _Never:
    def is_set(self) -> bool:
        return False

    async def wait(self) -> bool:
        raise AssertionError("never set")


async def test_without_a_budget_nothing_waits_and_units_are_still_counted() -> None:
    budget = ReadBudget(None)
    assert await budget.reserve(_Never()) == 0.0
    budget.spent(0.0, 12.5)
    budget.release(0.0)
    assert budget.consumed == 12.5


async def test_a_failed_call_gives_its_reservation_back() -> None:
    clock = Clock()
    budget = ReadBudget(2.0, clock)
    reserved = await budget.reserve(_Never())
    assert reserved == 1.0 and budget.paid_until == 0.5
    budget.release(reserved)
    assert budget.paid_until == 0.0


# -- an item as a record ------------------------------------------------------------------------


def test_a_scanned_item_is_an_insert_whose_new_image_is_the_item() -> None:
    item = {"pk": {"S": "a"}, "sk": {"N": "2"}, "tags": {"SS": ["y", "x"]}, "b": {"B": b"\x01"}}
    r = snapshot_record(
        item,
        ["pk", "sk"],
        stream="users",
        shard_id=segment_id(0, 4),
        source_arn="arn:aws:dynamodb:eu-west-1:1:table/users/stream/x",
        region="eu-west-1",
        read_at=1714564800.0,
    )
    view = r.normalized()
    assert view["event_name"] == "INSERT" and view["snapshot"] is True
    assert view["keys"] == {"pk": "a", "sk": 2}
    assert view["new"] == view["data"] == {"pk": "a", "sk": 2, "tags": ["x", "y"], "b": b"\x01"}
    assert view["old"] is None
    assert r.sequence_number == r.partition_key == '{"pk":"a","sk":2}'
    assert r.arrival_time == 1714564800.0
    event = json.loads(r.raw_data)  # built when first read: the Lambda event form of an INSERT
    assert event == lambda_record(r)
    assert event["eventName"] == "INSERT" and event["dynamodb"]["NewImage"]["b"] == {"B": "AQ=="}
    assert event["dynamodb"]["Keys"] == {"pk": {"S": "a"}, "sk": {"N": "2"}}


# -- settings -----------------------------------------------------------------------------------


def cfg(source: dict[str, Any], **over: Any) -> dict[str, Any]:
    return {
        "name": "users",
        "source": {"type": "dynamodb", "table": "users", **source},
        "sink": {"type": "postgres", "dsn": "postgresql://u@h/db", "table": "users"},
        **over,
    }


def test_snapshot_settings_and_their_defaults() -> None:
    src = parse_stream(cfg({}), "users.yaml").source
    assert src.type == "dynamodb" and src.snapshot.mode == "none"
    assert src.snapshot.segments == 4 and src.snapshot.max_read_units_per_second is None
    assert src.retention_gap_policy == "continue"
    s = parse_stream(
        cfg({"snapshot": {"mode": "initial", "segments": 8, "max_read_units_per_second": 200}}), "u.yaml"
    ).source
    assert s.type == "dynamodb" and (s.snapshot.mode, s.snapshot.segments) == ("initial", 8)
    assert parse_stream(cfg({"on_trimmed": "stop"}), "u.yaml").source.retention_gap_policy == "stop"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("source", "over", "problem"),
    [
        ({"snapshot": {"mode": "full"}}, {}, "source.snapshot.mode: expected 'none', 'initial' or 'only'"),
        ({"snapshot": {"segments": 0}}, {}, "source.snapshot.segments"),
        ({"snapshot": {"max_read_units_per_second": 0}}, {}, "source.snapshot.max_read_units_per_second"),
        ({"snapshot": {"mode": "initial", "segmentz": 2}}, {}, "source.snapshot.segmentz: unknown field"),
        (
            {"on_trimmed": "stop", "on_retention_gap": "continue"},
            {},
            "on_trimmed and on_retention_gap disagree",
        ),
        (
            {"snapshot": {"mode": "initial"}},
            {"coordination": {"lease_seconds": 10}},
            "a snapshot is taken by one process",
        ),
    ],
)
def test_bad_snapshot_settings_are_refused_by_name(
    source: dict[str, Any], over: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ConfigError) as e:
        parse_stream(cfg(source, **over), "users.yaml")
    assert problem in str(e.value)


def test_kinesis_has_no_snapshot_policy() -> None:
    kinesis = {
        "name": "orders",
        "source": {"type": "kinesis", "stream": "orders", "on_retention_gap": "snapshot"},
        "sink": {"type": "postgres", "dsn": "postgresql://u@h/db", "table": "orders"},
    }
    with pytest.raises(ConfigError, match="for DynamoDB sources only"):
        parse_stream(kinesis, "orders.yaml")
    kinesis["source"]["on_retention_gap"] = "stop"  # type: ignore[index]
    assert parse_stream(kinesis, "orders.yaml").source.retention_gap_policy == "stop"  # type: ignore[union-attr]


def test_the_iam_policy_lets_a_snapshot_scan_the_table() -> None:
    from poller.operator.iam import stream_statements

    plain = stream_statements(parse_stream(cfg({"region": "eu-west-1"}), "u.yaml"))
    assert not any("dynamodb:Scan" in s["Action"] for s in plain)
    snap = stream_statements(
        parse_stream(cfg({"region": "eu-west-1", "snapshot": {"mode": "initial"}}), "u.yaml")
    )
    (scan,) = [s for s in snap if "dynamodb:Scan" in s["Action"]]
    assert scan["Action"] == ["dynamodb:DescribeTable", "dynamodb:Scan"]
    assert scan["Resource"] == "arn:aws:dynamodb:eu-west-1:*:table/users"


# -- decoding items ------------------------------------------------------------------------------

_scalar = st.one_of(
    st.builds(lambda s: {"S": s}, st.text(max_size=5)),
    st.builds(
        lambda n: {"N": str(n)},
        st.integers(-(10**30), 10**30) | st.decimals(allow_nan=False, allow_infinity=False, places=3),
    ),
    st.builds(lambda b: {"B": b}, st.binary(max_size=4)),
    st.builds(lambda b: {"BOOL": b}, st.booleans()),
    st.just({"NULL": True}),
    st.builds(lambda v: {"SS": sorted(set(v))}, st.lists(st.text(max_size=3), min_size=1, max_size=3)),
    st.builds(
        lambda v: {"NS": [str(x) for x in set(v)]}, st.lists(st.integers(-99, 99), min_size=1, max_size=3)
    ),
    st.builds(lambda v: {"BS": list(set(v))}, st.lists(st.binary(max_size=3), min_size=1, max_size=3)),
)
_typed = st.recursive(
    _scalar,
    lambda inner: st.one_of(
        st.builds(lambda v: {"L": v}, st.lists(inner, max_size=3)),
        st.builds(lambda v: {"M": v}, st.dictionaries(st.text(max_size=3), inner, max_size=3)),
    ),
    max_leaves=10,
)


@given(st.dictionaries(st.text(max_size=4), _typed, max_size=4))
def test_the_fast_decoder_answers_as_the_deserializer_it_replaces(image: dict[str, Any]) -> None:
    reference = _DESERIALIZER.deserialize
    assert deserialize_image(image) == {k: reference(v) for k, v in image.items()}


def test_odd_values_still_fail_as_boto3_says() -> None:
    with pytest.raises(TypeError, match="nonempty dictionary"):
        plain_value({})
    with pytest.raises(TypeError, match="not supported"):
        plain_value({"X": 1})
