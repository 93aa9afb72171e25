"""The operator commands against a real `poller run` on moto and the real databases:
`status`, `checkpoints show | rewind`, `failures list | replay`, `iam-policy`.

Every write to a target table is logged by a trigger (`tables.create_logged_table`),
so "applied again" and "exactly once" are counted, not inferred from the rows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from poller.config import load_path
from poller.operator.iam import actions, iam_action, policy
from tests.handlers import journal
from tests.support import db
from tests.support.aws import client, queue_depth, send_all, streamed_table
from tests.support.aws_call_log import calls, recording
from tests.support.daemon import Daemon, metric, wait_for
from tests.support.servers import Kinesalite, MotoServer
from tests.support.tables import create_logged_table

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def kinesalite() -> Iterator[Kinesalite]:
    with Kinesalite() as server:
        yield server


ROOT = Path(__file__).resolve().parents[2]
LEASE = 3.0  # lease_seconds of the streams with `coordination:` (renewed every second)


def poller(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The command as an operator types it."""
    return subprocess.run(
        [sys.executable, "-m", "poller", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


def ok(*args: str) -> str:
    done = poller(*args)
    assert done.returncode == 0, f"poller {' '.join(args)} exited {done.returncode}:\n{done.stderr}"
    return done.stdout


# --------------------------------------------------------------------------- set-up


def make_table(kind: str, dsn: str, table: str, check: bool = False) -> None:
    """(id, n), keyed by id; with `check`, n must not be negative."""
    constraint = f", CONSTRAINT {table}_n CHECK (n >= 0)" if check else ""
    if kind == "postgres":
        columns = f"id text PRIMARY KEY, n int NOT NULL{constraint}"
        create_logged_table(kind, dsn, table, columns=columns, log_columns="id text", logged=["id"])
    else:
        columns = f"id VARCHAR(64) PRIMARY KEY, n INT NOT NULL{constraint}"
        create_logged_table(kind, dsn, table, columns=columns, log_columns="id VARCHAR(64)", logged=["id"])


def kinesis_stream(name: str, kind: str, dsn: str, stream: str, endpoint: str, **over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "name": name,
        "source": {
            "type": "kinesis",
            "stream": stream,
            "endpoint_url": endpoint,
            "region": "us-east-1",
            "idle_poll_seconds": 0.2,
            "shard_discovery_seconds": 0.5,
        },
        "batch": {"size": 100, "window_seconds": 0.1},
        "retry": {"max_attempts": 1, "backoff_initial_seconds": 0.05, "backoff_max_seconds": 0.2},
        "sink": {
            "type": kind,
            "dsn": dsn,
            "table": name,
            "key": ["id"],
            "columns": {"id": "data.id", "n": "data.n"},
        },
    }
    cfg.update(over)
    return cfg


def new_kinesis(moto: MotoServer, shards: int) -> tuple[Any, str]:
    kinesis = client("kinesis", moto.url)
    name = f"ops-{uuid.uuid4().hex[:8]}"
    kinesis.create_stream(StreamName=name, ShardCount=shards)
    return kinesis, name


def put(kinesis: Any, stream: str, records: list[dict[str, Any]]) -> tuple[dict[str, str], dict[str, str]]:
    """Put each record (partition key: its id); returns (id → shard id, shard id →
    the sequence number of its last record)."""
    shard_of: dict[str, str] = {}
    last: dict[str, str] = {}
    for r in records:
        resp = kinesis.put_record(StreamName=stream, Data=json.dumps(r).encode(), PartitionKey=r["id"])
        shard_of[r["id"]] = resp["ShardId"]
        last[resp["ShardId"]] = resp["SequenceNumber"]
    return shard_of, last


def count(kind: str, dsn: str, sql: str) -> int:
    return int(db.scalar(kind, dsn, sql) or 0)


def write_counts(kind: str, dsn: str, table: str) -> dict[str, int]:
    return {
        r[0]: int(r[1]) for r in db.fetch(kind, dsn, f"SELECT id, count(*) FROM {table}_writes GROUP BY id")
    }


def config_dir(*streams: dict[str, Any]) -> Path:
    d = Path(f"/tmp/poller-ops-{uuid.uuid4().hex[:8]}")
    d.mkdir()
    for s in streams:
        (d / f"{s['name']}.yaml").write_text(yaml.safe_dump(s))
    return d


# --------------------------------------------------------------------------- status


def test_status_after_a_run_shows_checkpoints_lag_and_failures(
    moto: MotoServer, database: tuple[str, str]
) -> None:
    kind, dsn = database
    kinesis, stream = new_kinesis(moto, 2)
    name = f"st_{kind}"
    make_table(kind, dsn, name)
    cfg = kinesis_stream(name, kind, dsn, stream, moto.url)
    good = [{"id": f"r{i}", "n": i} for i in range(20)]
    bad = [{"id": f"bad{i}", "n": "not a number"} for i in range(2)]
    _, last = put(kinesis, stream, good[:10] + bad + good[10:])
    with Daemon([cfg]) as d:
        d.wait_ready()
        wait_for(lambda: count(kind, dsn, f"SELECT count(*) FROM {name}") == 20, 30, message="rows")
        wait_for(
            lambda: count(kind, dsn, f"SELECT count(*) FROM poller_failures WHERE stream = '{name}'") == 2,
            30,
            message="failure rows",
        )
        wait_for(
            lambda: _checkpointed(kind, dsn, name) == last, 30, message="checkpoints at the last records"
        )
    folder = config_dir(cfg)

    doc = json.loads(ok("status", "--config", str(folder), "--json"))
    (status,) = doc["streams"]
    assert status["name"] == name and status["failures"] == 2 and status["failure_destination"] == "table"
    assert not status["errors"]
    shards = {s["shard_id"]: s for s in status["shards"]}
    assert set(shards) == set(last)
    for shard_id, s in shards.items():
        assert s["sequence_number"] == last[shard_id]
        assert s["state"] == "reading" and s["lag_seconds"] == 0
        assert s["checkpointed_at"] is not None and s["lease_owner"] is None

    text = ok("status", "--config", str(folder))
    assert f"stream {name} (kinesis): failures 2 (table)" in text
    header = next(line for line in text.splitlines() if "SHARD" in line)
    assert header.split() == ["SHARD", "STATE", "OWNER", "CHECKPOINT", "CHECKPOINTED", "AT", "LAG"]
    for shard_id, sequence in last.items():
        line = next(line for line in text.splitlines() if shard_id in line)
        assert line.split() == [shard_id, "reading", "-", sequence, line.split()[4], "0.0s"]

    shown = json.loads(ok("checkpoints", "--config", str(folder), "show", "--json"))
    assert {r["shard_id"]: r["sequence_number"] for r in shown[name]} == last


def _checkpointed(kind: str, dsn: str, stream: str) -> dict[str, str]:
    rows = db.fetch(
        kind, dsn, f"SELECT shard_id, sequence_number FROM poller_checkpoints WHERE stream = '{stream}'"
    )
    return {r[0]: r[1] for r in rows if "#" not in r[0]}


def test_status_of_an_sqs_stream_counts_the_queue_and_its_dead_letter_queue(
    moto: MotoServer, pg_dsn: str
) -> None:
    sqs = client("sqs", moto.url)
    suffix = uuid.uuid4().hex[:8]
    dlq = sqs.create_queue(QueueName=f"dlq-{suffix}")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    redrive = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "3"})
    queue = sqs.create_queue(QueueName=f"q-{suffix}", Attributes={"RedrivePolicy": redrive})["QueueUrl"]
    send_all(sqs, queue, ["a", "b", "c"])
    sqs.send_message(QueueUrl=queue, MessageBody="later", DelaySeconds=60)
    send_all(sqs, dlq, ["x", "y"])
    sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=1, VisibilityTimeout=60)
    cfg = {
        "name": f"sqs_{suffix}",
        "source": {"type": "sqs", "queue_url": queue, "endpoint_url": moto.url, "region": "us-east-1"},
        "sink": {
            "type": "postgres",
            "dsn": pg_dsn,
            "table": "unused",
            "key": ["id"],
            "columns": {"id": "data.id"},
        },
    }
    folder = config_dir(cfg)

    (status,) = json.loads(ok("status", "--config", str(folder), "--json"))["streams"]
    assert status["queue"] == {"url": queue, "visible": 2, "in_flight": 1, "delayed": 1}
    assert status["dead_letter_queue"] == {"url": dlq, "visible": 2, "in_flight": 0, "delayed": 0}
    assert status["shards"] == [] and status["failures"] is None

    refused = poller("checkpoints", "--config", str(folder), "rewind", "--stream", cfg["name"], "--latest")
    assert refused.returncode == 1 and "SQS has no checkpoints" in refused.stderr


