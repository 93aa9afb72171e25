"""The `context` a Lambda handler is called with, rebuilt for the handler sink.

It has the attributes and methods of the Python runtime's context object (not
Powertools' typing stub), so handler code that reads them runs unchanged: in
particular `memory_limit_in_mb` is a string, as the runtime reads it from the
environment.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

from poller.observability.logging import get_logger

_ACCOUNT_PLACEHOLDER = "000000000000"


def function_arn(name: str, region: str, source_arn: str = "") -> str:
    """`arn:aws:lambda:REGION:ACCOUNT:function:NAME`, the account taken from the
    event source's ARN (the function would live in the same account)."""
    parts = source_arn.split(":")
    account = parts[4] if len(parts) > 5 and parts[4].isdigit() else _ACCOUNT_PLACEHOLDER
    return f"arn:aws:lambda:{region}:{account}:function:{name}"


def log_stream_name(version: str = "$LATEST") -> str:
    """Lambda's form, one per execution environment: `YYYY/MM/DD/[VERSION]<32 hex>`."""
    return f"{datetime.now(UTC):%Y/%m/%d}/[{version}]{uuid.uuid4().hex}"


class LambdaContext:
    """One invocation's context: a fresh `aws_request_id`, and a deadline
    `timeout_seconds` after the handler starts."""

    function_version = "$LATEST"
    identity: Any = None
    client_context: Any = None
    tenant_id: str | None = None

    def __init__(
        self,
        *,
        function_name: str,
        invoked_function_arn: str,
        memory_limit_in_mb: int,
        timeout_seconds: float,
        log_stream_name: str,
        stream: str = "",
    ):
        self.function_name = function_name
        self.invoked_function_arn = invoked_function_arn
        self.memory_limit_in_mb = str(memory_limit_in_mb)
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = log_stream_name
        self._deadline = time.monotonic() + timeout_seconds
        self._log = get_logger(stream=stream, function=function_name, request_id=self.aws_request_id)

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))

    def log(self, msg: str) -> None:
        """The runtime's `context.log`: here a line in the daemon's own log,
        tagged with the stream and the request id."""
        self._log.info("handler log", message=str(msg).rstrip("\n"))

    def __repr__(self) -> str:
        return (
            f"LambdaContext(function_name={self.function_name!r}, "
            f"aws_request_id={self.aws_request_id!r}, remaining_ms={self.get_remaining_time_in_millis()})"
        )
