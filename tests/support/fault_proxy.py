"""An in-process HTTP proxy that injects AWS faults between a client and an emulator.

Neither moto nor kinesalite ever throttles, fails with 5xx or drops a connection, so
tests point aiobotocore's ``endpoint_url`` at a ``FaultProxy`` in front of the
emulator::

    proxy = FaultProxy(moto.url, seed=1)
    url = await proxy.start()
    proxy.set_faults(throttle=0.3, only_targets={"GetRecords"})
    ...  # client with endpoint_url=url
    assert proxy.injected["throttle"] > 0
    await proxy.stop()

Requests are forwarded verbatim: method, raw path and query, headers (``Host``,
``X-Amz-Target``, ``Authorization``/``X-Amz-Date`` signature headers included; only
hop-by-hop headers are dropped) and body. Responses stream back chunk by chunk, so a
long-polling SQS ``ReceiveMessage`` simply waits upstream.

Faults apply only to AWS JSON-protocol calls (those with an ``X-Amz-Target`` header of
a known service) whose operation is in ``only_targets`` (or all of them when it is
``None``). Anything else, e.g. ``POST /moto-api/reset``, is always passed through.
For each matching request the proxy first sleeps ``latency_seconds`` and then draws
one number from a seeded ``random.Random``: below ``drop`` it aborts the connection,
below ``drop + server_error`` it answers 500/503, below ``drop + server_error +
throttle`` it answers the service's throttling error; otherwise it forwards. Runs are
reproducible for a given seed and request order.

``hold(targets)`` keeps the matching requests waiting, unforwarded, until
``release()``: a test can then act between a client's decision and its write
landing (``held`` counts the requests waiting or let through).

``serialize`` names operations forwarded one at a time: moto's DynamoDB checks a
``ConditionExpression`` and then writes without a lock, so two concurrent
conditional writes of one item may both succeed on moto, where DynamoDB serialises
the writes of an item and one of them fails its condition. Lease stores put
through such a proxy meet DynamoDB's rule (``DYNAMODB_ITEM_WRITES``).

``set_clock_offset(seconds)`` plays an AWS whose clock is that far from this host's:
every response (forwarded or injected) then carries ``Date:`` this host's time plus
the offset, in HTTP's one-second format, as AWS stamps it when it answers; and the
records it returns carry their stamps moved by the offset (the emulator stamps them
on this host's clock): Kinesis ``ApproximateArrivalTimestamp``, DynamoDB Streams
``ApproximateCreationDateTime``, SQS ``SentTimestamp`` and
``ApproximateFirstReceiveTimestamp``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import random
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any, Final, Literal

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

__all__ = [
    "DYNAMODB_ITEM_WRITES",
    "SERVER_ERRORS",
    "THROTTLE_ERRORS",
    "ErrorSpec",
    "FaultProxy",
    "FaultSettings",
]

# DynamoDB's writes of an item, which it serialises (see `serialize`).
DYNAMODB_ITEM_WRITES: Final = frozenset({"PutItem", "UpdateItem", "DeleteItem", "TransactWriteItems"})

log = logging.getLogger(__name__)

FaultKind = Literal["throttle", "server_error", "drop"]


@dataclass(frozen=True)
class ErrorSpec:
    """One canned AWS JSON-protocol error response."""

    status: int
    type: str  # the body's "__type"; botocore keeps the part after '#'
    message: str
    query_error: str | None = None  # x-amzn-query-error header (SQS is awsQueryCompatible)


@dataclass(frozen=True)
class FaultSettings:
    throttle: float = 0.0
    server_error: float = 0.0
    drop: float = 0.0
    latency_seconds: float = 0.0
    only_targets: frozenset[str] | None = None

    @property
    def any_fault(self) -> bool:
        return self.throttle > 0 or self.server_error > 0 or self.drop > 0


# X-Amz-Target prefix -> (service, Content-Type of that service's JSON protocol).
_TARGET_PREFIXES: Final[dict[str, tuple[str, str]]] = {
    "Kinesis_20131202": ("kinesis", "application/x-amz-json-1.1"),
    "DynamoDBStreams_20120810": ("dynamodbstreams", "application/x-amz-json-1.0"),
    "DynamoDB_20120810": ("dynamodb", "application/x-amz-json-1.0"),
    "AmazonSQS": ("sqs", "application/x-amz-json-1.0"),
}

_DDB_NS = "com.amazonaws.dynamodb.v20120810#"

#: What each service answers when it throttles. All of these are classified as
#: throttling by botocore's standard/adaptive retry modes. In the default *legacy*
#: mode (botocore/data/_retry.json) Kinesis and DynamoDB retry them, DynamoDB Streams'
#: LimitExceededException is NOT retried (no "streams.dynamodb" section, and the
#: default section lacks that code), and SQS's RequestThrottled is retried only with
#: HTTP 403 -- the status real SQS has always sent with it.
THROTTLE_ERRORS: Final[dict[str, ErrorSpec]] = {
    "kinesis": ErrorSpec(
        400,
        "ProvisionedThroughputExceededException",
        "Rate exceeded for shard in stream (injected by FaultProxy).",
    ),
    "dynamodbstreams": ErrorSpec(
        400,
        _DDB_NS + "LimitExceededException",
        "Rate exceeded (injected by FaultProxy).",
    ),
    "dynamodb": ErrorSpec(
        400,
        _DDB_NS + "ProvisionedThroughputExceededException",
        "The level of configured provisioned throughput for the table was exceeded (injected by FaultProxy).",
    ),
    "sqs": ErrorSpec(
        403,
        "com.amazonaws.sqs#RequestThrottled",
        "Request is throttled (injected by FaultProxy).",
        query_error="RequestThrottled;Sender",
    ),
}

#: Internal errors by service (HTTP 500); the 503 variant is the same for all.
SERVER_ERRORS: Final[dict[str, ErrorSpec]] = {
    "kinesis": ErrorSpec(500, "InternalFailureException", "Internal failure (injected)."),
    "dynamodbstreams": ErrorSpec(500, _DDB_NS + "InternalServerError", "Internal error (injected)."),
    "dynamodb": ErrorSpec(500, _DDB_NS + "InternalServerError", "Internal error (injected)."),
    "sqs": ErrorSpec(
        500,
        "InternalFailure",
        "Internal failure (injected).",
        query_error="InternalFailure;Receiver",
    ),
}
_UNAVAILABLE = ErrorSpec(503, "ServiceUnavailable", "Service unavailable (injected).")

# Hop-by-hop headers (RFC 9110 7.6.1) and framing headers that aiohttp recomputes.
_NOT_FORWARDED: Final[frozenset[str]] = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
        "content-length",
    }
)

_MAX_REQUEST_BYTES: Final = 16 * 1024 * 1024  # Kinesis PutRecords tops out at 5 MiB
_CHUNK: Final = 64 * 1024


class FaultProxy:
    """Forward AWS JSON-protocol calls to ``upstream``, injecting seeded faults.

    ``requests`` counts forwarded requests per operation (``X-Amz-Target`` suffix such
    as ``"GetRecords"``; ``"METHOD /path"`` for other requests). ``injected`` counts
    injected faults per kind (``"throttle"``, ``"server_error"``, ``"drop"``); a
    faulted request is not forwarded and not counted in ``requests``.
    """

    def __init__(
        self,
        upstream: str,
        *,
        seed: int = 0,
        upstream_timeout: float = 60.0,
        throttle_errors: dict[str, ErrorSpec] | None = None,
        serialize: frozenset[str] = frozenset(),
    ) -> None:
        """``upstream_timeout`` bounds each upstream read; it must exceed the 20 s of a
        long-polling SQS ``ReceiveMessage``. ``throttle_errors`` overrides entries of
        ``THROTTLE_ERRORS`` (e.g. to try SQS's ``ThrottlingException`` form)."""
        self.upstream = URL(upstream.rstrip("/"))
        if not self.upstream.is_absolute():
            raise ValueError(f"upstream must be an absolute URL, got {upstream!r}")
        self._rng = random.Random(seed)
        self._upstream_timeout = upstream_timeout
        self._throttle_errors = {**THROTTLE_ERRORS, **(throttle_errors or {})}
        self._faults = FaultSettings()
        self._clock_offset: float | None = None
        self.injected: collections.Counter[str] = collections.Counter()
        self.requests: collections.Counter[str] = collections.Counter()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._url: str | None = None
        self._hold: frozenset[str] = frozenset()
        self._released = asyncio.Event()
        self.held: collections.Counter[str] = collections.Counter()
        self._serialize = serialize
        self._one_at_a_time: asyncio.Lock | None = None  # made on the proxy's loop

    def hold(self, targets: set[str]) -> None:
        """Keep requests for these operations waiting until `release()` (call on the proxy's loop)."""
        self._hold = frozenset(targets)
        self._released = asyncio.Event()

    def release(self) -> None:
        self._hold = frozenset()
        self._released.set()

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("FaultProxy is not started")
        return self._url

    @property
    def faults(self) -> FaultSettings:
        return self._faults

    async def start(self) -> str:
        """Listen on a free port of 127.0.0.1; return ``http://127.0.0.1:PORT``."""
        if self._runner is not None:
            raise RuntimeError("FaultProxy already started")
        # sock_read bounds a silent upstream; total=None lets a long poll take its time.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10.0, sock_read=self._upstream_timeout)
        self._session = aiohttp.ClientSession(
            timeout=timeout,
            # One connection per request: a pooled upstream connection that the
            # emulator closed while idle would fail a (non-idempotent) POST.
            connector=aiohttp.TCPConnector(limit=64, force_close=True),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        )
        app = web.Application(client_max_size=_MAX_REQUEST_BYTES)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # A short shutdown_timeout so stop() never waits out a 20 s long poll.
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        await web.SockSite(runner, sock).start()
        self._runner = runner
        self._url = f"http://127.0.0.1:{port}"
        return self._url

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        session, self._session = self._session, None
        self._url = None
        if runner is not None:
            await runner.cleanup()
        if session is not None:
            await session.close()

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def set_faults(
        self,
        *,
        throttle: float = 0.0,
        server_error: float = 0.0,
        drop: float = 0.0,
        latency_seconds: float = 0.0,
        only_targets: set[str] | None = None,
    ) -> None:
        """Replace the fault settings (every call starts from "no faults").

        The three fractions are mutually exclusive outcomes of one draw per request,
        so each must be in [0, 1] and their sum at most 1.
        """
        for name, value in (("throttle", throttle), ("server_error", server_error), ("drop", drop)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {value}")
        if throttle + server_error + drop > 1.0 + 1e-9:
            raise ValueError("throttle + server_error + drop must not exceed 1")
        if latency_seconds < 0:
            raise ValueError("latency_seconds must be >= 0")
        self._faults = FaultSettings(
            throttle=throttle,
            server_error=server_error,
            drop=drop,
            latency_seconds=latency_seconds,
            only_targets=None if only_targets is None else frozenset(only_targets),
        )

    def set_clock_offset(self, seconds: float | None) -> None:
        """Stamp every response's ``Date`` this far from this host's clock (None: leave
        the upstream's header as it is)."""
        self._clock_offset = seconds

    def _date(self) -> str | None:
        """The ``Date`` of a response answered now, when the clock is offset."""
        if self._clock_offset is None:
            return None
        return formatdate(time.time() + self._clock_offset, usegmt=True)

    def reset_counters(self) -> None:
        self.injected.clear()
        self.requests.clear()

    # -- request handling -------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        service, content_type, operation = _classify(request)
        if service is not None and operation in self._hold:
            self.held[operation] += 1
            await self._released.wait()
        faults = self._faults
        if service is not None and (faults.only_targets is None or operation in faults.only_targets):
            if faults.latency_seconds > 0:
                await asyncio.sleep(faults.latency_seconds)
            kind = self._draw(faults)
            if kind is not None:
                self.injected[kind] += 1
                if kind == "drop":
                    return _drop(request)
                if kind == "server_error":
                    spec = SERVER_ERRORS[service] if self._rng.random() < 0.5 else _UNAVAILABLE
                else:
                    spec = self._throttle_errors[service]
                return self._error_response(spec, content_type)
        self.requests[operation] += 1
        if operation in self._serialize:
            if self._one_at_a_time is None:
                self._one_at_a_time = asyncio.Lock()
            async with self._one_at_a_time:
                return await self._forward(request, body)
        return await self._forward(request, body)

    def _draw(self, faults: FaultSettings) -> FaultKind | None:
        if not faults.any_fault:
            return None
        r = self._rng.random()
        if r < faults.drop:
            return "drop"
        if r < faults.drop + faults.server_error:
            return "server_error"
        if r < faults.drop + faults.server_error + faults.throttle:
            return "throttle"
        return None

    def _error_response(self, spec: ErrorSpec, content_type: str) -> web.Response:
        request_id = str(uuid.UUID(int=self._rng.getrandbits(128), version=4))
        headers = {"x-amzn-RequestId": request_id}
        if spec.query_error is not None:
            headers["x-amzn-query-error"] = spec.query_error
        date = self._date()
        if date is not None:
            headers["Date"] = date
        payload = json.dumps({"__type": spec.type, "message": spec.message})
        return web.Response(
            status=spec.status,
            body=payload.encode(),
            headers=headers,
            content_type=content_type,
        )

    async def _forward(self, request: web.Request, body: bytes) -> web.StreamResponse:
        session = self._session
        if session is None:  # stop() raced with a late request
            raise web.HTTPServiceUnavailable(text="FaultProxy is stopping")
        # raw_path keeps the client's exact path and query encoding (signed by SigV4).
        url = URL(str(self.upstream) + request.raw_path, encoded=True)
        headers: CIMultiDict[str] = CIMultiDict(
            (k, v) for k, v in request.headers.items() if k.lower() not in _NOT_FORWARDED
        )
        try:
            upstream = await session.request(
                request.method, url, data=body, headers=headers, allow_redirects=False
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("FaultProxy: upstream %s failed: %r", self.upstream, exc)
            return web.Response(status=502, text=f"FaultProxy: upstream failed: {exc!r}")
        async with upstream:
            restamp = _RESTAMP.get(_classify(request)[2]) if self._clock_offset else None
            if restamp is not None and upstream.status == 200:
                return await self._restamped(upstream, restamp)
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            date = self._date()
            for key, value in upstream.headers.items():
                if key.lower() not in _NOT_FORWARDED and not (date and key.lower() == "date"):
                    response.headers.add(key, value)
            if date is not None:
                response.headers["Date"] = date
            if upstream.content_length is not None:
                response.content_length = upstream.content_length
            try:
                await response.prepare(request)
                async for chunk in upstream.content.iter_chunked(_CHUNK):
                    await response.write(chunk)
                await response.write_eof()
            except (ConnectionResetError, aiohttp.ClientError, TimeoutError) as exc:
                # The client went away, or upstream broke mid-body: nothing to answer.
                log.debug("FaultProxy: relay of %s aborted: %r", request.raw_path, exc)
                if request.transport is not None:
                    request.transport.abort()
        return response

    async def _restamped(
        self, upstream: aiohttp.ClientResponse, restamp: Callable[[dict[str, Any], float], None]
    ) -> web.Response:
        """The upstream's answer whole, its record stamps moved by the clock offset."""
        doc = json.loads(await upstream.read())
        restamp(doc, self._clock_offset or 0.0)
        # The body changed: its x-amz-crc32 (DynamoDB's, checked by botocore) goes.
        kept = [(k, v) for k, v in upstream.headers.items() if k.lower() not in _NOT_FORWARDED]
        headers = {k: v for k, v in kept if k.lower() != "x-amz-crc32"}
        headers["Date"] = self._date() or headers.get("Date", "")
        return web.Response(status=upstream.status, body=json.dumps(doc).encode(), headers=headers)


def _restamp_kinesis(doc: dict[str, Any], offset: float) -> None:
    for record in doc.get("Records", []):
        record["ApproximateArrivalTimestamp"] += offset


def _restamp_dynamodb(doc: dict[str, Any], offset: float) -> None:
    for record in doc.get("Records", []):
        change = record.get("dynamodb", {})
        if "ApproximateCreationDateTime" in change:
            change["ApproximateCreationDateTime"] += offset


def _restamp_sqs(doc: dict[str, Any], offset: float) -> None:
    for message in doc.get("Messages", []):
        attrs = message.get("Attributes", {})
        for name in ("SentTimestamp", "ApproximateFirstReceiveTimestamp"):
            if name in attrs:
                attrs[name] = str(int(attrs[name]) + round(offset * 1000))


# The reads whose records carry AWS's time, by operation (all JSON protocol).
_RESTAMP: Final[dict[str, Callable[[dict[str, Any], float], None]]] = {
    "GetRecords": lambda doc, offset: (
        _restamp_dynamodb(doc, offset)
        if any("dynamodb" in r for r in doc.get("Records", []))
        else _restamp_kinesis(doc, offset)
    ),
    "ReceiveMessage": _restamp_sqs,
}


def _classify(request: web.Request) -> tuple[str | None, str, str]:
    """(service or None, JSON content type, operation name) of a request."""
    target = request.headers.get("X-Amz-Target")
    if target and "." in target:
        prefix, operation = target.split(".", 1)
        known = _TARGET_PREFIXES.get(prefix)
        if known is not None:
            return known[0], known[1], operation
        return None, "application/json", operation
    action = request.query.get("Action")  # query protocol (e.g. boto3 < 1.34 SQS)
    if action:
        return None, "text/xml", action
    return None, "application/json", f"{request.method} {request.path}"


def _drop(request: web.Request) -> web.StreamResponse:
    """Abort the client's connection without a byte of response.

    The returned response is never written: aiohttp sees the closed transport and
    skips it. ``force_close`` keeps aiohttp from reusing the dead connection.
    """
    with contextlib.suppress(Exception):
        request.protocol.force_close()
    if request.transport is not None:
        request.transport.abort()
    return web.Response(status=499)
