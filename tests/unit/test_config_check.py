"""`poller check` on malformed stream files: exit 2, naming the file, the field and the reason."""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


# --------------------------------------------------------------- files that are not stream files

BOMB = "\n".join(
    ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    + [f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi", strict=True)]
)


def check_output(tmp_path: Path, content: str | bytes, name: str = "orders.yaml") -> tuple[int, str]:
    """`poller check` on one file: its exit code and everything it printed."""
    f = tmp_path / name
    f.write_bytes(content.encode() if isinstance(content, str) else content)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(err):
        code = main(["check", "--config", str(f)])
    return code, err.getvalue()


@pytest.mark.parametrize(
    ("case", "content", "expected"),
    [
        ("invalid UTF-8", VALID.encode() + b"# caf\xe9\n", "line 6: not UTF-8 text (byte 0xe9)"),
        ("alias bomb", BOMB, "more than 100000 values once aliases are expanded"),
        ("recursive alias", "name: &n [*n]\n", "an alias refers to a node that contains it"),
        ("nesting", "name: " + "[" * 5000 + "]" * 5000 + "\n", "nested more than 64 levels deep"),
        ("huge integer", VALID + "batch: {size: " + "9" * 5000 + "}\n", "an integer of more than 100 digits"),
        (
            "float above 1e308",
            VALID + "batch: {window_seconds: 1.0e+400}\n",
            "batch.window_seconds: Input should be",
        ),
        (
            "infinite float",
            VALID + "retry: {backoff_max_seconds: .inf}\n",
            "retry.backoff_max_seconds: Input should be",
        ),
        (
            "numeric filter bound above 1e308",
            VALID + "filters: [{body: {n: [{numeric: ['>', 1.0e+309]}]}}]\n",
            "filters: filter pattern 0",
        ),
        ("larger than 1 MiB", VALID + "#" * (1 << 20) + "\n", "larger than 1024 KiB"),
        ("NUL character", VALID + "# \x00\n", "invalid YAML"),
    ],
    ids=lambda v: v if isinstance(v, str) and len(v) < 40 else "",
)
def test_a_file_that_cannot_be_a_stream_file_is_one_line_and_exit_2(
    tmp_path: Path, case: str, content: str | bytes, expected: str
) -> None:
    started = time.process_time()
    code, out = check_output(tmp_path, content)
    # A bomb is refused, not expanded: CPU seconds of this process, which other
    # processes on a shared machine do not stretch as they do the wall clock. 10 s
    # means expanded: refusing the deepest nesting costs ~2 s whatever its depth
    # (PyYAML's scanner, until composing it reaches the recursion limit).
    assert time.process_time() - started < 10, case
    assert code == 2, out
    lines = out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{tmp_path / 'orders.yaml'}: "), out
    assert expected in out, out
    assert "Traceback" not in out


# --------------------------------------------------------------- DSNs and identifiers


def with_sink(**sink: object) -> str:
    base: dict[str, object] = {"type": "postgres", "dsn": "postgresql://u@h/db", "table": "orders"}
    return "name: orders\nsource: {type: sqs, queue_url: 'https://sqs.us-east-1.amazonaws.com/1/q'}\n" + (
        f"sink: {json.dumps({**base, **sink})}\n"
    )


def handler_with(checkpoint_dsn: str) -> str:
    return (
        "name: orders\nsource: {type: sqs, queue_url: 'https://sqs.us-east-1.amazonaws.com/1/q'}\n"
        f"sink: {json.dumps({'type': 'handler', 'handler': 'm:f', 'checkpoint_dsn': checkpoint_dsn})}\n"
    )


@pytest.mark.parametrize(
    "checkpoint_dsn",
    ["postgresql+asyncpg://u@h/db", "mysql+aiomysql://u@h/db", "redis://h:6379/0", "", "http://h/x"],
)
def test_an_unknown_checkpoint_store_is_refused_by_name(tmp_path: Path, checkpoint_dsn: str) -> None:
    code, out = check_output(tmp_path, handler_with(checkpoint_dsn))
    assert code == 2
    assert "sink.checkpoint_dsn: " in out and "is not a checkpoint store" in out, out
    assert not list(tmp_path.glob("*:*")), "no SQLite file is named after the DSN"


@pytest.mark.parametrize(
    "checkpoint_dsn",
    [
        "checkpoints.sqlite",
        "/var/lib/poller/checkpoints.sqlite",
        "sqlite:///checkpoints.sqlite",
        "file:checkpoints.sqlite",
        ":memory:",
        "postgres://u@h/db",
        "postgresql://u:p@ss#1@h:5432/db",
        "mysql://root@h:3306/db",
        "mariadb://root@h/db",
    ],
)
def test_the_checkpoint_stores_poller_has_are_accepted(tmp_path: Path, checkpoint_dsn: str) -> None:
    code, out = check_output(tmp_path, handler_with(checkpoint_dsn))
    assert code == 0, out


@pytest.mark.parametrize(
    ("sink", "expected"),
    [
        ({"dsn": "mysql://u@h/db"}, "sink.dsn: scheme 'mysql' is not one of postgres://, postgresql://"),
        ({"dsn": "postgresql+asyncpg://u@h/db"}, "sink.dsn: scheme 'postgresql+asyncpg' is not one of"),
        ({"dsn": "host=db user=app"}, "sink.dsn: expected a URL: scheme://user@host:port/database"),
        ({"type": "mysql", "dsn": "mysql://u:pw@h:port/db"}, "sink.dsn: the port after the host must be"),
        ({"type": "sqlite", "dsn": "postgres://u@h/db"}, "sink.dsn: not a SQLite database"),
        ({"table": "a.b.c"}, "sink.table: table 'a.b.c': a table is `name` or `schema.name`"),
        ({"table": "public."}, "sink.table: table 'public.': an empty name before or after the `.`"),
        ({"table": "x" * 64}, "sink.table: table 'xxxx"),
        (
            {"key": ["id"], "columns": {"id": "data.id", "a\u0000b": "data.x"}},
            "sink.columns: column 'a\\x00b'",
        ),
        (
            {"type": "mysql", "dsn": "mysql://u@h/db", "key": ["k" * 65], "columns": {"k" * 65: "data.k"}},
            "sink.key",
        ),
    ],
    ids=lambda v: str(v)[:40],
)
def test_dsns_and_names_the_sink_cannot_use_are_refused_by_field(
    tmp_path: Path, sink: dict[str, object], expected: str
) -> None:
    code, out = check_output(tmp_path, with_sink(**sink))
    assert code == 2
    assert expected in out, out


@pytest.mark.parametrize("kind", ["postgres", "mysql", "sqlite"])
def test_dots_and_percent_signs_in_names_are_accepted(tmp_path: Path, kind: str) -> None:
    dsn = {"postgres": "postgresql://u@h/db", "mysql": "mysql://u@h/db", "sqlite": "sqlite:///x.db"}[kind]
    table = "main.orders%s" if kind == "sqlite" else "orders%s"
    code, out = check_output(
        tmp_path,
        with_sink(type=kind, dsn=dsn, table=table, key=["id"], columns={"id": "data.id", "a.b": "data.x"}),
    )
    assert code == 0, out


# Any printable character a user may put in a password, the awkward ones often.
PASSWORDS = st.one_of(
    st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), min_size=0, max_size=20),
    st.text(st.sampled_from("#/?@ :%&=;'\"\\"), min_size=1, max_size=12),
)
MARK = "Kq7Vw3"
SCHEMES = [
    "postgres",
    "postgresql",
    "mysql",
    "mariadb",
    "postgresql+asyncpg",
    "mysql+aiomysql",
    "redis",
    "sqlite",
]


