"""Bounded work per record: what one source record may expand into while it is
decoded (`limits:` in a stream file), and filter views whose cost is the
record's own size, not its parent's.

Every limit fails the record with a DecodeError (it then goes to the failure
destination with its payload), decided before the work it guards: memory is
measured with tracemalloc, time only with bounds that catch "unbounded".
"""

from __future__ import annotations

import gzip
import json
import time
import tracemalloc
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from poller.config import ConfigError, LimitsConfig, json_schema, parse_stream
from poller.events import filter_view, lambda_record
from poller.processing.decoders import build_decoder
from poller.processing.filters import compile_patterns
from poller.records import DecodeError, Record
from poller.sources.sqs import message_size
from tests.support.payloads import cloudwatch_payload, kpl_aggregate

MiB = 1024 * 1024


def rec(data: bytes) -> Record:
    return Record(
        source="aws:kinesis",
        stream="s",
        shard_id="shardId-000",
        sequence_number="49590338271490256608559692538361571095921575989136588898",
        data=data,
        raw_data=data,
        partition_key="outer",
        raw={
            "SequenceNumber": "1",
            "Data": data,
            "PartitionKey": "outer",
            "ApproximateArrivalTimestamp": 1.5,
        },
    )


@contextmanager
def peak_memory() -> Iterator[list[float]]:
    """Yields a list that holds, afterwards, the peak MiB allocated inside the block."""
    out: list[float] = []
    tracemalloc.start()
    try:
        yield out
    finally:
        out.append(tracemalloc.get_traced_memory()[1] / MiB)
        tracemalloc.stop()


