"""AWS clients: endpoint and region from config or the standard environment
variables (`AWS_ENDPOINT_URL_<SERVICE>`, `AWS_ENDPOINT_URL`, `AWS_REGION`),
credentials from botocore's normal chain (ECS task role included)."""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import metadata
from typing import Any

import aiohttp
from aiobotocore.session import get_session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from poller.records import RecordError, TransientError

THROTTLING_CODES = {
    "ProvisionedThroughputExceededException",
    "LimitExceededException",
    "ThrottlingException",
    "Throttling",
    "RequestThrottled",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "KMSThrottlingException",
    "RequestThrottledException",
}
TRANSIENT_CODES = THROTTLING_CODES | {
    "InternalFailure",
    "InternalError",
    "InternalServerError",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "KMSInternalException",
    "RequestTimeout",
    "RequestTimeoutException",
    "KMSDisabledException",  # an operator fixes the key; the stream waits
    "KMSNotFoundException",
    "KMSInvalidStateException",
    "KMSAccessDeniedException",
    "AccessDeniedException",
    "ExpiredTokenException",
}


def region_of(region: str | None) -> str:
    return region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def error_code(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def is_throttling(exc: BaseException) -> bool:
    return error_code(exc) in THROTTLING_CODES


def classify_aws(exc: BaseException) -> Exception:
    """Network trouble, throttling and 5xx are transient; anything else a
    client error about the request itself."""
    if isinstance(exc, TransientError | RecordError):
        return exc
    if isinstance(exc, ClientError):
        code = error_code(exc)
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in TRANSIENT_CODES or (isinstance(status, int) and status >= 500):
            return TransientError(f"{code or status}: {exc}")
        return RecordError(f"{code}: {exc}")
    if isinstance(exc, BotoCoreError | aiohttp.ClientError | OSError | asyncio.TimeoutError):
        return TransientError(f"{type(exc).__name__}: {exc}")
    return TransientError(f"{type(exc).__name__}: {exc}")


@functools.cache
def user_agent() -> str:
    """The User-Agent of every AWS request, built once.

    Without an explicit one botocore rebuilds its header for every request,
    which costs ~100 µs of CPU per call (a fifth of an SQS call on the hot
    path). This keeps the SDK, Python and OS tokens botocore would send and
    adds ours.
    """
    try:
        version = metadata.version("poller")
    except metadata.PackageNotFoundError:
        version = "dev"
    return f"{get_session().user_agent()} poller/{version}"


def client_config(read_timeout: float = 30, max_attempts: int = 3) -> Config:
    # Our own loops retry for as long as it takes; botocore's retries only smooth blips.
    return Config(
        retries={"mode": "standard", "max_attempts": max_attempts},
        connect_timeout=5,
        read_timeout=read_timeout,
        max_pool_connections=50,
        user_agent=user_agent(),
    )


@asynccontextmanager
async def aws_client(
    service: str,
    region: str | None,
    endpoint_url: str | None,
    *,
    read_timeout: float = 30,
    max_attempts: int = 3,
) -> AsyncIterator[Any]:
    session = get_session()
    kwargs: dict[str, Any] = {
        "region_name": region_of(region),
        "config": client_config(read_timeout, max_attempts),
    }
    if endpoint_url:
        kwargs["endpoint_url"] = endpoint_url
    async with session.create_client(service, **kwargs) as client:
        yield client