# --------------------------------------------------------------------------- rewind


def test_rewind_to_a_timestamp_applies_the_later_records_again(
    moto: MotoServer, database: tuple[str, str]
) -> None:
    kind, dsn = database
    kinesis, stream = new_kinesis(moto, 2)
    name = f"rw_{kind}"
    make_table(kind, dsn, name)
    cfg = kinesis_stream(name, kind, dsn, stream, moto.url)
    before = [{"id": f"a{i}", "n": i} for i in range(6)]
    after = [{"id": f"b{i}", "n": i} for i in range(6)]
    shard_of, _ = put(kinesis, stream, before)
    time.sleep(1.2)  # a clear gap between the two batches' arrival times
    moment = datetime.now(UTC)
    time.sleep(1.2)
    shard_of.update(put(kinesis, stream, after)[0])
    with Daemon([cfg]) as d:
        d.wait_ready()
        wait_for(lambda: sum(write_counts(kind, dsn, name).values()) == 12, 30, message="first pass")
    rows = db.fetch(kind, dsn, f"SELECT id, n FROM {name} ORDER BY id")
    folder = config_dir(cfg)

    out = ok(
        "checkpoints",
        "--config",
        str(folder),
        "rewind",
        "--stream",
        name,
        "--to-timestamp",
        moment.isoformat(),
    )
    assert "takes effect when the stream next starts" in out
    with Daemon([cfg]) as d:
        d.wait_ready()
        wait_for(
            lambda: sum(write_counts(kind, dsn, name).values()) == 18, 30, message="records after the moment"
        )
        time.sleep(1.0)  # nothing more comes
        writes = write_counts(kind, dsn, name)
    assert writes == {**{r["id"]: 1 for r in before}, **{r["id"]: 2 for r in after}}
    assert db.fetch(kind, dsn, f"SELECT id, n FROM {name} ORDER BY id") == rows  # the upsert converges

    # One shard back to its oldest record: only that shard's records are applied again.
    shard = shard_of["b0"]
    ok("checkpoints", "--config", str(folder), "rewind", "--stream", name, "--shard", shard, "--trim-horizon")
    again = [r["id"] for r in before + after if shard_of[r["id"]] == shard]
    with Daemon([cfg]) as d:
        d.wait_ready()
        wait_for(
            lambda: sum(write_counts(kind, dsn, name).values()) == 18 + len(again), 30, message="one shard"
        )
        time.sleep(1.0)
        final = write_counts(kind, dsn, name)
    assert final == {k: v + (1 if k in again else 0) for k, v in writes.items()}


