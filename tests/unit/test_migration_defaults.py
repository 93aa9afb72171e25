"""What Lambda did not ask for, `poller check` does not ask for either: no
`on_failure` for a handler or lambda sink on a stream, a single column as
`sink.key`; and a DSN of another database than the sink's is named as such.
(That the failures then land in the checkpoint store is shown end to end in
tests/integration/test_lambda_migration.py.)"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from poller.cli import main
from poller.config import json_schema, load_path


def check(tmp_path: Path, text: str) -> tuple[int, str]:
    path = tmp_path / "stream.yaml"
    path.write_text(text)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(["check", "--config", str(path)])
    return code, out.getvalue()


@pytest.mark.parametrize(
    "sink",
    [
        "{type: handler, handler: 'app.consumer:lambda_handler'}",
        "{type: lambda, function: orders-consumer}",
    ],
)
@pytest.mark.parametrize("source", ["{type: kinesis, stream: orders}", "{type: dynamodb, table: users}"])
def test_user_code_on_a_stream_needs_no_on_failure(tmp_path: Path, source: str, sink: str) -> None:
    code, out = check(tmp_path, f"name: orders\nsource: {source}\nsink: {sink}\n")
    assert code == 0, out


def test_a_table_destination_with_user_code_is_accepted(tmp_path: Path) -> None:
    text = "name: o\nsource: {type: kinesis, stream: o}\non_failure: {type: table, table: failed}\n"
    code, out = check(tmp_path, text + "sink: {type: lambda, function: f}\n")
    assert code == 0, out


@pytest.mark.parametrize("key", ["order_id", "[order_id]"])
def test_key_is_one_column_or_a_list(tmp_path: Path, key: str) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(
        "name: o\nsource: {type: sqs, queue_url: 'https://sqs.us-east-1.amazonaws.com/1/o'}\n"
        f"sink: {{type: sqlite, dsn: x.db, table: t, key: {key}, columns: {{order_id: data.id}}}}\n"
    )
    (stream,) = load_path(path, env={})
    assert stream.sink.key == ["order_id"]  # type: ignore[union-attr]


def test_the_schema_says_key_may_be_a_string() -> None:
    sinks = [d for d in json_schema()["$defs"].values() if "key" in d.get("properties", {})]
    assert len(sinks) == 3  # postgres, mysql, sqlite
    for sink in sinks:
        assert {"type": "string"} in sink["properties"]["key"]["anyOf"]


@pytest.mark.parametrize(
    ("sink", "dsn", "expected"),
    [
        (
            "mysql",
            "postgresql://u@h/db",
            "a PostgreSQL DSN on a mysql sink (for PostgreSQL, set `type: postgres`)",
        ),
        ("postgres", "mariadb://u@h/db", "a MySQL DSN on a postgres sink (for MySQL, set `type: mysql`)"),
        ("sqlite", "postgres://u@h/db", "a PostgreSQL DSN on a sqlite sink"),
        ("postgres", "sqlite:///x.db", "a SQLite DSN on a postgres sink (for SQLite, set `type: sqlite`)"),
        ("mysql", "file:x.db", "a SQLite DSN on a mysql sink"),
    ],
)
def test_a_dsn_for_another_database_names_both(tmp_path: Path, sink: str, dsn: str, expected: str) -> None:
    text = (
        "name: o\nsource: {type: sqs, queue_url: 'https://sqs.us-east-1.amazonaws.com/1/o'}\n"
        f"sink: {{type: {sink}, dsn: '{dsn}', table: t}}\n"
    )
    code, out = check(tmp_path, text)
    assert code == 2
    assert "sink.dsn: " in out and expected in out, out


def test_a_dsn_the_sink_cannot_use_for_other_reasons_says_only_that(tmp_path: Path) -> None:
    text = (
        "name: o\nsource: {type: sqs, queue_url: 'https://sqs.us-east-1.amazonaws.com/1/o'}\n"
        "sink: {type: mysql, dsn: 'mysql://u@h:port/db', table: t}\n"
    )
    code, out = check(tmp_path, text)
    assert code == 2 and "the port after the host" in out and "DSN on a" not in out
