"""The failure file (`on_failure: {type: file}`) never loses a record, and a
record replayed from it is replayed once, always.

The file is written by the destination itself (`FileDest`, as the daemon's
failure policy calls it) and read by the real `poller failures list | replay`,
as an operator runs them, on an SQS stream into a SQLite file (or through a
handler keeping its bookkeeping in one).
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from poller.config import load_path
from poller.destinations import FileDest
from poller.records import Failure
from poller.sinks.factory import build_sink, checkpoint_store, failures_table_of
from poller.sources.sqs import to_record
from tests.handlers import journal
from tests.support.daemon import wait_for

pytestmark = pytest.mark.integration

NAME = "ff_orders"
ROOT = Path(__file__).resolve().parents[2]


def stream_folder(tmp_path: Path, failure_file: Path, sink: dict[str, Any] | None = None) -> Path:
    """An SQS stream into SQLite (append mode, or `sink`) whose failures go to `failure_file`."""
    cfg: dict[str, Any] = {
        "name": NAME,
        "source": {
            "type": "sqs",
            "queue_url": "http://127.0.0.1:9/000000000000/ff-orders",  # never read by these commands
            "region": "us-east-1",
            "idempotency_retention_seconds": 60,
        },
        "on_failure": {"type": "file", "path": str(failure_file)},
        "sink": sink or {"type": "sqlite", "dsn": str(tmp_path / "rows.sqlite"), "table": NAME},
    }
    folder = tmp_path / "streams"
    folder.mkdir()
    (folder / f"{NAME}.yaml").write_text(yaml.safe_dump(cfg))
    return folder


def failure(message_id: str, body: str) -> Failure:
    record = to_record({"MessageId": message_id, "Body": body}, NAME, "", "us-east-1")
    now = time.time()
    return Failure(record, "mapping_error", "MappingError", "bad value", 3, now, now)


def send(path: Path, *failures: Failure) -> None:
    """Through the file destination, as the failure policy sends them."""
    asyncio.run(FileDest(str(path)).send(list(failures)))


def poller(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "poller", *args], capture_output=True, text=True, timeout=60, cwd=ROOT
    )


def listed(folder: Path) -> subprocess.CompletedProcess[str]:
    return poller("failures", "--config", str(folder), "list", "--stream", NAME, "--json")


def replayed(folder: Path) -> dict[str, Any]:
    done = poller("failures", "--config", str(folder), "replay", "--stream", NAME, "--json")
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def replayed_through(folder: Path, env: dict[str, str]) -> dict[str, Any]:
    command = [
        sys.executable,
        "-m",
        "poller",
        "failures",
        "--config",
        str(folder),
        "replay",
        "--stream",
        NAME,
    ]
    done = subprocess.run([*command, "--json"], capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def rows(tmp_path: Path) -> int:
    with sqlite3.connect(tmp_path / "rows.sqlite") as db:
        return int(db.execute(f"SELECT count(*) FROM {NAME}").fetchone()[0])


def test_a_torn_last_line_stays_its_own_line_and_is_reported_by_its_number(tmp_path: Path) -> None:
    path = tmp_path / "failures.jsonl"
    folder = stream_folder(tmp_path, path)
    send(path, failure("m-1", '{"id": "first"}'))
    with path.open("ab") as f:  # a crash, or a full disk, in the middle of the next record
        f.write(b'{"stream": "ff_orders", "payload": "{\\"id\\": \\"to')
    send(path, failure("m-3", '{"id": "after"}'))

    done = listed(folder)
    assert done.returncode == 3, done.stderr  # listed, and a script can tell a line is unreadable
    items = json.loads(done.stdout)
    assert [(i["id"], json.loads(i["payload"])) for i in items] == [
        ("1", {"id": "first"}),
        ("3", {"id": "after"}),
    ]
    (report,) = [line for line in done.stderr.splitlines() if "unreadable" in line]
    assert f"{path}:2: not JSON" in report and '"stream": "ff_orders"' in report

    text = poller("failures", "--config", str(folder), "list", "--stream", NAME)
    assert text.returncode == 3 and "1 unreadable line(s)" in text.stdout and f"{path}:2:" in text.stderr

    again = poller("failures", "--config", str(folder), "replay", "--stream", NAME, "--json")
    assert again.returncode == 3, again.stderr
    report_json = json.loads(again.stdout)
    assert report_json["replayed"] == ["1", "3"] and [u["line"] for u in report_json["unreadable"]] == [2]
    assert rows(tmp_path) == 2


def test_a_write_the_disk_refuses_leaves_the_file_as_it_was(tmp_path: Path) -> None:
    """The file-size limit (RLIMIT_FSIZE) refuses a write part of the way through,
    as a full disk does: the destination says so, and no torn line is left."""
    path = tmp_path / "failures.jsonl"
    folder = stream_folder(tmp_path, path)
    send(path, failure("m-1", '{"id": "first"}'))
    before = path.read_bytes()
    script = textwrap.dedent(
        f"""
        import asyncio, resource, signal, time
        from poller.destinations import FileDest
        from poller.records import Failure, TransientError
        from poller.sources.sqs import to_record
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, ({len(before) + 100}, resource.RLIM_INFINITY))
        record = to_record({{"MessageId": "m-big", "Body": "x" * 10_000}}, {NAME!r}, "", "us-east-1")
        try:
            asyncio.run(FileDest({str(path)!r}).send([Failure(record, "r", "E", "m", 1, 0.0, 0.0)]))
        except TransientError as e:
            print("refused:", e)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT, check=False
    )
    assert done.stdout.startswith("refused: cannot write failure file"), done.stdout + done.stderr
    assert path.read_bytes() == before

    send(path, failure("m-2", '{"id": "second"}'))
    done = listed(folder)
    assert done.returncode == 0, done.stderr
    assert [json.loads(i["payload"]) for i in json.loads(done.stdout)] == [{"id": "first"}, {"id": "second"}]