@pytest.mark.parametrize("leased", [False, True], ids=["one_worker", "leases"])
def test_rewind_to_before_a_split_reads_the_parent_again_then_its_children(
    kinesalite: Kinesalite, pg_dsn: str, leased: bool
) -> None:
    """kinesalite reshards as AWS does. After a split, a rewind to a moment before it
    reopens the parent: each key's record in the parent is applied again before
    its record in a child, and every record once more. With leases, the parent's
    lease, ended by the first pass, is opened again by the rewind."""
    name = "rw_split_leased" if leased else "rw_split"
    log_columns = "id text, k bigserial"
    create_logged_table(
        "postgres", pg_dsn, name, columns="id text PRIMARY KEY, n int", log_columns=log_columns, logged=["id"]
    )
    kinesis = client("kinesis", kinesalite.url)
    stream = f"split-{uuid.uuid4().hex[:8]}"
    kinesis.create_stream(StreamName=stream, ShardCount=1)
    wait_for(lambda: _active(kinesis, stream), 30, message="stream active")
    keys = [f"k{i}" for i in range(6)]
    moment = datetime.now(UTC)
    time.sleep(1.2)
    for k in keys:
        kinesis.put_record(
            StreamName=stream, Data=json.dumps({"id": f"A-{k}", "n": 1}).encode(), PartitionKey=k
        )
    (parent,) = kinesis.list_shards(StreamName=stream)["Shards"]
    hashes = parent["HashKeyRange"]
    middle = (int(hashes["StartingHashKey"]) + int(hashes["EndingHashKey"])) // 2
    kinesis.split_shard(StreamName=stream, ShardToSplit=parent["ShardId"], NewStartingHashKey=str(middle))
    wait_for(lambda: _active(kinesis, stream), 30, message="split done")
    for k in keys:
        kinesis.put_record(
            StreamName=stream, Data=json.dumps({"id": f"B-{k}", "n": 2}).encode(), PartitionKey=k
        )
    cfg = kinesis_stream(name, "postgres", pg_dsn, stream, kinesalite.url)
    if leased:
        cfg["coordination"] = {"lease_seconds": LEASE, "worker_id": "split-w"}
    writes = f"SELECT count(*) FROM {name}_writes"
    with Daemon([cfg]) as d:
        d.wait_ready()
        wait_for(lambda: count("postgres", pg_dsn, writes) == 12, 30, message="first pass")
    folder = config_dir(cfg)
    (status,) = json.loads(ok("status", "--config", str(folder), "--json"))["streams"]
    states = {s["shard_id"]: s["state"] for s in status["shards"]}
    assert states.pop(parent["ShardId"]) == "ended"
    assert sorted(states.values()) == ["reading", "reading"]
    assert all(s["lag_seconds"] == 0 for s in status["shards"] if s["state"] == "reading")
    if leased:
        leases = {s["shard_id"]: s["lease_state"] for s in status["shards"]}
        assert leases.pop(parent["ShardId"]) == "ended"
        assert list(leases.values()) == ["free", "free"]  # released on stop

    ok(
        "checkpoints",
        "--config",
        str(folder),
        "rewind",
        "--stream",
        name,
        "--to-timestamp",
        moment.isoformat(),
    )
    with Daemon([cfg]) as d:
        d.wait_ready()
        wait_for(lambda: count("postgres", pg_dsn, writes) == 24, 30, message="second pass")
        time.sleep(1.0)
    log = db.fetch("postgres", pg_dsn, f"SELECT id, k FROM {name}_writes ORDER BY k")
    assert sorted(i for i, _ in log) == sorted([f"{p}-{k}" for p in "AB" for k in keys] * 2)
    second = [i for i, _ in log[12:]]
    for k in keys:
        assert second.index(f"A-{k}") < second.index(f"B-{k}"), f"{k}: child applied before its parent"


def _active(kinesis: Any, stream: str) -> bool:
    summary = kinesis.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]
    return bool(summary["StreamStatus"] == "ACTIVE")


# --------------------------------------------------------------------------- replay