def broken_files(dsn: str) -> list[str]:
    """Stream files whose errors quote the DSN, or would if they were not redacted."""
    queue = "source: {type: sqs, queue_url: 'https://sqs.us-east-1.amazonaws.com/1/q'}\n"
    return [
        with_sink(dsn=dsn),
        with_sink(type="mysql", dsn=dsn),
        with_sink(type="sqlite", dsn=dsn),
        with_sink(type=dsn),
        with_sink(on_delete=dsn),
        with_sink(key=["id"], columns={"id": f"data.[{dsn}"}),
        handler_with(dsn),
        f"name: orders\n{queue}decode: {json.dumps(dsn)}\nsink: {{type: sqlite, dsn: x.db, table: t}}\n",
        f"name: orders\n{queue}sink: {{type: sqlite, dsn: x.db, table: t, {json.dumps(dsn)}: 1}}\n",
    ]


@settings(max_examples=40, derandomize=True, deadline=None)
@given(scheme=st.sampled_from(SCHEMES), before=PASSWORDS, after=PASSWORDS)
def test_poller_check_never_prints_a_dsn_password(scheme: str, before: str, after: str) -> None:
    dsn = f"{scheme}://app:{before}{MARK}{after}@db.internal:5432/app"
    with tempfile.TemporaryDirectory() as folder:
        for i, text in enumerate(broken_files(dsn)):
            _, out = check_output(Path(folder), text, f"s{i}.yaml")
            assert MARK not in out, (text, out)