def test_a_replayed_line_is_not_replayed_again_after_the_processed_ids_are_purged(tmp_path: Path) -> None:
    path = tmp_path / "failures.jsonl"
    folder = stream_folder(tmp_path, path)
    send(path, failure("m-1", '{"id": "once"}'))
    assert replayed(folder)["replayed"] == ["1"]
    assert rows(tmp_path) == 1

    # Two days on (retention: 60 s), an SQS message id and the replay's mark are old.
    with sqlite3.connect(tmp_path / "rows.sqlite") as db:
        db.execute(
            "INSERT INTO poller_processed (stream, message_id) VALUES (?, 'an-sqs-message-id')", (NAME,)
        )
        db.execute("UPDATE poller_processed SET processed_at = datetime('now', '-2 days')")
    (cfg,) = load_path(str(folder))
    purge_as_the_daemon_does(cfg)

    again = replayed(folder)
    assert again["replayed"] == [] and again["already_replayed"] == []
    assert rows(tmp_path) == 1
    done = listed(folder)
    assert done.returncode == 0 and json.loads(done.stdout) == []
    with sqlite3.connect(tmp_path / "rows.sqlite") as db:  # the message id was purged, the mark kept
        kept = [r[0] for r in db.execute("SELECT message_id FROM poller_processed")]
    assert len(kept) == 1 and kept[0].startswith("replay:file:")


def purge_as_the_daemon_does(cfg: Any) -> int:
    async def purge() -> int:
        sink = build_sink(cfg, failures_table_of(cfg, default=False))
        await sink.open()
        try:
            return await sink.purge_processed(cfg.name, cfg.source.idempotency_retention_seconds)
        finally:
            await sink.close()

    return asyncio.run(purge())


AGO = {
    "postgres": "now() - interval '{days} days'",
    "mysql": "CURRENT_TIMESTAMP(6) - INTERVAL {days} DAY",
    "sqlite": "datetime('now', '-{days} days')",
}