def test_replay_after_fixing_the_cause_writes_each_failed_record_once(
    moto: MotoServer, database: tuple[str, str]
) -> None:
    kind, dsn = database
    kinesis, stream = new_kinesis(moto, 1)
    name = f"rp_{kind}"
    make_table(kind, dsn, name, check=True)
    cfg = kinesis_stream(name, kind, dsn, stream, moto.url)
    records = [{"id": f"r{i}", "n": -1 if i % 4 == 0 else i} for i in range(12)]  # 3 break the CHECK
    put(kinesis, stream, records)
    failures_sql = f"SELECT count(*) FROM poller_failures WHERE stream = '{name}'"
    with Daemon([cfg]) as d:
        d.wait_ready()
        wait_for(lambda: count(kind, dsn, failures_sql) == 3, 30, message="failure rows")
        wait_for(lambda: count(kind, dsn, f"SELECT count(*) FROM {name}") == 9, 30, message="good rows")
    folder = config_dir(cfg)

    listed = json.loads(ok("failures", "--config", str(folder), "list", "--stream", name, "--json"))
    assert sorted(json.loads(i["payload"])["id"] for i in listed) == ["r0", "r4", "r8"]
    assert all(i["reason"] == "constraint_violation" and i["attempts"] == 1 for i in listed)

    # Not fixed yet: each fails again, keeps its row with the new attempt, writes nothing.
    report = json.loads(ok("failures", "--config", str(folder), "replay", "--stream", name, "--json"))
    assert len(report["failed_again"]) == 3 and report["replayed"] == []
    assert [
        i["attempts"]
        for i in json.loads(ok("failures", "--config", str(folder), "list", "--stream", name, "--json"))
    ] == [2, 2, 2]

    db.execute(kind, dsn, f"ALTER TABLE {name} DROP CONSTRAINT {name}_n")
    first = listed[0]["id"]
    report = json.loads(
        ok("failures", "--config", str(folder), "replay", "--stream", name, "--id", first, "--json")
    )
    assert report["replayed"] == [first]
    report = json.loads(ok("failures", "--config", str(folder), "replay", "--stream", name, "--json"))
    assert sorted(report["replayed"]) == sorted(i["id"] for i in listed[1:])
    assert count(kind, dsn, failures_sql) == 0
    assert write_counts(kind, dsn, name) == {r["id"]: 1 for r in records}
    assert count(kind, dsn, f"SELECT count(*) FROM {name} WHERE n = -1") == 3

    again = json.loads(ok("failures", "--config", str(folder), "replay", "--stream", name, "--json"))
    assert again["replayed"] == [] and again["failed_again"] == {}
    assert write_counts(kind, dsn, name) == {r["id"]: 1 for r in records}
    again = json.loads(
        ok("failures", "--config", str(folder), "replay", "--stream", name, "--id", first, "--json")
    )
    assert again["not_found"] == [first] and write_counts(kind, dsn, name) == {r["id"]: 1 for r in records}


def test_replay_from_a_failure_file_is_marked_in_the_row_transaction(moto: MotoServer, pg_dsn: str) -> None:
    kinesis, stream = new_kinesis(moto, 1)
    name = "rp_file"
    make_table("postgres", pg_dsn, name, check=True)
    path = Path(f"/tmp/poller-ops-{uuid.uuid4().hex[:8]}.jsonl")
    cfg = kinesis_stream(
        name, "postgres", pg_dsn, stream, moto.url, on_failure={"type": "file", "path": str(path)}
    )
    records = [{"id": "ok", "n": 1}, {"id": "neg", "n": -5}]
    put(kinesis, stream, records)
    with Daemon([cfg]) as d:
        d.wait_ready()
        wait_for(lambda: path.exists() and path.read_text().count("\n") == 1, 30, message="failure line")
    folder = config_dir(cfg)
    db.execute("postgres", pg_dsn, f"ALTER TABLE {name} DROP CONSTRAINT {name}_n")

    (item,) = json.loads(ok("failures", "--config", str(folder), "list", "--stream", name, "--json"))
    assert item["id"] == "1" and json.loads(item["payload"]) == {"id": "neg", "n": -5}
    report = json.loads(ok("failures", "--config", str(folder), "replay", "--stream", name, "--json"))
    assert report["replayed"] == ["1"]
    assert json.loads(ok("failures", "--config", str(folder), "list", "--stream", name, "--json")) == []
    again = json.loads(ok("failures", "--config", str(folder), "replay", "--stream", name, "--json"))
    assert again["replayed"] == []
    assert write_counts("postgres", pg_dsn, name) == {"ok": 1, "neg": 1}


def test_replay_from_a_failure_queue_deletes_the_message_after_its_row_commits(
    moto: MotoServer, pg_dsn: str
) -> None:
    name = "rp_queue"
    make_table("postgres", pg_dsn, name, check=True)
    cfg, queue, failed_queue = sqs_to_failure_queue(moto, pg_dsn, name)
    sqs = client("sqs", moto.url)
    send_all(sqs, queue, [json.dumps({"id": "a", "n": 1}), json.dumps({"id": "b", "n": -1})])
    with Daemon([cfg]) as d:
        d.wait_ready()
        wait_for(lambda: queue_depth(sqs, failed_queue) == 1, 40, message="failure message")
    folder = config_dir(cfg)
    (item,) = json.loads(ok("failures", "--config", str(folder), "list", "--stream", name, "--json"))
    assert json.loads(item["payload"]) == {"id": "b", "n": -1} and item["attempts"] == 2
    assert queue_depth(sqs, failed_queue) == 1  # a listing leaves the message where it was

    db.execute("postgres", pg_dsn, f"ALTER TABLE {name} DROP CONSTRAINT {name}_n")
    report = json.loads(ok("failures", "--config", str(folder), "replay", "--stream", name, "--json"))
    assert report["replayed"] == [item["id"]]
    assert queue_depth(sqs, failed_queue) == 0
    again = json.loads(ok("failures", "--config", str(folder), "replay", "--stream", name, "--json"))
    assert again["replayed"] == [] and again["already_replayed"] == []
    assert write_counts("postgres", pg_dsn, name) == {"a": 1, "b": 1}


