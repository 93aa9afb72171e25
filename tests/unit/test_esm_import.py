"""`poller import-esm` on event source mappings shaped as `aws lambda
get-event-source-mapping` and `list-event-source-mappings` print them
(tests/fixtures/esm): every file it writes passes the real `poller check`,
each setting lands where the mapping had it, and every field it cannot map is
named on stderr.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from poller import esm_import
from poller.cli import main
from poller.config import StreamConfig, load_path

ROOT = Path(__file__).resolve().parents[2]
ESM = ROOT / "tests" / "fixtures" / "esm"
SINGLE = ["kinesis", "kinesis-filters-destination", "kinesis-fan-out-window", "dynamodb", "sqs"]


def esm(name: str) -> dict[str, Any]:
    mapping: dict[str, Any] = json.loads((ESM / f"{name}.json").read_text())
    return mapping


def run(*argv: str, stdin: str | None = None) -> tuple[int, str, str]:
    """`poller import-esm ...` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        if stdin is not None:
            saved, sys.stdin = sys.stdin, io.StringIO(stdin)
        try:
            code = main(["import-esm", *argv])
        finally:
            if stdin is not None:
                sys.stdin = saved
    return code, out.getvalue(), err.getvalue()


def poller_check(folder: Path) -> subprocess.CompletedProcess[str]:
    """The real `poller check`, as a user runs it on the files written."""
    return subprocess.run(
        [sys.executable, "-m", "poller", "check", "--config", str(folder)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def imported(tmp_path: Path, name: str, *extra: str) -> tuple[StreamConfig, str, str]:
    """(the stream as `poller check` reads it, its YAML text, stderr) of one fixture."""
    folder = tmp_path / name
    code, _, err = run(str(ESM / f"{name}.json"), "--out", str(folder), *extra)
    assert code == 0, err
    (path,) = folder.iterdir()
    (stream,) = load_path(path)
    return stream, path.read_text(), err


# -- every example passes `poller check` --------------------------------------------------------


def test_every_example_mapping_becomes_files_poller_check_accepts(tmp_path: Path) -> None:
    single, listing, to_db = tmp_path / "single", tmp_path / "listing", tmp_path / "to_db"
    for name in SINGLE:
        code, _, err = run(str(ESM / f"{name}.json"), "--out", str(single))
        assert code == 0, err
    code, _, err = run(str(ESM / "list.json"), "--out", str(listing))
    assert code == 0, err
    dsn = "postgresql://app@db.internal:5432/app"
    code, _, err = run(str(ESM / "list.json"), "--out", str(to_db), "--dsn", dsn, "--table", "events")
    assert code == 0, err
    for folder, count in ((single, len(SINGLE)), (listing, 3), (to_db, 3)):
        assert len(list(folder.glob("*.yaml"))) == count
        checked = poller_check(folder)
        assert checked.returncode == 0, checked.stderr
        assert checked.stdout.count("ok: ") == count


# -- each setting where the mapping had it ------------------------------------------------------


def test_a_kinesis_mapping_with_lambda_defaults(tmp_path: Path) -> None:
    s, text, err = imported(tmp_path, "kinesis")
    assert s.name == "lambda-stream-ProcessKinesisRecords"
    assert s.source.model_dump(include={"type", "stream", "region", "starting_position"}) == {
        "type": "kinesis",
        "stream": "arn:aws:kinesis:us-east-1:123456789012:stream/lambda-stream",
        "region": "us-east-1",
        "starting_position": "LATEST",
    }
    assert (s.batch.size, s.batch.window_seconds) == (100, 0)
    assert s.filters == []
    assert (s.retry.max_attempts, s.retry.max_record_age_seconds, s.retry.bisect_on_error) == (3, None, False)
    assert "MaximumRetryAttempts -1" in text and "never retries for ever" in text  # said in a comment
    assert s.on_failure is None and "go to the table poller_failures in the checkpoint store" in text
    assert s.sink.model_dump(include={"type", "function", "region", "report_batch_item_failures"}) == {
        "type": "lambda",
        "function": "arn:aws:lambda:us-east-1:123456789012:function:ProcessKinesisRecords",
        "region": "us-east-1",
        "report_batch_item_failures": False,
    }
    assert "LastProcessingResult" in err and "the mapping's state" in err


def test_filters_destination_and_retries(tmp_path: Path) -> None:
    s, text, err = imported(tmp_path, "kinesis-filters-destination")
    assert s.source.starting_position == "AT_TIMESTAMP"  # type: ignore[union-attr]
    assert s.source.starting_timestamp == datetime(2024, 5, 1, tzinfo=UTC)  # type: ignore[union-attr]
    assert s.source.parallelization_factor == 2  # type: ignore[union-attr]
    assert (s.batch.size, s.batch.window_seconds) == (500, 5)
    patterns = [
        json.loads(f["Pattern"]) for f in esm("kinesis-filters-destination")["FilterCriteria"]["Filters"]
    ]
    assert s.filters == patterns
    assert '[">", -4e-6, "<=", 1E3]' in text  # the numbers as the mapping wrote them
    assert (s.retry.max_attempts, s.retry.max_record_age_seconds, s.retry.bisect_on_error) == (3, 3600, True)
    assert s.on_failure is not None and s.on_failure.model_dump(include={"type", "queue_url", "region"}) == {
        "type": "sqs",
        "queue_url": "https://sqs.us-east-2.amazonaws.com/123456789012/orders-failed",
        "region": "us-east-2",
    }
    assert s.sink.report_batch_item_failures is True  # type: ignore[union-attr]
    assert "MetricsConfig: metrics are always on" in err


def test_fan_out_and_an_s3_destination_are_reported_and_the_window_mapped(tmp_path: Path) -> None:
    s, _, err = imported(tmp_path, "kinesis-fan-out-window")
    assert s.source.stream == "arn:aws:kinesis:eu-west-1:123456789012:stream/clicks"  # type: ignore[union-attr]
    assert "EventSourceArn: an enhanced fan-out consumer (clicks-efo)" in err
    assert s.retry.max_attempts == 10_000 and "MaximumRetryAttempts: 10000 retries" in err
    assert s.retry.max_record_age_seconds == 604_800
    assert s.on_failure is None
    assert "DestinationConfig.OnFailure: arn:aws:s3:::clicks-failed-batches: no S3 destination" in err
    assert s.sink.tumbling_window_seconds == 300  # type: ignore[union-attr]
    assert "TumblingWindowInSeconds" not in err  # mapped
    assert s.sink.function.endswith("function:clicks-aggregator:live")  # type: ignore[union-attr]


def test_a_dynamodb_mapping(tmp_path: Path) -> None:
    s, _, err = imported(tmp_path, "dynamodb")
    assert s.source.model_dump(include={"type", "stream_arn", "starting_position"}) == {
        "type": "dynamodb",
        "stream_arn": esm("dynamodb")["EventSourceArn"],
        "starting_position": "TRIM_HORIZON",
    }
    assert s.filters == [
        {"eventName": ["INSERT", "MODIFY"], "dynamodb": {"NewImage": {"status": {"S": ["active"]}}}}
    ]
    assert (s.retry.max_attempts, s.retry.bisect_on_error) == (1, True)  # MaximumRetryAttempts 0
    assert "DestinationConfig.OnFailure: arn:aws:sns:us-east-1:123456789012:bark-failures: no SNS" in err


def test_an_sqs_mapping(tmp_path: Path) -> None:
    s, text, _ = imported(tmp_path, "sqs")
    assert s.source.model_dump(include={"type", "queue_url", "region", "max_concurrency"}) == {
        "type": "sqs",
        "queue_url": "https://sqs.us-east-2.amazonaws.com/123456789012/my-queue",
        "region": "us-east-2",
        "max_concurrency": 5,
    }
    assert (s.batch.size, s.batch.window_seconds) == (10, 0)
    assert s.filters == [{"body": {"RequestCode": ["BBBB"]}}]
    assert s.on_failure is None and "redrive policy" in text
    assert "retry:" not in text  # an SQS mapping has no retry settings: the queue decides
    assert s.sink.report_batch_item_failures is True  # type: ignore[union-attr]


def test_a_listing_of_several_becomes_several_files(tmp_path: Path) -> None:
    code, out, err = run(str(ESM / "list.json"), "--out", str(tmp_path))
    assert code == 0, err
    assert out == ""
    names = sorted(p.stem for p in tmp_path.glob("*.yaml"))
    assert names == [
        "BarkTable-publishNewBark",
        "lambda-stream-ProcessKinesisRecords",
        "my-queue-my-function",
    ]
    assert err.count("wrote ") == 3
    assert "my-queue-my-function: State: the mapping is disabled" in err


def test_dsn_and_table_make_a_database_sink(tmp_path: Path) -> None:
    s, text, err = imported(tmp_path, "sqs", "--dsn", "mysql://app@db:3306/app", "--table", "requests")
    assert s.sink.model_dump(include={"type", "dsn", "table", "columns"}) == {
        "type": "mysql",
        "dsn": "mysql://app@db:3306/app",
        "table": "requests",
        "columns": None,
    }
    assert "FunctionArn: my-function: not invoked; rows go to the mysql sink" in err
    assert "FunctionResponseTypes: no function answers a database sink" in err
    assert "append mode" in text


def test_a_dsn_from_the_environment_stays_a_reference(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORDERS_DSN", "postgresql://app:secret@db/app")
    s, text, _ = imported(tmp_path, "kinesis", "--dsn", "${ORDERS_DSN}", "--table", "orders")
    assert s.sink.type == "postgres"
    assert "dsn: ${ORDERS_DSN}" in text and "secret" not in text
    monkeypatch.delenv("ORDERS_DSN")
    code, _, err = run(str(ESM / "kinesis.json"), "--dsn", "${ORDERS_DSN}", "--table", "orders")
    assert code == 2 and "ORDERS_DSN is not set" in err


# -- nothing dropped silently --------------------------------------------------------------------

# What each example's file says in a setting of its own; every other field must be on stderr.
MAPPED = {
    "StartingPosition",
    "StartingPositionTimestamp",
    "BatchSize",
    "MaximumBatchingWindowInSeconds",
    "ParallelizationFactor",
    "EventSourceArn",
    "FilterCriteria",
    "FunctionArn",
    "MaximumRecordAgeInSeconds",
    "BisectBatchOnFunctionError",
    "MaximumRetryAttempts",
    "FunctionResponseTypes",
}


@pytest.mark.parametrize("name", SINGLE)
def test_every_field_not_mapped_is_named_on_stderr(tmp_path: Path, name: str) -> None:
    mapping = esm(name)
    _, _, err = imported(tmp_path, name)
    mapped = MAPPED | {"ScalingConfig"} if "sqs" in name else MAPPED
    destination = mapping.get("DestinationConfig", {}).get("OnFailure", {}).get("Destination", "")
    if ":sqs:" in destination or not destination:
        mapped = mapped | {"DestinationConfig"}  # an SQS queue, or none at all
    if "sqs" not in name:
        mapped = mapped | {"TumblingWindowInSeconds"}  # the lambda sink's window (0: none)
    for field in set(mapping) - mapped:
        assert field in err, field


def test_an_unknown_field_and_a_disabled_mapping_are_reported(tmp_path: Path) -> None:
    mapping = {**esm("kinesis"), "SomethingNew": {"Enabled": True}, "Enabled": False, "ResponseMetadata": {}}
    path = tmp_path / "esm.json"
    path.write_text(json.dumps(mapping))
    code, out, err = run(str(path))
    assert code == 0, err
    assert "SomethingNew: not a setting the poller has; ignored" in err
    assert "State: the mapping is disabled" in err
    assert "ResponseMetadata" not in err  # boto3's, not the mapping's
    assert out.startswith("# Imported by `poller import-esm`")


def test_a_source_the_poller_does_not_read_is_refused_by_name(tmp_path: Path) -> None:
    code, _, err = run(str(ESM / "msk.json"), "--out", str(tmp_path))
    assert code == 2
    assert "not imported: EventSourceArn: a kafka source (cluster)" in err
    assert not list(tmp_path.iterdir())


# -- the command --------------------------------------------------------------------------------


def test_one_mapping_from_stdin_to_stdout() -> None:
    code, out, err = run("-", stdin=(ESM / "sqs.json").read_text())
    assert code == 0, err
    assert "name: my-queue-my-function" in out


def test_a_stream_file_is_never_overwritten(tmp_path: Path) -> None:
    assert run(str(ESM / "sqs.json"), "--out", str(tmp_path))[0] == 0
    (path,) = tmp_path.iterdir()
    path.write_text("# edited by hand\n")
    code, _, err = run(str(ESM / "sqs.json"), "--out", str(tmp_path))
    assert code == 2 and "not written" in err
    assert path.read_text() == "# edited by hand\n"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--dsn", "postgresql://u@h/db"], "--dsn and --table go together"),
        (["--table", "t"], "--dsn and --table go together"),
        (["--dsn", "redis://h", "--table", "t"], "--dsn: not a database DSN"),
    ],
)
def test_dsn_and_table_mistakes(args: list[str], expected: str) -> None:
    code, _, err = run(str(ESM / "kinesis.json"), *args)
    assert code == 2 and expected in err


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"FilterCriteria": {"Filters": [{"Pattern": "{not json"}]}}, "Filters[0].Pattern: not JSON"),
        ({"FilterCriteria": {"Filters": [{"Pattern": '{"data": {"v": "x"}}'}]}}, "bare value"),
        ({"EventSourceArn": "orders"}, "EventSourceArn: 'orders' is not an ARN"),
        ({"FunctionArn": None}, "FunctionArn: None is not a Lambda function ARN"),
        ({"StartingPosition": "AT_TIMESTAMP"}, "StartingPositionTimestamp: None is not a timestamp"),
        ({"StartingPosition": "OLDEST"}, "StartingPosition: 'OLDEST' is not one of"),
        (
            {"BatchSize": "lots"},
            "would not pass `poller check`: lambda-stream-ProcessKinesisRecords.yaml: batch.size",
        ),
        ({"MaximumRetryAttempts": "2"}, "a field is not of the type AWS gives it (TypeError"),
        ({"DestinationConfig": {"OnFailure": "arn:aws:sqs:us-east-1:1:q"}}, "not of the type AWS gives it"),
    ],
)
def test_a_mapping_that_cannot_be_imported_says_why(
    tmp_path: Path, change: dict[str, Any], expected: str
) -> None:
    path = tmp_path / "esm.json"
    path.write_text(json.dumps({**esm("kinesis"), **change}))
    code, out, err = run(str(path))
    assert code == 2 and expected in err and out == ""