@pytest.mark.parametrize("kind", ["postgres", "mysql", "sqlite"])
def test_the_purge_of_processed_ids_keeps_the_replay_marks(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """On every store: message ids go after the retention; a file line's mark never
    (the line is there for ever); a queue message's once SQS can no longer bring it back."""
    dsn = {
        "postgres": lambda: str(request.getfixturevalue("pg_dsn")),
        "mysql": lambda: str(request.getfixturevalue("mysql_dsn")),
        "sqlite": lambda: str(tmp_path / "bookkeeping.sqlite"),
    }[kind]()
    stream = f"ff_purge_{uuid.uuid4().hex[:8]}"
    age_in_days = {
        "a-message-id": 2,
        "replay:file:0123456789abcdef": 400,
        "replay:sqs:a-message-replayed-lately": 2,
        "replay:sqs:a-message-replayed-long-ago": 15,
        "a-fresh-message-id": 0,
    }

    async def purge() -> set[str]:
        sink = checkpoint_store(dsn)
        await sink.open()
        try:
            async with sink.transaction() as conn:
                await sink.insert_ids(conn, stream, list(age_in_days))
                for message_id, days in age_in_days.items():
                    if days:  # ids are ASCII names of this test: no quoting needed
                        ago = AGO[kind].format(days=days)
                        await conn.execute(
                            f"UPDATE poller_processed SET processed_at = {ago} "
                            f"WHERE stream = '{stream}' AND message_id = '{message_id}'"
                        )
            await sink.purge_processed(stream, 60)
            return await sink.processed_ids(stream, list(age_in_days))
        finally:
            await sink.close()

    assert asyncio.run(purge()) == {
        "replay:file:0123456789abcdef",
        "replay:sqs:a-message-replayed-lately",
        "a-fresh-message-id",
    }


def test_a_replay_through_a_handler_leaves_its_sqlite_store_writable_while_the_handler_runs(
    tmp_path: Path,
) -> None:
    """A daemon on the same SQLite file goes on committing while the replayed record is in
    the handler; a second replay started meanwhile waits, then delivers nothing."""
    store = tmp_path / "checkpoints.sqlite"
    path, log, gate = tmp_path / "failures.jsonl", tmp_path / "handled.jsonl", tmp_path / "gate"
    sink = {
        "type": "handler",
        "handler": "tests.handlers.gated:wait_at_the_gate",
        "code_path": str(ROOT),
        "checkpoint_dsn": str(store),
        "timeout_seconds": 300,
    }
    folder = stream_folder(tmp_path, path, sink)
    send(path, failure("m-1", '{"id": "r1"}'))
    env = {**os.environ, "HANDLER_LOG": str(log), "HANDLER_GATE": str(gate)}
    command = [
        sys.executable,
        "-m",
        "poller",
        "failures",
        "--config",
        str(folder),
        "replay",
        "--stream",
        NAME,
    ]
    command.append("--json")

    def spawn() -> subprocess.Popen[str]:
        return subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT
        )

    def started() -> int:
        return sum(1 for e in journal.read(log) if "started" in e)

    first = spawn()
    try:
        wait_for(lambda: started() == 1, 60, message="the handler started")
        second = spawn()
        try:
            # What the daemon does at each commit. The handler holds the record until the
            # gate opens, so a store still locked by the replay fails here after any wait:
            # the generous timeout only rides out the second replay's short transactions.
            with sqlite3.connect(store, timeout=30, isolation_level=None) as db:
                db.execute("BEGIN IMMEDIATE")
                db.execute(
                    "INSERT INTO poller_processed (stream, message_id) VALUES (?, 'daemon-write')", (NAME,)
                )
                db.execute("COMMIT")
            gate.touch()
            out, err = first.communicate(timeout=120)
            assert first.returncode == 0, err
            assert json.loads(out)["replayed"] == ["1"]
            out, err = second.communicate(timeout=120)
            assert second.returncode == 0, err
            assert json.loads(out)["replayed"] == []
        finally:
            second.kill()
            second.wait()
    finally:
        gate.touch()
        first.kill()
        first.wait()
    assert [e["handled"] for e in journal.read(log) if "handled" in e] == [["r1"]]
    assert replayed_through(folder, env)["replayed"] == []