def test_replay_through_a_handler_after_fixing_it_delivers_each_failed_record_once(
    moto: MotoServer, tmp_path: Path
) -> None:
    """A handler sink: failed records are handed to the fixed handler, one event
    each, and claimed in the same store transaction; replayed again, nothing is
    delivered twice."""
    kinesis, stream = new_kinesis(moto, 1)
    name = "rp_handler"
    log, fixed = tmp_path / "handled.jsonl", tmp_path / "fixed"
    env = {"HANDLER_LOG": str(log), "POISON_FIXED": str(fixed)}
    cfg = kinesis_stream(name, "sqlite", "", stream, moto.url)
    cfg["sink"] = {
        "type": "handler",
        "handler": "tests.handlers.failing:poison_until_fixed",
        "code_path": str(ROOT),
        "checkpoint_dsn": str(tmp_path / "checkpoints.sqlite"),
    }
    records = [{"id": f"h{i}", "poison": i in (2, 4)} for i in range(6)]
    put(kinesis, stream, records)

    def handled() -> list[str]:
        return sorted(e["handled"] for e in journal.read(log) if "handled" in e)

    def listed() -> list[dict[str, Any]]:
        return list(json.loads(ok("failures", "--config", str(folder), "list", "--stream", name, "--json")))

    def replay() -> dict[str, Any]:
        done = poller("failures", "--config", str(folder), "replay", "--stream", name, "--json", env=env)
        assert done.returncode == 0, done.stderr
        return dict(json.loads(done.stdout))

    folder = config_dir(cfg)
    with Daemon([cfg], env=env) as d:
        d.wait_ready()
        wait_for(lambda: handled() == ["h0", "h1", "h3", "h5"], 30, message="the good records handled")
        wait_for(lambda: len(listed()) == 2, 30, message="the poison records failed")
    assert sorted(json.loads(i["payload"])["id"] for i in listed()) == ["h2", "h4"]

    report = replay()  # not fixed yet: they fail again and stay
    assert len(report["failed_again"]) == 2 and report["replayed"] == []
    assert [i["attempts"] for i in listed()] == [2, 2] and handled() == ["h0", "h1", "h3", "h5"]

    fixed.touch()
    report = replay()
    assert len(report["replayed"]) == 2 and report["failed_again"] == {}
    assert handled() == ["h0", "h1", "h2", "h3", "h4", "h5"]
    assert listed() == []
    assert [e["invocation"] for e in journal.read(log) if "invocation" in e][-2:] in (
        [["h2"], ["h4"]],
        [["h4"], ["h2"]],
    )  # one record per event
    again = replay()
    assert again["replayed"] == [] and again["failed_again"] == {}
    assert handled() == ["h0", "h1", "h2", "h3", "h4", "h5"]


def sqs_to_failure_queue(moto: MotoServer, dsn: str, name: str) -> tuple[dict[str, Any], str, str]:
    """An SQS stream whose records fail (after two receives) into another queue."""
    sqs = client("sqs", moto.url)
    suffix = uuid.uuid4().hex[:8]
    queue = sqs.create_queue(QueueName=f"{name}-{suffix}")["QueueUrl"]
    failed_queue = sqs.create_queue(QueueName=f"{name}-failed-{suffix}")["QueueUrl"]
    endpoint = {"endpoint_url": moto.url, "region": "us-east-1"}
    cfg = {
        "name": name,
        "source": {"type": "sqs", "queue_url": queue, "wait_seconds": 1, **endpoint},
        "batch": {"size": 10, "window_seconds": 0.1},
        "retry": {"max_attempts": 2, "backoff_initial_seconds": 0.05, "backoff_max_seconds": 0.1},
        "on_failure": {"type": "sqs", "queue_url": failed_queue, **endpoint},
        "sink": {
            "type": "postgres",
            "dsn": dsn,
            "table": name,
            "key": ["id"],
            "columns": {"id": "data.id", "n": "data.n"},
        },
    }
    return cfg, queue, failed_queue