def test_patterns_keep_every_character_and_number(tmp_path: Path) -> None:
    pattern = {
        "data": {
            "name": ["caf\u00e9 \U0001f600", "tab\there", 'quote " and \\ backslash', "line\u2028sep"],
            "big": [12345678901234567890],
            "small": [{"numeric": [">", -1.5e-300]}],
            "flag": [True, None],
        }
    }
    mapping = {**esm("kinesis"), "FilterCriteria": {"Filters": [{"Pattern": json.dumps(pattern)}]}}
    path = tmp_path / "esm.json"
    path.write_text(json.dumps(mapping))
    code, _, err = run(str(path), "--out", str(tmp_path / "out"))
    assert code == 0, err
    (stream,) = load_path(tmp_path / "out", env={})
    assert stream.filters == [pattern]


def test_an_epoch_timestamp_and_unique_names_in_a_listing(tmp_path: Path) -> None:
    first = {**esm("kinesis-filters-destination"), "StartingPositionTimestamp": 1714521600}
    twin = {**first, "UUID": "f0e1d2c3-0000-4000-8000-000000000000"}
    long = {**esm("kinesis"), "FunctionArn": "arn:aws:lambda:us-east-1:123456789012:function:" + "f" * 64}
    path = tmp_path / "list.json"
    path.write_text(json.dumps({"EventSourceMappings": [first, twin, long]}))
    code, _, err = run(str(path), "--out", str(tmp_path / "out"))
    assert code == 0, err
    streams = load_path(tmp_path / "out", env={})
    names = sorted(s.name for s in streams)
    assert names[1:] == ["orders-orders-consumer", "orders-orders-consumer-f0e1d2c3"]
    assert len(names[0]) <= 64 and names[0].startswith("lambda-stream-fff")
    at = {s.source.starting_timestamp for s in streams if s.source.type == "kinesis"}  # type: ignore[union-attr]
    assert datetime(2024, 5, 1, tzinfo=UTC) in at


