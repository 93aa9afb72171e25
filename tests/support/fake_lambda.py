"""A stand-in for the AWS Lambda `Invoke` API, for the `lambda` sink's tests.

moto's standalone Lambda runs functions in Docker (not available here), and
its Docker-less backend only echoes the payload or replays canned answers: it
can neither run code nor answer `FunctionError` or throttling. This speaks the
REST-JSON protocol botocore uses, `POST /2015-03-31/functions/{name}/invocations`,
and runs a Python handler of tests/handlers for each invocation:

- the handler's return value is the 200 response's JSON payload;
- an exception is a function error: 200, `X-Amz-Function-Error: Unhandled`,
  and Lambda's `{"errorMessage", "errorType", "stackTrace"}` payload;
- `throttle(n)` makes the next n invocations answer 429
  `TooManyRequestsException`, as a function at its concurrency limit does;
- an unknown function is 404 `ResourceNotFoundException`, a payload of
  6,291,456 bytes or more 413 `RequestTooLargeException`.

Start it on a `LoopThread` (tests are synchronous; the daemon is a child
process that reaches it over HTTP).
"""

from __future__ import annotations

import asyncio
import json
import socket
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from aiohttp import web

MAX_PAYLOAD_BYTES = 6 * 1024 * 1024

Handler = Callable[[Any, Any], Any]


@dataclass
class Invocation:
    function: str
    event: Any
    status: int
    function_error: bool = False


@dataclass
class FakeLambda:
    functions: dict[str, Handler] = field(default_factory=dict)
    invocations: list[Invocation] = field(default_factory=list)
    throttled: int = 0  # invocations answered 429 so far
    _throttle_next: int = 0
    _runner: web.AppRunner | None = None
    url: str = ""

    def add(self, name: str, handler: Handler) -> None:
        self.functions[name] = handler

    def throttle(self, n: int) -> None:
        """Answer the next `n` invocations with 429 TooManyRequestsException."""
        self._throttle_next = n

    async def start(self) -> str:
        app = web.Application(client_max_size=2 * MAX_PAYLOAD_BYTES)
        app.router.add_post("/2015-03-31/functions/{name}/invocations", self._invoke)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        await web.SockSite(runner, sock).start()
        self._runner = runner
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        return self.url

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _invoke(self, request: web.Request) -> web.Response:
        name = request.match_info["name"].rsplit(":function:", 1)[-1].split(":")[0]
        body = await request.read()
        if name not in self.functions:
            return _error(404, "ResourceNotFoundException", f"Function not found: {name}")
        if len(body) >= MAX_PAYLOAD_BYTES:
            return _error(
                413,
                "RequestTooLargeException",
                f"Request must be smaller than {MAX_PAYLOAD_BYTES} bytes for the InvokeFunction operation",
            )
        event = json.loads(body) if body else None
        if self._throttle_next > 0:
            self._throttle_next -= 1
            self.throttled += 1
            self.invocations.append(Invocation(name, event, 429))
            return _error(
                429,
                "TooManyRequestsException",
                "Rate Exceeded.",
                Reason="ReservedFunctionConcurrentInvocationLimitExceeded",
                Type="User",
            )
        context = SimpleNamespace(
            function_name=name,
            function_version="$LATEST",
            aws_request_id=str(uuid.uuid4()),
            invoked_function_arn=f"arn:aws:lambda:us-east-1:123456789012:function:{name}",
            memory_limit_in_mb="128",
            log_group_name=f"/aws/lambda/{name}",
            log_stream_name="2026/01/01/[$LATEST]fake",
            get_remaining_time_in_millis=lambda: 3000,
            log=lambda msg: None,
        )
        headers = {"X-Amz-Executed-Version": "$LATEST", "x-amzn-RequestId": context.aws_request_id}
        try:
            result = await asyncio.to_thread(self.functions[name], event, context)
        except Exception as e:
            self.invocations.append(Invocation(name, event, 200, function_error=True))
            payload = {
                "errorMessage": str(e),
                "errorType": type(e).__name__,
                "stackTrace": traceback.format_tb(e.__traceback__),
            }
            headers["X-Amz-Function-Error"] = "Unhandled"
            return web.json_response(payload, headers=headers)
        self.invocations.append(Invocation(name, event, 200))
        answer = json.dumps(result).encode()
        return web.Response(body=answer, content_type="application/json", headers=headers)


def _error(status: int, code: str, message: str, **extra: str) -> web.Response:
    return web.json_response({"message": message, **extra}, status=status, headers={"x-amzn-ErrorType": code})