def test_status_and_rewind_of_a_dynamodb_stream(moto: MotoServer, pg_dsn: str) -> None:
    ddb = client("dynamodb", moto.url)
    table = new_dynamodb_table(ddb)
    for i in range(4):
        ddb.put_item(TableName=table, Item={"id": {"S": f"i{i}"}, "n": {"N": str(i)}})
    name = "ops_ddb"
    make_table("postgres", pg_dsn, name)
    cfg = dynamodb_stream(name, table, moto, pg_dsn)
    with Daemon([cfg]) as d:
        d.wait_ready()
        wait_for(lambda: sum(write_counts("postgres", pg_dsn, name).values()) == 4, 30, message="items")
    folder = config_dir(cfg)
    (status,) = json.loads(ok("status", "--config", str(folder), "--json"))["streams"]
    (shard,) = status["shards"]
    assert shard["state"] == "reading" and shard["lag_seconds"] == 0 and shard["sequence_number"]
    assert status["failures"] == 0

    ok("checkpoints", "--config", str(folder), "rewind", "--stream", name, "--trim-horizon")
    with Daemon([cfg]) as d:
        d.wait_ready()
        wait_for(lambda: sum(write_counts("postgres", pg_dsn, name).values()) == 8, 30, message="again")
    assert write_counts("postgres", pg_dsn, name) == {f"i{i}": 2 for i in range(4)}


def new_dynamodb_table(ddb: Any) -> str:
    table = f"ops-{uuid.uuid4().hex[:8]}"
    streamed_table(ddb, table)
    return table


def dynamodb_stream(name: str, table: str, moto: MotoServer, dsn: str) -> dict[str, Any]:
    return {
        "name": name,
        "source": {"type": "dynamodb", "table": table, "endpoint_url": moto.url, "region": "us-east-1"},
        "sink": {
            "type": "postgres",
            "dsn": dsn,
            "table": name,
            "key": ["id"],
            "columns": {"id": "keys.id", "n": "new.n"},
        },
    }


def test_a_whole_stream_rewind_of_a_snapshotted_table_takes_a_new_snapshot(
    moto: MotoServer, pg_dsn: str
) -> None:
    """`snapshot: initial`: the rewind says a new snapshot comes, and the next start
    scans the table again (every item written once more) before the stream."""
    ddb = client("dynamodb", moto.url)
    table = new_dynamodb_table(ddb)
    for i in range(3):
        ddb.put_item(TableName=table, Item={"id": {"S": f"s{i}"}, "n": {"N": str(i)}})
    name = "ops_snap"
    make_table("postgres", pg_dsn, name)
    cfg = dynamodb_stream(name, table, moto, pg_dsn)
    cfg["source"]["snapshot"] = {"mode": "initial", "segments": 1}
    with Daemon([cfg]) as d:
        d.wait_ready()
        wait_for(
            lambda: set(write_counts("postgres", pg_dsn, name)) == {f"s{i}" for i in range(3)},
            30,
            message="scan",
        )
    folder = config_dir(cfg)
    before = write_counts("postgres", pg_dsn, name)  # the scan, and the stream's changes since its start
    said = ok("checkpoints", "--config", str(folder), "rewind", "--stream", name, "--trim-horizon")
    assert "#snapshot" in said and "new snapshot" in said, said
    with Daemon([cfg]) as d:
        d.wait_ready()
        wait_for(
            lambda: all(
                write_counts("postgres", pg_dsn, name).get(f"s{i}", 0) >= before[f"s{i}"] + 1
                for i in range(3)
            ),
            30,
            message="the table scanned again",
        )
        assert metric(d, "poller_snapshot_items_total", stream=name) == 3  # a scan, not the stream
        ddb.put_item(TableName=table, Item={"id": {"S": "later"}, "n": {"N": "9"}})
        wait_for(
            lambda: write_counts("postgres", pg_dsn, name).get("later") == 1, 30, message="then the stream"
        )


# --------------------------------------------------------------------------- leases


