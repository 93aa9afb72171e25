"""Tumbling windows (Lambda's `TumblingWindowInSeconds`) on the handler sink,
below the sources: records with chosen arrival times, the real handler sink,
its SQLite checkpoint store and, where retries matter, the failure policy.

What a user moving a windowed Lambda consumer checks: the event carries
Lambda's fields, the state the function returned comes back, each window
gets one final invocation with the state it ended with, and after a crash or
a retry each record is in its window's state once.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from poller.config import HandlerSinkConfig, RetryConfig, parse_stream
from poller.coordination import Lease
from poller.coordination.sql_store import SqlLeaseStore
from poller.destinations import FileDest
from poller.esm_import import import_mapping
from poller.events import lambda_record, window_fields
from poller.processing.failures import Decision, FailurePolicy, Unit
from poller.records import (
    KINESIS,
    Checkpoint,
    PartialFailure,
    Record,
    RecordError,
    ShardState,
    TransientError,
)
from poller.sink_api import Fence, Tenure, Transaction
from poller.sinks.handler import HandlerSink
from poller.sinks.lambda_sink import MAX_PAYLOAD_BYTES, fitting
from poller.sinks.windows import (
    MAX_STATE_BYTES,
    InvocationFailed,
    WindowOptions,
    WindowStateError,
    read_state,
    state_bytes,
    window_start,
)
from tests.handlers import journal, window_sum

ROOT = str(Path(__file__).resolve().parents[2])
STREAM = "clicks"
SHARD = "shardId-000000000000"
ARN = "arn:aws:kinesis:us-east-1:123456789012:stream/clicks"
W = 10
T0 = 1_700_000_000  # a multiple of W: the start of a window


def rec(seq: int, at: float, value: int = 0, **payload: Any) -> Record:
    data = json.dumps({"value": value, **payload}).encode()
    return Record(
        source=KINESIS,
        stream=STREAM,
        shard_id=SHARD,
        sequence_number=str(seq),
        data=data,
        raw_data=data,
        partition_key="k",
        arrival_time=at,
        raw={
            "SequenceNumber": str(seq),
            "Data": data,
            "PartitionKey": "k",
            "ApproximateArrivalTimestamp": datetime.fromtimestamp(at, UTC),
        },
        event_source_arn=ARN,
        region="us-east-1",
    )


def tx(records: list[Record]) -> Transaction:
    last = records[-1]
    return Transaction(
        stream=STREAM,
        records=records,
        checkpoints=[Checkpoint(STREAM, SHARD, last.sequence_number, last.sub_sequence)],
    )


def options(
    grace: float = 60.0, attempts: int = 3, startup_quiet: float = 60.0, load_at_open: bool = True
) -> WindowOptions:
    return WindowOptions(W, grace, load_at_open, attempts, startup_quiet)


def make_sink(tmp_path: Path, handler: str = "lambda_handler", **kw: Any) -> HandlerSink:
    cfg = HandlerSinkConfig.model_validate(
        {
            "type": "handler",
            "handler": f"tests.handlers.window_sum:{handler}",
            "code_path": ROOT,
            "checkpoint_dsn": str(tmp_path / "cp.sqlite"),
        }
    )
    return HandlerSink(cfg, STREAM, windows=options(**kw))


def window_row(tmp_path: Path) -> tuple[Any, ...] | None:
    with sqlite3.connect(tmp_path / "cp.sqlite") as db:
        row = db.execute(
            "SELECT window_start, state, through_sequence, checkpoint_sequence FROM poller_windows"
        ).fetchone()
    return None if row is None else (row[0], None if row[1] is None else json.loads(row[1]), row[2], row[3])


async def until_final(log: Path) -> None:
    """Until the handler has written down a final invocation (the timer's), 10 s at most."""
    deadline = time.monotonic() + 10
    while not finals(log) and time.monotonic() < deadline:  # noqa: ASYNC110 - a file, not a task
        await asyncio.sleep(0.05)


def finals(log: Path) -> list[dict[str, Any]]:
    return [e for e in journal.read(log) if e["final"] and not e.get("raised")]


def delivered(log: Path) -> list[str]:
    return [s for e in journal.read(log) if not e.get("raised") for s in e["records"]]


def iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture
def log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "handler.jsonl"
    monkeypatch.setenv("HANDLER_LOG", str(path))
    monkeypatch.setattr(window_sum, "FINAL_FAILURES", 0)
    return path


# -- the pure parts ------------------------------------------------------------------------------


def test_windows_are_aligned_on_the_epoch() -> None:
    assert window_start(T0 + 9.999, W) == T0
    assert window_start(T0 + 10.0, W) == T0 + W
    assert window_start(1_607_497_475.0, 300) == 1_607_497_200  # 07:05:00 for the docs' record at 07:04:35
    assert iso(window_start(1_607_497_475.0, 120)) == "2020-12-09T07:04:00Z"  # the docs' example window


def test_the_window_fields_follow_records_in_lambdas_order() -> None:
    fields = window_fields(T0, T0 + W, {"1": 282}, SHARD, ARN, final=False, terminated_early=False)
    assert list(fields) == [
        "window",
        "state",
        "shardId",
        "eventSourceARN",
        "isFinalInvokeForWindow",
        "isWindowTerminatedEarly",
    ]
    assert fields["window"] == {"start": "2023-11-14T22:13:20Z", "end": "2023-11-14T22:13:30Z"}


@pytest.mark.parametrize(
    "answer", [None, {}, {"state": None}, {"state": [1, 2]}, {"state": "x"}, {"batchItemFailures": []}]
)
def test_an_answer_without_a_state_object_is_a_failed_invocation(answer: Any) -> None:
    with pytest.raises(WindowStateError, match="must return"):
        read_state(answer)


def test_the_state_comes_back_as_json_keeps_it() -> None:
    text = read_state({"state": {"n": Decimal("2"), "t": (1, 2), 3: "x", "é": "ü"}})
    assert json.loads(text) == {"n": 2, "t": [1, 2], "3": "x", "é": "ü"}
    assert text.isascii()
    # Escaped text is 6 bytes a character here, UTF-8 2: 2.4 MB of text is an 800 kB state.
    wide = {"x": "é" * 400_000}
    assert state_bytes(read_state({"state": wide})) == 800_008 < MAX_STATE_BYTES
    with pytest.raises(WindowStateError, match="not JSON"):
        read_state({"state": {"x": float("nan")}})
    with pytest.raises(WindowStateError, match="not JSON"):
        read_state({"state": {"x": object()}})


def test_a_window_state_takes_room_in_a_lambda_payload() -> None:
    records = [rec(i, T0, note="y" * 3000) for i in range(1, 4)]
    item = len(json.dumps(lambda_record(records[0]), separators=(",", ":")))

    def fields(state_chars: int) -> dict[str, Any]:
        state = {"pad": "x" * state_chars}
        return window_fields(T0, T0 + W, state, SHARD, ARN, final=False, terminated_early=False)

    assert fitting(records, {}) == 3
    assert fitting(records, fields(MAX_PAYLOAD_BYTES - 2 * item)) == 1  # room for one and a half
    assert fitting(records, fields(MAX_PAYLOAD_BYTES - item // 2)) == 0


# -- the handler sink with its store -------------------------------------------------------------


async def test_three_windows_in_one_batch(tmp_path: Path, log: Path) -> None:
    """Two records in each of three windows: the function sees each window's
    records with the state of the window so far, a final invocation closes a
    window when a record of the next one arrives, and the open window's state
    is stored with the checkpoint."""
    records = [rec(i + 1, T0 + 10 * (i // 2) + 1 + i % 2, value=i + 1) for i in range(6)]
    sink = make_sink(tmp_path)
    await sink.open()
    try:
        result = await sink.commit(tx(records))
    finally:
        await sink.close()
    assert result.rows == 6
    calls = journal.read(log)
    assert [(c["window"]["start"], c["final"], c["records"], c["state_in"]) for c in calls] == [
        (iso(T0), False, ["1", "2"], {}),
        (iso(T0), True, [], {"sum": 3, "count": 2}),
        (iso(T0 + 10), False, ["3", "4"], {}),
        (iso(T0 + 10), True, [], {"sum": 7, "count": 2}),
        (iso(T0 + 20), False, ["5", "6"], {}),
    ]
    for c in calls:
        assert c["keys"] == [
            "Records",
            "window",
            "state",
            "shardId",
            "eventSourceARN",
            "isFinalInvokeForWindow",
            "isWindowTerminatedEarly",
        ]
        assert (c["shard"], c["arn"], c["early"]) == (SHARD, ARN, False)
    assert calls[0]["window"] == {"start": iso(T0), "end": iso(T0 + W)}
    assert window_row(tmp_path) == (T0 + 20, {"sum": 11, "count": 2}, "6", "6")


async def test_a_record_arriving_early_joins_the_current_window(tmp_path: Path, log: Path) -> None:
    """Arrival times are approximate: one a little before the current window's
    start is not a reason to go back to a closed window."""
    sink = make_sink(tmp_path)
    await sink.open()
    try:
        await sink.commit(
            tx([rec(1, T0 + 1, 1), rec(2, T0 + 11, 2), rec(3, T0 + 9.9, 3), rec(4, T0 + 12, 4)])
        )
    finally:
        await sink.close()
    assert [c["records"] for c in journal.read(log)] == [["1"], [], ["2", "3", "4"]]
    assert window_row(tmp_path) == (T0 + 10, {"sum": 9, "count": 3}, "4", "4")


async def test_the_state_survives_a_restart_and_a_replay_counts_nothing_twice(
    tmp_path: Path, log: Path
) -> None:
    """The store went away after the function had seen records 3 and 4 (the
    process then died): the next process starts from the stored checkpoint
    with the state stored with it, so 3 and 4 are counted once."""
    first = make_sink(tmp_path)
    await first.open()
    await first.commit(tx([rec(1, T0 + 1, 1), rec(2, T0 + 2, 2)]))
    await first.store.close()  # the store is unreachable after the function returned
    with pytest.raises(TransientError):
        await first.commit(tx([rec(3, T0 + 3, 3), rec(4, T0 + 4, 4)]))
    await first.close()

    second = make_sink(tmp_path)
    await second.open()
    try:
        # Read again from the checkpoint (record 2), and on into the next window.
        await second.commit(tx([rec(3, T0 + 3, 3), rec(4, T0 + 4, 4)]))
        await second.commit(tx([rec(4, T0 + 4, 4), rec(5, T0 + 12, 5)]))  # 4 once more: already in the state
    finally:
        await second.close()
    calls = journal.read(log)
    assert [c["state_in"] for c in calls if c["records"] == ["3", "4"]] == [{"sum": 3, "count": 2}] * 2
    assert [(f["window"]["start"], f["total"]) for f in finals(log)] == [(iso(T0), 10)]
    assert delivered(log).count("4") == 2  # before the crash, and once after it
    assert window_row(tmp_path) == (T0 + 10, {"sum": 5, "count": 1}, "5", "5")


async def test_the_timer_closes_a_window_no_later_record_closes(tmp_path: Path, log: Path) -> None:
    past = int(time.time()) // W * W - 5 * W
    sink = make_sink(tmp_path, grace=0.2)
    await sink.open()
    try:
        await sink.commit(tx([rec(1, past + 1, 1), rec(2, past + 2, 2)]))
        await until_final(log)
        await asyncio.sleep(0.5)  # and no second one
        assert window_row(tmp_path) == (past, None, "2", "2")  # closed: the state is dropped
        # A record of the same window after its final opens it again with a fresh state.
        await sink.commit(tx([rec(3, past + 3, 3)]))
    finally:
        await sink.close()
    assert [(f["window"]["start"], f["total"]) for f in finals(log)] == [(iso(past), 3)]
    assert journal.read(log)[-1]["state_in"] == {}
    assert window_row(tmp_path) == (past, {"sum": 3, "count": 1}, "3", "3")


async def test_a_window_whose_lease_this_process_lost_gets_no_final_call_from_it(
    tmp_path: Path, log: Path
) -> None:
    """Its new holder makes the final call from the stored state; one from here
    (refused at commit, but user code ran) would be a second."""
    past = int(time.time()) // W * W - 5 * W
    sink = make_sink(tmp_path, grace=0.2)
    await sink.open()
    leases = SqlLeaseStore("sqlite", str(tmp_path / "cp.sqlite"))
    await leases.open()
    try:
        await leases.create(STREAM, SHARD, ())
        tenure = Tenure()
        taken = await leases.take(STREAM, Lease(SHARD), "me", tenure.token)
        assert taken is not None
        first = tx([rec(1, past + 1, 1)])
        first.fence = Fence(SHARD, "me", taken.counter, None, tenure)
        await sink.commit(first)
        tenure.end()  # the lease was lost
        await asyncio.sleep(1.0)  # several ticks past the window's grace
    finally:
        await leases.close()
        await sink.close()
    assert finals(log) == []
    assert window_row(tmp_path) == (past, {"sum": 1, "count": 1}, "1", "1")


async def test_a_replica_that_takes_a_quiet_shard_closes_the_window_its_last_holder_left(
    tmp_path: Path, log: Path
) -> None:
    """With leases no window is loaded at start (the shards are not this process's
    yet); the worker of a shard just taken hands its fence over (`shard_taken`),
    and the stored window is closed though no record comes."""
    past = int(time.time()) // W * W - 5 * W
    first = make_sink(tmp_path, load_at_open=False)
    await first.open()
    leases = SqlLeaseStore("sqlite", str(tmp_path / "cp.sqlite"))
    await leases.open()
    try:
        await leases.create(STREAM, SHARD, ())
        old_tenure, new_tenure = Tenure(), Tenure()
        old = await leases.take(STREAM, Lease(SHARD), "old", old_tenure.token)
        assert old is not None
        t = tx([rec(1, past + 1, 1), rec(2, past + 2, 2)])
        t.fence = Fence(SHARD, "old", old.counter, None, old_tenure)
        await first.commit(t)
        await first.close()  # a rolling restart: stopped before the window's end
        new = await leases.take(STREAM, old, "new", new_tenure.token)
        assert new is not None
        second = make_sink(tmp_path, grace=0.1, startup_quiet=0.3, load_at_open=False)
        await second.open()
        try:
            await asyncio.sleep(0.6)
            assert not finals(log)  # not its shard yet
            await second.shard_taken(STREAM, SHARD, Fence(SHARD, "new", new.counter, None, new_tenure))
            await until_final(log)
        finally:
            await second.close()
    finally:
        await leases.close()
    assert [(f["shard"], f["arn"], f["total"]) for f in finals(log)] == [(SHARD, ARN, 3)]
    assert window_row(tmp_path) == (past, None, "2", "2")  # closed under the new lease


async def test_a_window_found_in_the_store_at_start_is_closed_by_the_timer(tmp_path: Path, log: Path) -> None:
    past = int(time.time()) // W * W - 5 * W
    first = make_sink(tmp_path)  # long grace: stopped before it would close the window
    await first.open()
    await first.commit(tx([rec(1, past + 1, 1), rec(2, past + 2, 2)]))
    await first.close()
    assert not finals(log)
    second = make_sink(tmp_path, grace=0.1, startup_quiet=0.3)
    await second.open()
    try:
        await until_final(log)
    finally:
        await second.close()
    assert [(f["shard"], f["arn"], f["total"]) for f in finals(log)] == [(SHARD, ARN, 3)]


async def test_a_state_over_1_mib_ends_the_window_early(tmp_path: Path, log: Path) -> None:
    sink = make_sink(tmp_path)
    await sink.open()
    try:
        await sink.commit(tx([rec(1, T0 + 1, 1, pad=600_000)]))
        await sink.commit(tx([rec(2, T0 + 2, 2, pad=600_000)]))  # the state passes 1 MiB
        await sink.commit(tx([rec(3, T0 + 3, 3)]))
    finally:
        await sink.close()
    calls = journal.read(log)
    assert [(c["records"], c["final"], c["early"]) for c in calls] == [
        (["1"], False, False),
        (["2"], False, False),
        ([], True, True),  # the whole state, to act on before it is dropped
        (["3"], False, False),
    ]
    assert calls[2]["total"] == 3
    assert calls[3]["state_in"] == {}  # the same window goes on with a fresh state
    assert calls[3]["window"] == calls[0]["window"]
    assert window_row(tmp_path) == (T0, {"sum": 3, "count": 1}, "3", "3")


async def test_a_handler_that_changes_the_state_it_was_given_then_fails_changes_nothing(
    tmp_path: Path, log: Path
) -> None:
    sink = make_sink(tmp_path, handler="counts_in_place")
    await sink.open()
    try:
        await sink.commit(tx([rec(1, T0 + 1)]))
        with pytest.raises(RecordError):
            await sink.commit(tx([rec(2, T0 + 2, poison=True)]))
        await sink.commit(tx([rec(3, T0 + 3)]))
    finally:
        await sink.close()
    assert window_row(tmp_path) == (T0, {"k": 2}, "3", "3")


async def test_a_function_that_returns_no_state_fails_the_invocation(tmp_path: Path, log: Path) -> None:
    sink = make_sink(tmp_path, handler="without_state")
    await sink.open()
    try:
        with pytest.raises(WindowStateError):
            await sink.commit(tx([rec(1, T0 + 1, 1)]))
    finally:
        await sink.close()
    assert window_row(tmp_path) is None


async def test_an_invocation_failing_after_another_blames_only_its_own_records(
    tmp_path: Path, log: Path
) -> None:
    sink = make_sink(tmp_path)
    await sink.open()
    try:
        with pytest.raises(InvocationFailed) as raised:
            await sink.commit(tx([rec(1, T0 + 1, 1), rec(2, T0 + 11, 2, poison=True), rec(3, T0 + 12, 3)]))
    finally:
        await sink.close()
    assert raised.value.item_ids == {"2", "3"}
    assert raised.value.reason == "handler_error"
    assert [(f["window"]["start"], f["total"]) for f in finals(log)] == [(iso(T0), 1)]


def stream_units(records: list[Record]) -> list[Unit]:
    return [Unit(source=r, records=[r], token=r.position, index=i) for i, r in enumerate(records)]


async def commit_through_policy(sink: HandlerSink, records: list[Record], dead: Path) -> None:
    """What a shard's lane does: the failure policy commits the units, each
    transaction with the checkpoint of its last unit."""

    def build_tx(active: list[Unit]) -> Transaction:
        last = active[-1].token
        return Transaction(stream=STREAM, checkpoints=[Checkpoint(STREAM, SHARD, last.sequence_number)])

    def decide(u: Unit, _: RecordError) -> Decision:
        return "fail" if u.attempts >= 2 else "retry"

    retry = RetryConfig(max_attempts=2, backoff_initial_seconds=0.001, backoff_max_seconds=0.01)
    policy = FailurePolicy(STREAM, retry, sink, FileDest(str(dead)), build_tx=build_tx, decide=decide)
    await policy.commit(stream_units(records))


async def test_a_poison_record_leaves_its_window_and_the_others_count_once(tmp_path: Path, log: Path) -> None:
    dead = tmp_path / "dead.jsonl"
    records = [rec(1, T0 + 1, 1), rec(2, T0 + 2, 2), rec(3, T0 + 11, 3, poison=True), rec(4, T0 + 12, 4)]
    sink = make_sink(tmp_path)
    await sink.open()
    try:
        await commit_through_policy(sink, records, dead)
    finally:
        await sink.close()
    assert [json.loads(f["payload"])["value"] for f in journal.read(dead)] == [3]
    assert journal.read(dead)[0]["reason"] == "handler_error"
    assert [(f["window"]["start"], f["total"]) for f in finals(log)] == [(iso(T0), 3)]
    assert delivered(log).count("1") == delivered(log).count("2") == 1
    assert window_row(tmp_path) == (T0 + 10, {"sum": 4, "count": 1}, "4", "4")


async def test_batch_item_failures_keep_the_state_of_the_records_before(tmp_path: Path, log: Path) -> None:
    """Record 3 is named failed: the state returned holds 1 and 2, the retry
    starts at 3 with that state, and after its attempts 3 goes to on_failure."""
    dead = tmp_path / "dead.jsonl"
    records = [rec(i, T0 + i, i, fail=i == 3) for i in range(1, 6)]
    sink = make_sink(tmp_path)
    await sink.open()
    try:
        await commit_through_policy(sink, records, dead)
    finally:
        await sink.close()
    calls = journal.read(log)
    assert [(c["records"], c["state_in"]) for c in calls] == [
        (["1", "2", "3", "4", "5"], {}),
        (["3", "4", "5"], {"sum": 3, "count": 2}),
        (["4", "5"], {"sum": 3, "count": 2}),
    ]
    assert [json.loads(f["payload"])["value"] for f in journal.read(dead)] == [3]
    assert window_row(tmp_path) == (T0, {"sum": 12, "count": 4}, "5", "5")


async def test_the_end_of_a_shard_closes_its_window(tmp_path: Path, log: Path) -> None:
    sink = make_sink(tmp_path)
    await sink.open()
    try:
        await sink.commit(tx([rec(1, T0 + 1, 1), rec(2, T0 + 2, 2)]))
        end = Checkpoint(STREAM, SHARD, "2", 0, ShardState.SHARD_END)
        await sink.commit(Transaction(stream=STREAM, checkpoints=[end]))
    finally:
        await sink.close()
    assert [(f["window"]["start"], f["total"]) for f in finals(log)] == [(iso(T0), 3)]
    assert window_row(tmp_path) is None


async def test_a_failing_final_invocation_is_retried_without_blaming_a_record(
    tmp_path: Path, log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(window_sum, "FINAL_FAILURES", 1)
    batch = [rec(1, T0 + 1, 1), rec(2, T0 + 11, 2)]
    sink = make_sink(tmp_path)
    await sink.open()
    try:
        with pytest.raises(TransientError, match="final invocation of window"):
            await sink.commit(tx(batch))
        await sink.commit(tx(batch))  # the policy's retry
    finally:
        await sink.close()
    assert [(f["window"]["start"], f["total"]) for f in finals(log)] == [(iso(T0), 1)]
    assert delivered(log) == ["1", "2"]


async def test_a_final_invocation_failing_every_time_is_given_up(
    tmp_path: Path, log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(window_sum, "FINAL_FAILURES", 10)
    batch = [rec(1, T0 + 1, 1), rec(2, T0 + 11, 2)]
    sink = make_sink(tmp_path, attempts=2)
    await sink.open()
    try:
        with pytest.raises(TransientError):
            await sink.commit(tx(batch))
        await sink.commit(tx(batch))  # the second failure is the last: the window goes
    finally:
        await sink.close()
    assert not finals(log)
    assert window_row(tmp_path) == (T0 + 10, {"sum": 2, "count": 1}, "2", "2")


async def test_a_rewound_checkpoint_does_not_use_the_stored_state(tmp_path: Path, log: Path) -> None:
    sink = make_sink(tmp_path)
    await sink.open()
    await sink.commit(tx([rec(1, T0 + 1, 1), rec(2, T0 + 2, 2)]))
    await sink.close()
    with sqlite3.connect(tmp_path / "cp.sqlite") as db:  # what `poller checkpoints rewind` writes
        db.execute("UPDATE poller_checkpoints SET sequence_number = '1'")
    again = make_sink(tmp_path)
    await again.open()
    try:
        await again.commit(tx([rec(2, T0 + 2, 2)]))
    finally:
        await again.close()
    assert journal.read(log)[-1]["records"] == ["2"]
    assert journal.read(log)[-1]["state_in"] == {}


async def test_a_partial_failure_is_one_lambda_answers(tmp_path: Path, log: Path) -> None:
    sink = make_sink(tmp_path)
    await sink.open()
    try:
        with pytest.raises(PartialFailure) as raised:
            await sink.commit(tx([rec(1, T0 + 1, 1), rec(2, T0 + 2, 2, fail=True)]))
    finally:
        await sink.close()
    assert raised.value.item_ids == {"2"}
    assert not isinstance(raised.value, InvocationFailed)


# -- configuration -------------------------------------------------------------------------------


def stream_doc(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": "clicks",
        "source": {"type": "kinesis", "stream": "clicks"},
        "sink": {"type": "handler", "handler": "app:handler", "tumbling_window_seconds": 300},
    }
    for key, value in over.items():
        doc[key] = {**doc[key], **value}
    return doc


def test_a_window_config_is_accepted() -> None:
    cfg = parse_stream(stream_doc(), "clicks.yaml", {})
    assert cfg.sink.tumbling_window_seconds == 300  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"sink": {"tumbling_window_seconds": 901}}, "less than or equal to 900"),
        ({"sink": {"tumbling_window_seconds": -1}}, "greater than or equal to 0"),
        (
            {
                "source": {
                    "type": "sqs",
                    "queue_url": "https://sqs.us-east-1.amazonaws.com/1/q",
                    "stream": None,
                }
            },
            "windows are for Kinesis and DynamoDB Streams",
        ),
        ({"source": {"parallelization_factor": 2}}, "parallelization_factor to 1"),
        ({"coordination": {"lease_store": "dynamodb"}}, "lease_store: sink"),
    ],
)
def test_a_window_config_that_cannot_work_is_refused(over: dict[str, Any], message: str) -> None:
    doc = stream_doc(**{k: v for k, v in over.items() if k != "coordination"})
    if "coordination" in over:
        doc["coordination"] = over["coordination"]
    if doc["source"].get("type") == "sqs":
        doc["source"].pop("stream")
    with pytest.raises(Exception, match=message):
        parse_stream(doc, "clicks.yaml", {})


# -- import-esm --------------------------------------------------------------------------------------


def kinesis_mapping(**over: Any) -> dict[str, Any]:
    mapping: dict[str, Any] = json.loads((Path(ROOT) / "tests/fixtures/esm/kinesis.json").read_text())
    return {**mapping, "TumblingWindowInSeconds": 120, **over}


def test_import_esm_maps_the_window_to_the_lambda_sink() -> None:
    imported = import_mapping(kinesis_mapping())
    cfg = parse_stream(yaml.safe_load(imported.text), "x.yaml", {})
    assert cfg.sink.tumbling_window_seconds == 120  # type: ignore[union-attr]
    assert not any("TumblingWindowInSeconds" in n for n in imported.notes)


def test_import_esm_keeps_a_windowed_shard_in_one_lane() -> None:
    imported = import_mapping(kinesis_mapping(ParallelizationFactor=4))
    cfg = parse_stream(yaml.safe_load(imported.text), "x.yaml", {})
    assert cfg.source.parallelization_factor == 1  # type: ignore[union-attr]
    assert any(n.startswith("ParallelizationFactor: 4: with a tumbling window") for n in imported.notes)


def test_import_esm_reports_a_window_a_database_sink_cannot_have() -> None:
    imported = import_mapping(kinesis_mapping(), dsn="postgresql://db/app", table="clicks")
    assert "TumblingWindowInSeconds: 120: a database sink writes rows" in "\n".join(imported.notes)
