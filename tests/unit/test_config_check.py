"""`poller check` on malformed stream files: exit 2, naming the file, the field and the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from poller.cli import main
from poller.config import load_path

VALID = """
name: orders
source: {type: sqs, queue_url: "https://sqs.us-east-1.amazonaws.com/1/orders"}
sink: {type: postgres, dsn: "postgresql://u@h/db", table: orders, key: [order_id],
       columns: {order_id: data.order_id, amount: data.amount}}
"""

CASES = [
    ("unknown top-level field", VALID + "batchsize: 10\n", "batchsize: unknown field"),
    ("typo in a nested field", VALID.replace("queue_url", "queue_ur1"), "source.queue_ur1: unknown field"),
    ("missing name", VALID.replace("name: orders\n", ""), "name: field required"),
    ("unknown source type", VALID.replace("type: sqs", "type: kafka"), "source: type 'kafka' is not one of"),
    ("missing source type", VALID.replace("type: sqs, ", ""), "source: field `type` is required"),
    (
        "batch size out of bounds",
        VALID + "batch: {size: 0}\n",
        "batch.size: Input should be greater than or equal to 1",
    ),
    (
        "parallelization factor too big",
        VALID.replace(
            'source: {type: sqs, queue_url: "https://sqs.us-east-1.amazonaws.com/1/orders"}',
            "source: {type: kinesis, stream: orders, parallelization_factor: 11}",
        ),
        "source.parallelization_factor: Input should be less than or equal to 10",
    ),
    (
        "AT_TIMESTAMP without a timestamp",
        VALID.replace(
            'source: {type: sqs, queue_url: "https://sqs.us-east-1.amazonaws.com/1/orders"}',
            "source: {type: kinesis, stream: orders, starting_position: AT_TIMESTAMP}",
        ),
        "source: starting_position AT_TIMESTAMP needs starting_timestamp",
    ),
    (
        "bad starting position",
        VALID.replace(
            'source: {type: sqs, queue_url: "https://sqs.us-east-1.amazonaws.com/1/orders"}',
            "source: {type: kinesis, stream: orders, starting_position: OLDEST}",
        ),
        "source.starting_position: expected 'TRIM_HORIZON', 'LATEST' or 'AT_TIMESTAMP', got 'OLDEST'",
    ),
    ("key not among columns", VALID.replace("key: [order_id]", "key: [id]"), "key column(s) ['id']"),
    ("columns without key", VALID.replace("key: [order_id],", ""), "`key` is required when `columns`"),
    (
        "invalid JMESPath",
        VALID.replace("amount: data.amount", "amount: 'data.[amount'"),
        "sink.columns: column 'amount': invalid JMESPath",
    ),
    ("unknown decoder", VALID + "decode: xml\n", "decode"),
    (
        "invalid filter pattern",
        VALID + "filters: [{body: {status: paid}}]\n",
        "filter pattern 0",
    ),
    (
        "missing environment variable",
        VALID.replace('"postgresql://u@h/db"', '"${POLLER_TEST_UNSET_DSN}"'),
        "sink.dsn: environment variable POLLER_TEST_UNSET_DSN is not set",
    ),
    ("invalid YAML", "name: [orders\n", "invalid YAML"),
    ("not a mapping", "- just\n- a list\n", "expected a mapping"),
    (
        "dynamodb with both table and stream_arn",
        VALID.replace(
            'source: {type: sqs, queue_url: "https://sqs.us-east-1.amazonaws.com/1/orders"}',
            "source: {type: dynamodb, table: users, stream_arn: arn:aws:dynamodb:x}",
        ),
        "give exactly one of `table` or `stream_arn`",
    ),
    (
        "endpoint_url without scheme",
        VALID.replace('queue_url: "https', 'endpoint_url: "vpce.local", queue_url: "https'),
        "source.endpoint_url: must start with http:// or https://",
    ),
    (
        "max_attempts zero",
        VALID + "retry: {max_attempts: 0}\n",
        "retry.max_attempts: Input should be greater than or equal to 1",
    ),
]


@pytest.mark.parametrize(("case", "text", "expected"), CASES, ids=[c[0] for c in CASES])
def test_check_names_file_field_and_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, text: str, expected: str
) -> None:
    f = tmp_path / "orders.yaml"
    f.write_text(text)
    assert main(["check", "--config", str(f)]) == 2
    err = capsys.readouterr().err
    assert str(f) in err, err
    assert expected in err, f"{case}: {err}"


def test_valid_file_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "orders.yaml"
    f.write_text(VALID)
    assert main(["check", "--config", str(f)]) == 0
    assert "ok: orders" in capsys.readouterr().out


def test_folder_reports_every_file_and_duplicate_names(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(VALID)
    (tmp_path / "b.yaml").write_text(VALID)
    (tmp_path / "c.yml").write_text(VALID + "oops: 1\n")
    with pytest.raises(Exception) as e:
        load_path(tmp_path)
    text = str(e.value)
    assert "c.yml: oops: unknown field" in text
    assert "stream name 'orders' is used by 2 files" in text


def test_env_interpolation_with_default(tmp_path: Path) -> None:
    f = tmp_path / "s.yaml"
    f.write_text(VALID.replace('"postgresql://u@h/db"', '"${POLLER_DSN_X:-postgresql://d@h/x}"'))
    (cfg,) = load_path(f, env={})
    assert cfg.sink.dsn == "postgresql://d@h/x"  # type: ignore[union-attr]
    (cfg,) = load_path(f, env={"POLLER_DSN_X": "postgresql://e@h/y"})
    assert cfg.sink.dsn == "postgresql://e@h/y"  # type: ignore[union-attr]


def test_example_configs_are_valid() -> None:
    folder = Path(__file__).resolve().parents[2] / "config"
    streams = load_path(folder, env={})
    assert {s.source.type for s in streams} >= {"sqs", "kinesis", "dynamodb"}


def test_schema_command_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["title"] == "StreamConfig"
    assert "source" in schema["properties"]