def test_status_names_the_lease_holders_and_rewind_waits_for_live_ones(moto: MotoServer, pg_dsn: str) -> None:
    """Leases in the sink's database: `status` shows the daemon's worker id on every
    shard; a rewind is refused while that worker's leases are live, written with
    --force, and accepted once they expired (SIGKILL) or were released (SIGTERM)."""
    kind, dsn = "postgres", pg_dsn
    kinesis, stream = new_kinesis(moto, 2)
    name = f"lease_{uuid.uuid4().hex[:6]}"
    make_table(kind, dsn, name)
    cfg = kinesis_stream(
        name, kind, dsn, stream, moto.url, coordination={"lease_seconds": LEASE, "worker_id": "ops-w1"}
    )
    records = [{"id": f"r{i}", "n": i} for i in range(10)]
    _, last = put(kinesis, stream, records)
    folder = config_dir(cfg)
    rewind = ("checkpoints", "--config", str(folder), "rewind", "--stream", name, "--trim-horizon")

    def shards() -> dict[str, dict[str, Any]]:
        (status,) = json.loads(ok("status", "--config", str(folder), "--json"))["streams"]
        assert not status["errors"], status["errors"]
        return {s["shard_id"]: s for s in status["shards"]}

    d = Daemon([cfg]).start()
    try:
        d.wait_ready()
        wait_for(lambda: sum(write_counts(kind, dsn, name).values()) == 10, 30, message="rows")
        wait_for(lambda: _checkpointed(kind, dsn, name) == last, 30, message="checkpoints")
        wait_for(lambda: len(_owners(kind, dsn, name)) == 2, 15, message="both leases taken")
        seen = shards()
        assert set(seen) == set(last)
        for s in seen.values():
            assert (s["lease_owner"], s["lease_state"]) == ("ops-w1", "held"), s
            assert s["lease_counter"] >= 1 and 0 <= s["lease_renewed_seconds_ago"] < LEASE
            assert s["lease_holder"].endswith(f" pid {d.proc.pid}"), s  # the process, not just its name
        text = ok("status", "--config", str(folder))
        assert "leases: the PostgreSQL database at " in text and "lease_seconds 3" in text
        header = next(line for line in text.splitlines() if "SHARD" in line)
        assert header.split()[:5] == ["SHARD", "STATE", "OWNER", "LEASE", "CHECKPOINT"]
        for shard_id in last:
            line = next(line for line in text.splitlines() if shard_id in line).split()
            assert line[1:4] == ["reading", "ops-w1", "held"], line

        refused = poller(*rewind)
        assert refused.returncode == 1, refused.stderr
        assert "not rewound: worker 'ops-w1' holds the leases of" in refused.stderr
        assert "--force" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
        shard = sorted(last)[0]
        refused = poller(*rewind, "--shard", shard)
        assert refused.returncode == 1 and f"'ops-w1' holds the lease of {shard}" in refused.stderr
        assert _checkpointed(kind, dsn, name) == last  # nothing written

        forced = poller(*rewind, "--force")
        assert forced.returncode == 0, forced.stderr
        assert "warning:" in forced.stderr and "'ops-w1'" in forced.stderr
        assert _checkpointed(kind, dsn, name) == {}  # written (the idle daemon commits nothing)

        d.kill()  # its leases still name it, until they expire
        wait_for(
            lambda: all(s["lease_state"] == "expired" for s in shards().values()),
            LEASE + 15,
            message="leases expired",
        )
        assert all(s["lease_owner"] == "ops-w1" for s in shards().values())
    finally:
        d.stop()
    ok(*rewind)

    with Daemon([cfg]) as d:  # the same worker id takes its leases back at once
        d.wait_ready()
        wait_for(lambda: sum(write_counts(kind, dsn, name).values()) == 20, 30, message="applied again")
        wait_for(lambda: _checkpointed(kind, dsn, name) == last, 30, message="checkpoints again")
    assert write_counts(kind, dsn, name) == {r["id"]: 2 for r in records}
    assert all((s["lease_owner"], s["lease_state"]) == (None, "free") for s in shards().values())
    assert "start at 1970-01-01" in ok(*rewind)  # released on SIGTERM: accepted at once


def _owners(kind: str, dsn: str, stream: str) -> dict[str, str]:
    rows = db.fetch(kind, dsn, f"SELECT shard_id, owner FROM poller_leases WHERE stream = '{stream}'")
    return {r[0]: r[1] for r in rows if r[1]}


def handler_stream(name: str, stream: str, moto: MotoServer, tmp: Path) -> dict[str, Any]:
    """User code with its leases and checkpoints in a DynamoDB table (on moto)."""
    cfg = kinesis_stream(name, "postgres", "unused", stream, moto.url)
    cfg["sink"] = {
        "type": "handler",
        "handler": "tests.handlers.failing:poison",
        "code_path": str(ROOT),
        "checkpoint_dsn": str(tmp / "store.sqlite"),  # failure rows only
    }
    cfg["coordination"] = {
        "lease_store": "dynamodb",
        "table": f"{name}-leases",
        "endpoint_url": moto.url,
        "region": "us-east-1",
        "lease_seconds": LEASE,
        "worker_id": "ops-h1",
    }
    return cfg


def test_a_dynamodb_lease_store_is_where_the_commands_read_and_rewind_checkpoints(
    moto: MotoServer, tmp_path: Path
) -> None:
    """`lease_store: dynamodb` keeps the checkpoints in the lease table: `checkpoints
    show` and `status` read them there, a rewind is refused while the handler's daemon
    holds the leases and, once it stopped, written there and applied by the next run.
    The policy of the stream grants every call the daemon and the commands made."""
    kinesis, stream = new_kinesis(moto, 2)
    name = f"ddbl_{uuid.uuid4().hex[:6]}"
    cfg = handler_stream(name, stream, moto, tmp_path)
    records = [{"id": f"h{i}"} for i in range(8)]
    _, last = put(kinesis, stream, records)
    folder = config_dir(cfg)
    handled_log, calls_log = tmp_path / "handled.jsonl", tmp_path / "calls.log"
    env = {"HANDLER_LOG": str(handled_log), **recording(calls_log)}

    def handled() -> list[str]:
        return [e["handled"] for e in journal.read(handled_log) if "handled" in e]

    def shown() -> dict[str, str | None]:
        rows = json.loads(ok("checkpoints", "--config", str(folder), "show", "--json"))[name]
        return {r["shard_id"]: r["sequence_number"] for r in rows}

    rewind = ("checkpoints", "--config", str(folder), "rewind", "--stream", name, "--trim-horizon")
    with Daemon([cfg], env=env) as d:
        d.wait_ready()
        wait_for(lambda: len(handled()) == 8, 30, message="records handled")
        wait_for(lambda: {k: v for k, v in shown().items() if v} == last, 30, message="checkpoints")
        (status,) = json.loads(ok("status", "--config", str(folder), "--json"))["streams"]
        assert status["lease_store"] == f"the DynamoDB table {name}-leases" and not status["errors"]
        for s in status["shards"]:
            assert (s["lease_owner"], s["lease_state"]) == ("ops-h1", "held"), s
            assert s["sequence_number"] == last.get(s["shard_id"])
        refused = poller(*rewind)
        assert refused.returncode == 1 and "worker 'ops-h1' holds the leases of" in refused.stderr
    assert poller(*rewind, env=recording(calls_log)).returncode == 0  # released on SIGTERM
    assert shown() == {"#start": "1970-01-01T00:00:00+00:00"}

    with Daemon([cfg], env=env) as d:
        d.wait_ready()
        wait_for(lambda: len(handled()) == 16, 30, message="records handled again")
    assert sorted(handled()) == sorted([r["id"] for r in records] * 2)

    # One shard back to its oldest record: written onto its lease item.
    shard = sorted(last)[0]
    (change,) = json.loads(ok(*rewind, "--shard", shard, "--json"))
    assert (
        change["shard_id"] == shard and change["was"] == last[shard] and change["now"].startswith("before ")
    )
    rows = json.loads(ok("checkpoints", "--config", str(folder), "show", "--json"))[name]
    row = next(r for r in rows if r["shard_id"] == shard)
    assert (row["sequence_number"], row["sub_sequence"]) == (change["now"].removeprefix("before "), -1)

    observed = _observed(calls_log)
    assert {"dynamodb:CreateTable", "dynamodb:Query", "dynamodb:UpdateItem", "dynamodb:PutItem"} <= observed
    assert observed <= actions(policy(load_path(folder, env={})))