def gzip_bomb(inflated: int) -> bytes:
    """A gzip stream of `inflated` zero bytes, built without holding them (1000:1)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(MiB)
    parts = [packer.compress(zeros[: min(MiB, inflated - done)]) for done in range(0, inflated, MiB)]
    return b"".join([*parts, packer.flush()])


def events_doc(count: int) -> dict[str, Any]:
    return {
        "messageType": "DATA_MESSAGE",
        "owner": "123456789012",
        "logGroup": "g",
        "logStream": "s",
        "subscriptionFilters": ["f"],
        "logEvents": [{"id": str(i), "timestamp": i, "message": f"m{i}"} for i in range(count)],
    }


# --------------------------------------------------------------------------- configuration


def test_every_limit_is_in_the_schema_with_a_description_and_bounds() -> None:
    defs = json_schema()["$defs"]
    limits = defs["LimitsConfig"]["properties"]
    assert set(limits) == {"max_records_per_payload", "max_inflated_bytes", "max_json_depth"}
    for name, prop in [
        *limits.items(),
        ("max_inflight_bytes", defs["SqsSource"]["properties"]["max_inflight_bytes"]),
    ]:
        assert prop["description"], name
        assert 0 < prop["minimum"] <= prop["default"] <= prop["maximum"], name
    assert limits["max_records_per_payload"]["default"] == 10_000


def test_limits_are_read_from_the_stream_file() -> None:
    base = {
        "name": "s",
        "source": {"type": "kinesis", "stream": "s"},
        "sink": {"type": "sqlite", "dsn": "x.db", "table": "t"},
    }
    cfg = parse_stream({**base, "limits": {"max_records_per_payload": 3}}, "s.yaml")
    assert cfg.limits == LimitsConfig(max_records_per_payload=3)
    assert parse_stream(base, "s.yaml").limits == LimitsConfig()
    with pytest.raises(ConfigError, match=r"s.yaml: limits.max_inflated_bytes: Input should be greater"):
        parse_stream({**base, "limits": {"max_inflated_bytes": 10}}, "s.yaml")
    with pytest.raises(ConfigError, match=r"limits.max_depth: unknown field"):
        parse_stream({**base, "limits": {"max_depth": 10}}, "s.yaml")


# --------------------------------------------------------------------------- bytes after inflation


def test_gzip_bomb_fails_while_inflating_with_little_memory() -> None:
    bomb = gzip_bomb(4 * MiB)  # a few KB
    assert len(bomb) < 8 * 1024
    decode = build_decoder(["cloudwatch_logs"], LimitsConfig(max_inflated_bytes=MiB))
    started = time.process_time()
    with peak_memory() as peak, pytest.raises(DecodeError) as info:
        decode(rec(bomb))
    assert "inflates to more than limits.max_inflated_bytes=1048576" in str(info.value)
    assert peak[0] < 3  # the bound and one piece, not the 4 MiB it claims
    assert time.process_time() - started < 5  # CPU: what inflating it all would cost


def test_gzip_bomb_with_the_default_bound() -> None:
    bomb = gzip_bomb(256 * MiB)  # 250 KB of gzip
    with peak_memory() as peak, pytest.raises(DecodeError, match="max_inflated_bytes=16777216"):
        build_decoder(["cloudwatch_logs"])(rec(bomb))
    assert peak[0] < 40


def test_inflated_bytes_are_counted_across_a_kpl_aggregate_of_deliveries() -> None:
    delivery = gzip.compress(json.dumps(events_doc(1) | {"pad": "x" * 600_000}).encode())
    [blob] = kpl_aggregate([("k", delivery)] * 3)
    limits = LimitsConfig(max_inflated_bytes=MiB)
    assert len(build_decoder(["cloudwatch_logs"], limits)(rec(delivery))) == 1  # one alone fits
    with pytest.raises(DecodeError, match=r"^sub-record 1: .*max_inflated_bytes=1048576 \(\d+ left"):
        build_decoder(["kpl", "cloudwatch_logs"], limits)(rec(blob))


# --------------------------------------------------------------------------- records per payload


def test_kpl_aggregate_over_the_record_limit_fails() -> None:
    [blob] = kpl_aggregate([(f"k{i % 10}", b"x") for i in range(20_000)])
    with pytest.raises(DecodeError, match=r"KPL aggregate user records: 20000 of them, more than .*=10000"):
        build_decoder(["kpl", "json"])(rec(blob))
    out = build_decoder(["kpl"], LimitsConfig(max_records_per_payload=20_000))(rec(blob))
    assert len(out) == 20_000


def test_cloudwatch_events_over_the_record_limit_fail() -> None:
    limits = LimitsConfig(max_records_per_payload=100)
    decode = build_decoder(["cloudwatch_logs"], limits)
    assert len(decode(rec(cloudwatch_payload([f"e{i}" for i in range(100)])))) == 100
    with pytest.raises(
        DecodeError, match=r"log events: 101 of them, more than limits.max_records_per_payload=100"
    ):
        decode(rec(cloudwatch_payload([f"e{i}" for i in range(101)])))


def test_many_tiny_events_fail_before_the_json_is_parsed() -> None:
    # The shape of a 12 KB delivery that once became 100k records and 92 MiB of heap.
    doc = events_doc(0) | {"logEvents": [{"id": "", "timestamp": 0, "message": ""}] * 100_000}
    payload = gzip.compress(json.dumps(doc).encode(), 9)
    assert len(payload) < 16_000
    with peak_memory() as peak, pytest.raises(DecodeError, match="JSON values, more than 32 a log event"):
        build_decoder(["cloudwatch_logs"])(rec(payload))
    assert peak[0] < 20


@pytest.mark.parametrize(
    "filler",
    [b"[]", b"{}", b'""', b'"ab"', b"1.5"],
    ids=["lists", "objects", "empty-strings", "strings", "floats"],
)
def test_json_value_bombs_fail_before_the_parse(filler: bytes) -> None:
    # 8 MiB of tiny values: parsed, up to 20 times that in objects.
    text = b'{"messageType": "DATA_MESSAGE", "logEvents": [' + b",".join([filler] * (8 * MiB // 4)) + b"]}"
    with peak_memory() as peak, pytest.raises(DecodeError, match="JSON values"):
        build_decoder(["cloudwatch_logs"])(rec(gzip.compress(text, 1)))
    assert peak[0] < 60  # the inflated text and a copy; a parse would take hundreds


def test_escaped_quotes_and_punctuation_inside_messages_are_not_values() -> None:
    # JSON log lines (CloudTrail, structured logs) carry many quotes, commas and
    # brackets inside each message: 10,000 such events are within the limit.
    inner = json.dumps({f"k{j}": [j, {"v": "a,b:c"}] for j in range(20)})
    payload = cloudwatch_payload([inner] * 10_000)
    out = build_decoder(["cloudwatch_logs", "json"])(rec(payload))
    assert len(out) == 10_000 and out[-1].data["k19"] == [19, {"v": "a,b:c"}]


def test_records_per_payload_is_per_stage_of_a_chain() -> None:
    deliveries = [cloudwatch_payload([f"{d}-{i}" for i in range(40)]) for d in range(3)]
    [blob] = kpl_aggregate([("k", d) for d in deliveries])
    limits = LimitsConfig(max_records_per_payload=100)
    with pytest.raises(DecodeError, match=r"^sub-record 2: .*40 of them, more than .*=100 \(20 left"):
        build_decoder(["kpl", "cloudwatch_logs"], limits)(rec(blob))
    roomy = LimitsConfig(max_records_per_payload=120)
    assert len(build_decoder(["kpl", "cloudwatch_logs"], roomy)(rec(blob))) == 120


# --------------------------------------------------------------------------- json depth


def test_json_depth() -> None:
    limits = LimitsConfig(max_json_depth=5)
    decode = build_decoder(["json"], limits)
    [out] = decode(rec(b'{"a": [[{"b": [1]}]], "c": "[[[[[[[[[[[["}'))  # 5 deep; brackets in text
    assert out.data["a"] == [[{"b": [1]}]]
    with pytest.raises(DecodeError, match=r"^JSON nests deeper than limits.max_json_depth=5$"):
        decode(rec(b'{"a": [[{"b": [[1]]}]], "pad": "' + b"x" * 20 + b'"}'))
    deep = b"[" * 300 + b"]" * 300  # parses, but deeper than the default 256
    with pytest.raises(DecodeError, match="max_json_depth=256"):
        build_decoder(["json"])(rec(deep))
    assert build_decoder(["json"], LimitsConfig(max_json_depth=300))(rec(deep))[0].data


# --------------------------------------------------------------------------- filter views


def _filtered(
    decoders: list[str], blob: bytes, pattern: dict[str, Any], limits: LimitsConfig
) -> tuple[int, float]:
    """Records kept, and the CPU seconds of this process it took (time.process_time:
    the cost of the work, which other processes on a shared machine do not stretch)."""
    decode = build_decoder(decoders, limits)
    matcher = compile_patterns([pattern])
    started = time.process_time()
    kept = [c for c in decode(rec(blob)) if matcher.matches(filter_view(c))]
    return len(kept), time.process_time() - started


def test_filtering_the_user_records_of_an_aggregate_costs_their_size() -> None:
    # 16k user records (690 KB): the view of each once encoded the whole aggregate (3-12 s).
    users = [
        (f"k{i}", json.dumps({"i": i, "status": "paid" if i % 2 else "new"}).encode()) for i in range(16_000)
    ]
    [blob] = kpl_aggregate(users)
    limits = LimitsConfig(max_records_per_payload=16_000)
    kept, seconds = _filtered(["kpl", "json"], blob, {"data": {"status": ["paid"]}}, limits)
    assert kept == 8_000
    assert seconds < 2
    # Text user records are shown as base64, as Lambda shows data that is not JSON.
    kept, seconds = _filtered(["kpl", "text"], blob, {"partitionKey": [{"prefix": "k1"}]}, limits)
    assert kept == 1 + 10 + 100 + 1000 + 6000
    assert seconds < 2


def test_filtering_log_events_costs_their_size() -> None:
    payload = cloudwatch_payload([f"line {i} " + "x" * 80 for i in range(10_000)])
    kept, seconds = _filtered(["cloudwatch_logs"], payload, {"partitionKey": ["outer"]}, LimitsConfig())
    assert kept == 10_000
    assert seconds < 2


def test_child_views_agree_with_the_event_records() -> None:
    [blob] = kpl_aggregate([("a", b'{"n": 1}'), ("b", b'"plain"'), ("c", b"[2]")])
    for decoders in (["kpl"], ["kpl", "text"], ["kpl", "json"]):
        for child in build_decoder(decoders)(rec(blob)):
            view = filter_view(child)
            event = lambda_record(child)["kinesis"]
            assert view.keys() == event.keys() and view["partitionKey"] == child.partition_key
            assert all(view[k] == event[k] for k in view if k != "data")
            if isinstance(view["data"], str):  # not a JSON container: base64, as Lambda shows it
                assert view["data"] == event["data"]
            else:
                assert view["data"] == ({"n": 1} if child.partition_key == "a" else [2])


def test_a_view_shared_by_two_records_is_not_confused_with_another() -> None:
    first, second = rec(b"one"), rec(b"two")
    first.data = second.data = "decoded text"
    assert filter_view(first)["data"] == "b25l"
    assert filter_view(second)["data"] == "dHdv"
    assert filter_view(first)["data"] == "b25l"


# --------------------------------------------------------------------------- sqs in flight


def test_sqs_message_size_is_what_sqs_counts() -> None:
    body = "héllo"  # 6 bytes in UTF-8
    msg = {
        "Body": body,
        "Attributes": {"SentTimestamp": "1700000000000"},  # system attributes: not counted by SQS
        "MessageAttributes": {
            "kind": {"DataType": "String", "StringValue": "ünit"},  # 4 + 6 + 5
            "blob": {"DataType": "Binary", "BinaryValue": b"\x00\x01\x02"},  # 4 + 6 + 3
        },
    }
    assert message_size(msg, body.encode()) == 6 + 15 + 13
    assert message_size({"Body": ""}, b"") == 0
