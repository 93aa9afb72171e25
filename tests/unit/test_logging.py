"""Secrets never reach the output: a DSN password of any characters, keyed
secrets (libpq, AWS), nested values and tracebacks, through the real structlog
configuration and the stdlib logging formatter."""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Iterator
from urllib.parse import quote, unquote

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from poller import dsn as dsn_rules
from poller.observability.logging import RedactingFormatter, configure, get_logger, redact
from poller.redaction import redact_known, register_secret


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql://app:hunter2@db:5432/x", "postgresql://app:***@db:5432/x"),
        ("mysql://root:p%40ss@h/db?charset=utf8", "mysql://root:***@h/db?charset=utf8"),
        ("host=db password=hunter2 user=app", "host=db password=*** user=app"),
        ("host=db password='two words' user=app", "host=db password='***' user=app"),
        ("host=db sslpassword=hunter2", "host=db sslpassword=***"),
        ("postgresql://app@db/x", "postgresql://app@db/x"),
        (
            "error connecting to postgres://u:pw@h/d: refused",
            "error connecting to postgres://u:***@h/d: refused",
        ),
        ("postgres://u:p@ss #/?w@h:5432/db", "postgres://u:***@h:5432/db"),
        ("mysql://me@corp.example:pw@h/db", "mysql://me@corp.example:***@h/db"),
        (
            "postgres://u@h/db?sslpassword=pw&sslmode=require",
            "postgres://u@h/db?sslpassword=***&sslmode=require",
        ),
        ("AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG", "AWS_SECRET_ACCESS_KEY=***"),
        ("aws_session_token = IQoJb3JpZ2lu", "aws_session_token = ***"),
        ('{"SecretAccessKey": "wJal\\"rX", "Expiration": 1}', '{"SecretAccessKey": "***", "Expiration": 1}'),
        ("{'SessionToken': 'IQoJ'}", "{'SessionToken': '***'}"),
        ("X-Amz-Security-Token: IQoJb3JpZ2lu", "X-Amz-Security-Token: ***"),
        (
            "https://q/x?X-Amz-Signature=ab12&X-Amz-Security-Token=IQ%2Fo",
            "https://q/x?X-Amz-Signature=***&X-Amz-Security-Token=***",
        ),
        # A field named like a secret in an error is not a secret.
        (
            "orders.yaml: sink.columns.api_token: invalid JMESPath",
            "orders.yaml: sink.columns.api_token: invalid JMESPath",
        ),
        ("https://sqs.us-east-1.amazonaws.com/1/q", "https://sqs.us-east-1.amazonaws.com/1/q"),
    ],
)
def test_redact_hides_passwords(text: str, expected: str) -> None:
    assert redact(text) == expected


# Any printable character a user may put in a password: no control characters, so
# no line breaks (masking works line by line), everything else included.
PRINTABLE = st.characters(codec="utf-8", exclude_categories=("Cc", "Cs"))
PASSWORDS = st.one_of(
    st.text(PRINTABLE, min_size=1, max_size=30),
    st.text(st.sampled_from("#/?@ :%&=;'\"\\"), min_size=1, max_size=12),
)
SCHEMES = [
    "postgres",
    "postgresql",
    "mysql",
    "mariadb",
    "mysql+aiomysql",
    "postgresql+asyncpg",
    "sqlite",
    "redis",
    "https",
]
MARK = "Kq7Vw3"  # in every generated secret: the output must never hold it


@settings(max_examples=300, derandomize=True, deadline=None)
@given(scheme=st.sampled_from(SCHEMES), password=PASSWORDS)
def test_a_dsn_password_of_any_characters_is_masked_whole(scheme: str, password: str) -> None:
    rest = "@db.internal:5432/app?sslmode=require"
    for line in (
        f"{scheme}://app:{password}{rest}",
        f"cannot connect to {scheme}://app:{password}{rest}: refused",
    ):
        masked = line.replace(f":{password}@", ":***@", 1)
        assert redact(line) == redact_known(masked)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(scheme=st.sampled_from(SCHEMES), password=PASSWORDS)
def test_a_dsn_splits_at_its_last_at_sign(scheme: str, password: str) -> None:
    parsed = dsn_rules.parse(f"{scheme}://app:{password}@db.internal:5432/app?sslmode=require")
    assert (parsed.user, parsed.password) == ("app", unquote(password))
    assert (parsed.host, parsed.rest) == ("db.internal:5432", "/app?sslmode=require")
    assert parsed.without_password() == f"{scheme}://app@db.internal:5432/app?sslmode=require"


@contextlib.contextmanager
def poller_logs(json_format: bool) -> Iterator[io.StringIO]:
    """What `poller run` prints, with its own logging configuration."""
    saved = structlog.get_config()
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            configure("INFO", json=json_format)
            yield out
    finally:
        structlog.configure(**saved)


def log_everywhere(secret: str) -> None:
    """The secret in every place a log line can carry it."""
    dsn = f"postgresql://app:{secret}@db.internal:5432/app"
    log = get_logger(stream="orders")
    log.error(f"cannot connect to {dsn}")
    log.warning("sink not reachable, retrying", dsn=dsn, error=ValueError(f"invalid port in {dsn}"))
    log.info("nested", config={"sink": {"dsn": dsn, "hosts": [dsn, (dsn, 1)]}})
    log.info("libpq", conninfo=f"host=db password={secret!r} user=app", json=json.dumps({"password": secret}))
    log.info("aws", credentials={"AccessKeyId": "AKIA", "SecretAccessKey": secret, "SessionToken": secret})
    log.info("env", line=f"AWS_SECRET_ACCESS_KEY={quote(secret, safe='')}")
    log.info("ssl", dsn=f"postgresql://app@db/app?sslpassword={quote(secret, safe='')}")
    try:
        raise ConnectionError(f"invalid DSN: {dsn}")
    except ConnectionError:
        log.exception("stream failed; restarting")


@settings(max_examples=60, derandomize=True, deadline=None)
@given(before=PASSWORDS, after=PASSWORDS, json_format=st.booleans())
def test_logged_secrets_never_reach_stdout(before: str, after: str, json_format: bool) -> None:
    with poller_logs(json_format) as out:
        log_everywhere(before + MARK + after)
    text = out.getvalue()
    assert "stream failed; restarting" in text and "Traceback" in text
    assert MARK not in text
    if json_format:
        assert all(json.loads(line) for line in text.splitlines() if line.startswith("{"))


def test_stdlib_log_records_are_redacted_traceback_included() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(RedactingFormatter(logging.BASIC_FORMAT))
    lib = logging.getLogger("poller-test-library")
    lib.addHandler(handler)
    lib.propagate = False
    try:
        try:
            raise OSError("connect to mysql://root:pa ss@h/db failed")
        except OSError:
            lib.exception("Task exception was never retrieved: %s", "postgres://u:pw#1@h/db")
    finally:
        lib.removeHandler(handler)
    text = out.getvalue()
    assert "Traceback" in text
    assert "pa ss" not in text and "pw#1" not in text


def test_a_registered_secret_is_masked_however_it_is_escaped() -> None:
    secret = 'Reg1stered "sec/ret"'
    register_secret(secret)
    with poller_logs(True) as out:
        get_logger().info("echoed", plain=secret, quoted=repr(secret), encoded=quote(secret, safe=""))
    line = json.loads(out.getvalue())
    assert "Reg1stered" not in out.getvalue()
    assert line["plain"] == "***"