# --------------------------------------------------------------------------- iam-policy


def _observed(log: Path) -> set[str]:
    return {iam_action(service, operation) for service, operation in calls(log)}


def test_iam_policy_names_every_action_the_daemon_calls(
    moto: MotoServer, pg_dsn: str, tmp_path: Path
) -> None:
    """Each source's daemon is run with its AWS calls logged at its clients; the
    policy of each example config holds every action its kind of source called."""
    observed: dict[str, set[str]] = {}

    # Kinesis.
    kinesis, stream = new_kinesis(moto, 1)
    make_table("postgres", pg_dsn, "iam_k")
    put(kinesis, stream, [{"id": "a", "n": 1}])
    cfg_k = kinesis_stream("iam_k", "postgres", pg_dsn, stream, moto.url)
    log = tmp_path / "kinesis.log"
    with Daemon([cfg_k], env=recording(log)) as d:
        d.wait_ready()
        wait_for(
            lambda: count("postgres", pg_dsn, "SELECT count(*) FROM iam_k") == 1, 30, message="kinesis row"
        )
    observed["kinesis"] = _observed(log)

    # DynamoDB Streams.
    ddb = client("dynamodb", moto.url)
    table = new_dynamodb_table(ddb)
    ddb.put_item(TableName=table, Item={"id": {"S": "a"}, "n": {"N": "1"}})
    make_table("postgres", pg_dsn, "iam_d")
    cfg_d = dynamodb_stream("iam_d", table, moto, pg_dsn)
    log = tmp_path / "dynamodb.log"
    with Daemon([cfg_d], env=recording(log)) as d:
        d.wait_ready()
        wait_for(lambda: count("postgres", pg_dsn, "SELECT count(*) FROM iam_d") == 1, 30, message="ddb row")
    observed["dynamodb"] = _observed(log)

    # SQS, with a record that fails into an SQS failure queue (and is released once first).
    make_table("postgres", pg_dsn, "iam_s", check=True)
    cfg_s, queue, failed_queue = sqs_to_failure_queue(moto, pg_dsn, "iam_s")
    sqs = client("sqs", moto.url)
    send_all(sqs, queue, [json.dumps({"id": "a", "n": 1}), json.dumps({"id": "b", "n": -1})])
    log = tmp_path / "sqs.log"
    with Daemon([cfg_s], env=recording(log)) as d:
        d.wait_ready()
        wait_for(lambda: queue_depth(sqs, failed_queue) == 1, 40, message="failure message")
    observed["sqs"] = _observed(log)

    assert {"kinesis:GetRecords", "kinesis:GetShardIterator"} <= observed["kinesis"]
    assert {"dynamodb:GetRecords", "dynamodb:DescribeStream"} <= observed["dynamodb"]
    assert {"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:SendMessage"} <= observed["sqs"]

    # The policy of each example config holds what its kind of source was seen calling
    # (the SQS run also sent to a failure queue, which only a stream with one does).
    examples = load_path(ROOT / "config", env={})
    assert {c.source.type for c in examples} == {"kinesis", "dynamodb", "sqs"}
    for cfg in examples:
        seen = observed[cfg.source.type]
        if cfg.on_failure is None or cfg.on_failure.type != "sqs":
            seen = {a for a in seen if a not in _SENDING}
        missing = seen - actions(policy([cfg]))
        assert not missing, f"{cfg.name}: the policy lacks {sorted(missing)}"
    # And the policies of the streams that ran hold every action they called.
    for source, cfg_dict in (("kinesis", cfg_k), ("dynamodb", cfg_d), ("sqs", cfg_s)):
        (cfg,) = load_path(config_dir(cfg_dict), env={})
        assert observed[source] <= actions(policy([cfg])), source


_SENDING = {"sqs:SendMessage"}