# -- nothing a field holds breaks out of the file ---------------------------------------------

LINE_BREAKS = ["\n", "\r", "\v", "\f", "\x85", "\u2028", "\u2029", "\x00", "\x1b"]


@pytest.mark.parametrize("brk", LINE_BREAKS, ids=[f"U+{ord(b):04X}" for b in LINE_BREAKS])
@pytest.mark.parametrize("dsn", [False, True], ids=["lambda", "dsn"])
@pytest.mark.parametrize("field", ["FunctionArn", "EventSourceMappingArn", "UUID"])
def test_a_line_break_in_a_field_adds_no_key_to_the_file(
    tmp_path: Path, field: str, brk: str, dsn: bool
) -> None:
    """`decode: none #` after the break would be a key of its own (and pass `poller check`)
    were the value written as it is; the file has the keys a clean mapping gives, and
    stderr (where `--dsn` names the function not invoked) no line the field made."""
    clean = esm("kinesis")
    if field == "UUID":
        del clean["EventSourceMappingArn"]  # the UUID names the mapping in the file's first comment
    mapping = clean | {field: f"{clean[field]}{brk}decode: none #"}
    (tmp_path / "esm.json").write_text(json.dumps(mapping))
    (tmp_path / "clean.json").write_text(json.dumps(clean))
    to_db = ["--dsn", "postgresql://app@db.internal:5432/app", "--table", "events"] if dsn else []

    code, _, err = run(str(tmp_path / "esm.json"), "--out", str(tmp_path / "imported"), *to_db)
    assert code == 0, err
    code, _, clean_err = run(str(tmp_path / "clean.json"), "--out", str(tmp_path / "clean"), *to_db)
    assert code == 0, clean_err
    assert len(err.splitlines()) == len(clean_err.splitlines())
    assert all(line.isprintable() for line in err.splitlines())
    (written,) = (tmp_path / "imported").iterdir()
    (expected,) = (tmp_path / "clean").iterdir()
    assert list(yaml.safe_load(written.read_text())) == list(yaml.safe_load(expected.read_text()))
    (stream,) = load_path(written)  # as `poller check` reads it
    assert stream.decoders == load_path(expected)[0].decoders  # the default, not a value from the field
    if brk == "\u2028" and not dsn:  # the real command too, once for each field
        checked = poller_check(tmp_path / "imported")
        assert checked.returncode == 0, checked.stderr


def test_a_field_that_would_make_the_yaml_unreadable_is_no_traceback(tmp_path: Path) -> None:
    """A break then a flow map then text: written as it is, the file would not parse."""
    mapping = esm("kinesis") | {"EventSourceMappingArn": "arn:x\u2028limits: {}"}
    (tmp_path / "esm.json").write_text(json.dumps(mapping))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "poller",
            "import-esm",
            str(tmp_path / "esm.json"),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    (written,) = (tmp_path / "out").iterdir()
    assert "limits" not in yaml.safe_load(written.read_text())


def test_unreadable_yaml_of_its_own_is_refused_in_one_line() -> None:
    """The last guard, should the writing ever go wrong: a message, not a parser traceback."""
    builder = esm_import._Builder(esm("kinesis"), None, None, {})
    with pytest.raises(esm_import.EsmError) as refused:
        builder._check("s", "name: s\nsource: {type: [\n")
    assert "not valid YAML" in str(refused.value) and "\n" not in str(refused.value)
