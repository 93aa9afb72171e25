"""Secrets out of everything poller prints: log lines, tracebacks, `poller check` output.

`redact` is the one function every output path goes through: the structlog
processors and the stdlib logging formatter (observability/logging.py) and
`ConfigError` (config.py). It masks, line by line:

- the password of any `scheme://user:password@host` URL: everything from the
  `:` after the user up to the *last* `@` of the line, the rule `poller.dsn`
  parses by, so a password holding `#`, `/`, `?`, `@` or spaces is masked
  whole (at worst more than the password is masked, never less);
- the value after a secret-looking key: `password=`, `sslpassword=`,
  `aws_secret_access_key=`, `"SessionToken": "..."`, `X-Amz-Security-Token:`;
- every value given to `register_secret` (the passwords of the configured
  DSNs, the AWS secret key and session token of the environment), raw,
  JSON-escaped or percent-encoded, wherever it appears.

Work is linear in the text's length: log lines may carry record payloads.
"""

from __future__ import annotations

import functools
import json
import os
import re
import threading
from typing import Any
from urllib.parse import quote, unquote

MASK = "***"

# A key whose value is a secret: the keyword, at most a few more name characters
# (`aws_secret_access_key`, `SessionToken`, `sslpassword`), then `=`, or `:` after a
# quoted key (JSON, a Python repr) or the session token header. A bare `token: ...`
# is left alone: it is how a field is named in an error (`sink.columns.api_token: ...`).
_KEYED = re.compile(
    r"""(?P<key>(?:(?:password|passwd|pwd|secret|token|signature)[\w-]{0,40}(?:\s{0,4}=|["']\s{0,4}:)"""
    r"""|x-amz-security-token\s{0,4}:)\s{0,4})"""
    r"""(?P<value>"(?:[^"\\\n]|\\.){0,8192}"|'(?:[^'\\\n]|\\.){0,8192}'|[^\s"'&;,}\])]+)""",
    re.IGNORECASE,
)
_KEYWORD = re.compile(r"password|passwd|pwd|secret|token|signature", re.IGNORECASE).search
# The user of a URL's userinfo: up to its `:` (an `@` is allowed: `me@corp.com:pw@host`).
_USER = re.compile(r"[^\s:/?#]*:")

_MIN_SECRET = 4  # shorter values would mask ordinary words everywhere
_MIN_AWS_SECRET = 16  # real keys are 40 characters; `test` and the like are placeholders
_MAX_SECRETS = 1000
_lock = threading.Lock()
_secrets: set[str] = set()
_known: re.Pattern[str] | None = None


def _mask_url_password(line: str) -> str:
    last_at = line.rfind("@")
    if last_at < 0:
        return line
    pos = 0
    while True:
        i = line.find("://", pos)
        if i < 0 or i > last_at:
            return line
        m = _USER.match(line, i + 3)
        if m is not None and m.end() <= last_at:
            # Everything up to the last `@` goes: after it no `@` is left to end a password.
            return line[: m.end()] + MASK + line[last_at:]
        pos = i + 3


def _mask_keyed(m: re.Match[str]) -> str:
    value = m.group("value")
    quote_char = value[0] if value[0] in "\"'" and len(value) > 1 else ""
    return f"{m.group('key')}{quote_char}{MASK}{quote_char}"


def redact_known(text: str) -> str:
    """`text` with only the registered secrets masked: safe on a rendered JSON line,
    whose structure the patterns of `redact` could cut through."""
    known = _known
    return known.sub(MASK, text) if known is not None else text


@functools.lru_cache(maxsize=4096)
def _secret_name(name: str) -> bool:
    """A field whose whole value is a secret, in a log event or a nested dict."""
    return _KEYWORD(name) is not None


def _redact(text: str) -> str:
    # Patterns first: a known secret masked first could take the `:` or `@` a URL
    # password is found by, and leave the rest of that password in the clear.
    if "@" in text and "://" in text:
        text = "\n".join(_mask_url_password(line) for line in text.split("\n"))
    if _KEYWORD(text) is not None:  # the full pattern only where a keyword is
        text = _KEYED.sub(_mask_keyed, text)
    return redact_known(text)


# Log events repeat the same short values (names, events, shard ids): those are
# redacted once. The cache is emptied whenever a secret is registered.
_redact_short = functools.lru_cache(maxsize=8192)(_redact)


def redact(text: str) -> str:
    """`text` with every secret it holds masked by `***`."""
    return _redact_short(text) if len(text) <= 256 else _redact(text)


def redact_value(value: Any, depth: int = 0) -> Any:
    """`value` with every string in it redacted, into dicts, lists and tuples.
    Other objects become their redacted `repr`, which is what a renderer would print."""
    if isinstance(value, str):
        return redact(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if depth > 20:
        return MASK
    if isinstance(value, dict):
        return {
            redact_value(k, depth + 1): MASK
            if isinstance(k, str) and _secret_name(k) and isinstance(v, str | bytes) and v
            else redact_value(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [redact_value(v, depth + 1) for v in value]
    try:
        return redact(repr(value))
    except Exception:  # a broken __repr__ must not lose the log line
        return f"<{type(value).__name__}>"


def _variants(secret: str) -> set[str]:
    return {
        secret,
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        repr(secret)[1:-1],
        quote(secret, safe=""),
        quote(secret),
    }


def register_secret(secret: str | None) -> None:
    """Mask `secret` (and its escaped and percent-decoded forms) in all later output."""
    if not secret:
        return
    global _known
    with _lock:
        new = {v for s in (secret, unquote(secret)) for v in _variants(s) if len(v) >= _MIN_SECRET}
        if new <= _secrets or len(_secrets) >= _MAX_SECRETS:
            return
        _secrets.update(new)
        # Longest first, so a secret is masked whole before a shorter one inside it.
        ordered = sorted(_secrets, key=len, reverse=True)
        _known = re.compile("|".join(re.escape(s) for s in ordered))
        _redact_short.cache_clear()


def register_dsn(dsn: str) -> None:
    """Register the password of a DSN (by poller.dsn's rule) and any keyed secret in it."""
    from poller import dsn as dsn_rules

    try:
        register_secret(dsn_rules.parse(dsn).password)
    except ValueError:
        pass
    for m in _KEYED.finditer(dsn):
        register_secret(m.group("value").strip("\"'"))


def register_environment(env: dict[str, str] | None = None) -> None:
    """The AWS credentials botocore may read from the environment."""
    env = dict(os.environ) if env is None else env
    for name in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        value = env.get(name, "")
        if len(value) >= _MIN_AWS_SECRET:
            register_secret(value)
