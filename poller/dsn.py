"""Connection strings (DSNs) as users write them, split without ever echoing them.

Rule (documented in the README): in `scheme://user:password@host:port/db?query`
the password is everything between the first `:` after the user and the *last*
`@` of the string, so a password needs no escaping even with `#`, `/`, `?`, `@`
or spaces in it; `%XX` escapes in the user and password are decoded as in any
URL. An `@` after the host (in the query) must be written `%40`.

Invariant: no error raised here contains any part of the DSN (it would reach
`poller check` output and logs); the scheme alone may be named.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote, unquote

Kind = Literal["postgres", "mysql", "sqlite"]

POSTGRES_SCHEMES = ("postgres", "postgresql")
MYSQL_SCHEMES = ("mysql", "mariadb")
CHECKPOINT_DSN_FORMS = (
    "a file path, sqlite:///path, file:path, postgres://, postgresql://, mysql:// or mariadb://"
)

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")


class DsnError(ValueError):
    """A DSN that cannot be used; the message never quotes the DSN."""


@dataclass(frozen=True)
class Dsn:
    scheme: str  # lower case
    user: str | None  # decoded
    password: str | None  # decoded
    host: str  # `host`, `host:port`, `[v6]:port` or a comma list of them, as written
    rest: str  # `/db?query#fragment` as written, possibly empty

    def without_password(self) -> str:
        """The same DSN with no password, for a client that takes the password apart."""
        user = f"{quote(self.user, safe='')}@" if self.user is not None else ""
        return f"{self.scheme}://{user}{self.host}{self.rest}"

    def host_port(self, default_port: int) -> tuple[str, int]:
        """The one host and its port (MySQL takes no host list)."""
        host, port = self.host, ""
        if host.startswith("["):
            end = host.find("]")
            if end < 0:
                raise DsnError("an IPv6 host must be closed with `]`")
            host, port = host[1:end], host[end + 1 :].removeprefix(":")
        elif ":" in host:
            host, _, port = host.rpartition(":")
        if not port:
            return host, default_port
        if not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
            raise DsnError("the port after the host must be a number from 1 to 65535")
        return host, int(port)


def scheme_of(dsn: str) -> str | None:
    """`postgresql` for `postgresql://...`, `file` for `file:x`; None for a plain path."""
    m = _SCHEME.match(dsn)
    return m.group(1).lower() if m else None


def parse(dsn: str) -> Dsn:
    """Split `scheme://[user[:password]@]host[:port][/rest]` by the rule above."""
    scheme = scheme_of(dsn)
    if scheme is None or not dsn[len(scheme) + 1 :].startswith("//"):
        raise DsnError("expected a URL: scheme://user@host:port/database, a password after the user")
    body = dsn[len(scheme) + 3 :]
    at = body.rfind("@")
    user = password = None
    if at >= 0:
        userinfo, body = body[:at], body[at + 1 :]
        name, colon, secret = userinfo.partition(":")
        user = unquote(name)
        password = unquote(secret) if colon else None
    cut = min((i for i in (body.find(c) for c in "/?#") if i >= 0), default=len(body))
    return Dsn(scheme, user, password, body[:cut], body[cut:])


def kind(dsn: str) -> Kind | None:
    """Which store a checkpoint DSN names, or None when it names none we have."""
    scheme = scheme_of(dsn)
    if scheme is None:
        return "sqlite" if dsn.strip() else None  # a plain path
    if scheme in POSTGRES_SCHEMES:
        return "postgres"
    if scheme in MYSQL_SCHEMES:
        return "mysql"
    if scheme in ("sqlite", "file"):
        return "sqlite"
    return None


def check(dsn: str, schemes: tuple[str, ...]) -> Dsn:
    """Parse a server DSN and require one of `schemes`; DsnError names only the scheme."""
    parsed = parse(dsn)
    if parsed.scheme not in schemes:
        raise DsnError(f"scheme {parsed.scheme!r} is not one of {', '.join(s + '://' for s in schemes)}")
    return parsed  # no host is allowed: `postgresql:///db` is the local socket
