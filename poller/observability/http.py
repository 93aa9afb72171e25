"""`/metrics`, `/healthz` and `/readyz` on one small aiohttp server.

Invariants: a client that has not sent a whole request within
`REQUEST_TIMEOUT_SECONDS` of connecting (or of its previous response) is
disconnected (a slowloris holds nothing for long), and at most
`MAX_CONNECTIONS` connections are open: a new one closes the oldest, so a
flood of idle connections can neither exhaust file descriptors nor keep a
health probe out. Both are aiohttp's own keep-alive timer (armed at connect
and cancelled only by a complete request) and its low-level `Server`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

REQUEST_TIMEOUT_SECONDS = 5.0
MAX_CONNECTIONS = 100  # probes and scrapers need a handful


class _BoundedServer(web.Server):
    def connection_made(self, handler: web.RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        open_now = self.connections  # oldest first
        for oldest in open_now[: len(open_now) - MAX_CONNECTIONS]:
            oldest.force_close()


class HttpServer:
    """Liveness says the event loop answers; readiness asks every stream."""

    def __init__(self, port: int, host: str, readiness: Callable[[], dict[str, str | None]]):
        """`readiness`: stream → why it is not ready, None when it is."""
        self.port = port
        self.host = host
        self._readiness = readiness
        self._runner: web.ServerRunner | None = None
        self._routes: dict[str, Callable[[], web.Response]] = {
            "/metrics": self._metrics,
            "/healthz": self._healthz,
            "/readyz": self._readyz,
        }

    async def start(self) -> None:
        server = _BoundedServer(
            self._dispatch,
            keepalive_timeout=REQUEST_TIMEOUT_SECONDS,
            access_log=None,
        )
        self._runner = web.ServerRunner(server)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:  # tests ask for any free port
            self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _dispatch(self, request: web.BaseRequest) -> web.StreamResponse:
        route = self._routes.get(request.path)
        if route is None:
            return web.Response(status=404, text="not found")
        if request.method not in ("GET", "HEAD"):
            return web.Response(status=405, headers={"Allow": "GET, HEAD"})
        return route()

    def _metrics(self) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    def _healthz(self) -> web.Response:
        return web.json_response({"status": "ok"})

    def _readyz(self) -> web.Response:
        reasons = self._readiness()
        streams = {name: reason is None for name, reason in reasons.items()}
        ready = bool(streams) and all(streams.values())
        body: dict[str, object] = {"ready": ready, "streams": streams}
        if not ready:
            body["reasons"] = {name: reason for name, reason in reasons.items() if reason is not None}
        return web.Response(
            status=200 if ready else 503,
            text=json.dumps(body),
            content_type="application/json",
        )
