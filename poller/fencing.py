"""Fencing: what makes a commit made under a lease that is no longer this
process's write nothing (bottom layer: imports nothing of poller's).

A lease belongs to one *tenure* of one process, not to a name. Each take
draws a fresh `Tenure` whose `token` is written into the lease row beside
the readable `worker_id`; the sink's fencing check (inside the row
transaction) and the DynamoDB conditional writes compare that token. Two
processes that share a `worker_id` (a fixed `${HOSTNAME}` under host
networking, a frozen pod with a stable name) therefore never both pass the
fence: each holds its own token, and only one token is in the row.

Invariants:
- a token is never issued twice (a random part per process and per tenure);
- a token names the process that issued it (`host/pid/process-nonce/...`),
  so a process knows its own tokens from a previous stream life without
  keeping a list, and a duplicate-id alarm can name both holders;
- once a tenure ends (lost, released, ended, stopped) its commits are refused
  whatever the row says.
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass
from typing import Protocol

from poller.records import Checkpoint

# Drawn once per process: with host networking two containers share a hostname and
# both run as PID 1, so host and pid alone could repeat.
_PROCESS_NONCE = secrets.token_hex(4)


def process_prefix() -> str:
    """The part of every token this process issues that names the process."""
    return f"{socket.gethostname()}/{os.getpid()}/{_PROCESS_NONCE}/"


def new_token() -> str:
    return process_prefix() + secrets.token_hex(8)


def issued_here(token: str | None) -> bool:
    """The token was drawn by this process (a tenure of an earlier life of a stream
    that ran here), not by another process using the same `worker_id`."""
    return token is not None and token.startswith(process_prefix())


def holder_of(token: str | None) -> str:
    """`host/pid` of the process that issued a token, for messages."""
    if not token:
        return "an unknown process"
    host, _, rest = token.partition("/")
    pid = rest.partition("/")[0]
    return f"{host} pid {pid}" if pid else host


class Fenced(Exception):
    """The commit's lease is no longer this worker's: the transaction rolled back.

    Neither transient (retrying cannot help) nor a record error (no record is
    at fault): the worker that made the commit stops with reason LEASE_LOST."""

    def __init__(self, shard_id: str, holder: str | None, *, tenure_over: bool = False):
        if tenure_over:
            text = f"this worker's hold of the lease of shard {shard_id} is over (lost, released or ended)"
        else:
            holder_text = f"held by {holder}" if holder else "not held by anyone"
            text = f"the lease of shard {shard_id} is {holder_text} now"
        super().__init__(f"{text}: commit refused")
        self.shard_id = shard_id
        self.holder = holder


class CheckpointKeeper(Protocol):
    """A lease store that keeps the checkpoints itself (DynamoDB, as the Kinesis
    Client Library does): the sink hands them over inside its transaction."""

    async def save_checkpoints(self, stream: str, checkpoints: list[Checkpoint], fence: Fence) -> None:
        """Write them only while `fence` holds (a write conditional on the lease);
        raise `Fenced` when it no longer does, `TransientError` when unreachable."""


class Tenure:
    """One holding of a lease by this process, from its take until it is lost,
    released, ended or its stream stops. `token` is written into the lease row
    at the take and compared by every fencing check."""

    __slots__ = ("over", "token")

    def __init__(self, token: str | None = None) -> None:
        self.token = token or new_token()
        self.over = False

    def end(self) -> None:
        self.over = True


@dataclass(frozen=True, slots=True)
class Fence:
    """The lease a shard's commit is made under: its holder (`owner`, for
    messages), the lease counter at which that holder took it, and the holding
    itself (`tenure`, whose token the row must carry). It holds while the
    tenure lasts and the lease row carries the tenure's token (at or above the
    counter it was taken at)."""

    shard_id: str
    owner: str
    counter: int
    keeper: CheckpointKeeper | None = None  # set when the lease store keeps the checkpoints
    tenure: Tenure | None = None

    @property
    def token(self) -> str | None:
        return self.tenure.token if self.tenure is not None else None

    def holds(self, owner: str | None, counter: int, token: str | None) -> bool:
        if not self.current() or owner != self.owner or counter < self.counter:
            return False
        return self.tenure is None or token == self.tenure.token

    def current(self) -> bool:
        """The tenure it was taken under is not over (this process has not let the lease go)."""
        return self.tenure is None or not self.tenure.over
