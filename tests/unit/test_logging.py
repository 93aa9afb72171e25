from __future__ import annotations

import pytest

from poller.observability.logging import redact


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql://app:hunter2@db:5432/x", "postgresql://app:***@db:5432/x"),
        ("mysql://root:p%40ss@h/db?charset=utf8", "mysql://root:***@h/db?charset=utf8"),
        ("host=db password=hunter2 user=app", "host=db password=*** user=app"),
        ("postgresql://app@db/x", "postgresql://app@db/x"),
        (
            "error connecting to postgres://u:pw@h/d: refused",
            "error connecting to postgres://u:***@h/d: refused",
        ),
    ],
)
def test_redact_hides_passwords(text: str, expected: str) -> None:
    assert redact(text) == expected
