"""The supervisor: one place that starts every stream, owns the signals, and
shuts down in two phases.

First SIGTERM/SIGINT: stop polling, let in-flight batches commit, exit 0
within the deadline. A second signal, or the deadline, cancels what is left.
A stream that fails is logged with its error and restarted after a backoff;
the others go on, and readiness reports it.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import structlog

from poller.aws_clock import AwsClock
from poller.config import ConfigError, SqsSource, StreamConfig
from poller.destinations import build_destination
from poller.observability import metrics
from poller.observability.http import HttpServer
from poller.observability.logging import get_logger
from poller.processing.pipeline import Preparer
from poller.records import TransientError
from poller.retry import Backoff, sleep_unless
from poller.sink_api import Sink
from poller.sinks.daemons import announced
from poller.sinks.factory import build_sink, failures_table_of
from poller.sinks.session_bounds import session_bounds

log = get_logger()
_SINK_BACKOFF = Backoff(1.0, 30.0)
# A stream that fails again and again is restarted less and less often, up to a
# minute apart; half the wait is jitter so that streams failing together spread out.
_RESTART_BACKOFF = Backoff(4.0, 60.0)


class StreamRunner:
    """Runs one stream: sink, destination, source, and their readiness."""

    def __init__(self, cfg: StreamConfig):
        self.cfg = cfg
        self.name = cfg.name
        self.source_ready = False
        self.sink_ready = False
        self.healthy = True
        self.sink: Sink | None = None
        self.long_commit = session_bounds(cfg).long_commit
        self._publish()  # 0 from the start: a sink down at start-up must show (and alert)

    @property
    def ready(self) -> bool:
        return self.not_ready_reason() is None

    def not_ready_reason(self) -> str | None:
        """Why `/readyz` reports this stream not ready, or None when it is ready."""
        if not self.sink_ready:
            return "its sink is not open (not reachable yet)"
        if not self.source_ready:
            return "its source is not reached"
        if not self.healthy:
            return "retrying a transient error (a commit or a receive: the log says which)"
        age = self.sink.commit_age() if self.sink is not None else 0.0
        if age > self.long_commit:
            # Past the bound no frozen peer can be the cause (the database has ended its
            # session by then): the database or the network to it is not answering.
            return f"a commit has been running for {age:.0f} s (more than {self.long_commit:g} s)"
        return None

    def _set_source_ready(self) -> None:
        self.source_ready = True
        self._publish()

    def _set_health(self, ok: bool) -> None:
        if ok != self.healthy:
            self.healthy = ok
            log.info("stream health changed", stream=self.name, healthy=ok)
        self._publish()

    def _publish(self) -> None:
        metrics.READY.labels(self.name).set(1 if self.ready else 0)

    async def run(self, stop: asyncio.Event) -> None:
        structlog.contextvars.bind_contextvars(stream=self.name)
        cfg = self.cfg
        is_sqs = isinstance(cfg.source, SqsSource)
        # A stream without on_failure keeps failures in a table: the sink's database,
        # or a handler or lambda sink's checkpoint store. SQS has the queue's redrive.
        default_table = not is_sqs
        destination = build_destination(cfg.on_failure, default_table)
        sink = build_sink(cfg, failures_table_of(cfg, default_table))
        self.sink = sink
        await self._open_sink(sink, stop)
        if stop.is_set():
            await sink.close()
            return
        try:
            await destination.open()
            # One AWS clock for the stream: the source measures it on its clients and
            # takes its stored start from it; records are judged old against it.
            clock = AwsClock.of(cfg)
            preparer = Preparer(cfg, sink, clock=clock.now)
            source = self._source(sink, destination, preparer, clock)
            async with announced(sink, self.name):  # what the operator commands see as running
                await source.run(stop)
        finally:
            self.source_ready = False
            self._publish()
            await destination.close()
            await sink.close()

    def _source(self, sink: Sink, destination: Any, preparer: Preparer, clock: AwsClock) -> Any:
        kind = self.cfg.source.type
        if kind == "sqs":
            from poller.sources.sqs import SqsConsumer

            return SqsConsumer(
                self.cfg, sink, destination, preparer, self._set_source_ready, self._set_health, clock
            )
        if kind == "kinesis":
            from poller.sources.kinesis import KinesisConsumer

            return KinesisConsumer(
                self.cfg, sink, destination, preparer, self._set_source_ready, self._set_health, clock
            )
        from poller.sources.dynamodb_streams import DynamoDBStreamsConsumer

        return DynamoDBStreamsConsumer(
            self.cfg, sink, destination, preparer, self._set_source_ready, self._set_health, clock
        )

    async def _open_sink(self, sink: Sink, stop: asyncio.Event) -> None:
        attempt = 0
        while not stop.is_set():
            try:
                await sink.open()
                self.sink_ready = True
                self._publish()
                log.info("sink ready", stream=self.name, sink=sink.kind)
                return
            except TransientError as e:
                attempt += 1
                (log.warning if attempt < 3 else log.error)(
                    "sink not reachable, retrying", stream=self.name, error=str(e), attempt=attempt
                )
                await sink.close()
                await sleep_unless(stop, _SINK_BACKOFF.delay(attempt))


class Supervisor:
    def __init__(
        self,
        streams: list[StreamConfig],
        http_port: int = 8080,
        http_host: str = "0.0.0.0",
        shutdown_timeout: float = 25.0,
    ):
        self.runners = [StreamRunner(s) for s in streams]
        self.http = HttpServer(http_port, http_host, self.readiness)
        self.shutdown_timeout = shutdown_timeout
        self.stop = asyncio.Event()
        self._signals = 0
        self._tasks: list[asyncio.Task[None]] = []
        self.config_failures = 0  # streams stopped because their config does not fit the source

    def readiness(self) -> dict[str, str | None]:
        """Stream → why it is not ready, None when it is."""
        reasons = {}
        for r in self.runners:
            reasons[r.name] = r.not_ready_reason()
            r._publish()  # a long commit changes readiness with no event of its own
        return reasons

    def _on_signal(self, signum: int) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info(
                "stopping: draining in-flight batches",
                signal=signal.Signals(signum).name,
                deadline_seconds=self.shutdown_timeout,
            )
            self.stop.set()
        else:
            log.warning("second signal: stopping now")
            for t in self._tasks:
                t.cancel()

    async def _supervise(self, runner: StreamRunner) -> None:
        attempt = 0
        while not self.stop.is_set():
            try:
                await runner.run(self.stop)
                return
            except asyncio.CancelledError:
                raise
            except ConfigError as e:
                # Found only once the source answered (e.g. a DynamoDB stream view type
                # the mapping cannot use): a restart cannot help, the stream file must change.
                log.error(
                    "stream stopped: its configuration does not fit its source",
                    stream=runner.name,
                    problems=e.problems,
                )
                self.config_failures += 1
                runner.source_ready = False
                runner._publish()
                return
            except Exception as e:
                attempt += 1
                delay = _RESTART_BACKOFF.ceiling(attempt) / 2 + _RESTART_BACKOFF.delay(attempt) / 2
                log.error(
                    "stream failed; restarting",
                    stream=runner.name,
                    error=f"{type(e).__name__}: {e}",
                    restart_in_seconds=delay,
                    exc_info=True,
                )
                runner.source_ready = False
                runner._publish()
                await sleep_unless(self.stop, delay)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        await self.http.start()
        log.info("poller started", streams=[r.name for r in self.runners], http_port=self.http.port)
        self._tasks = [asyncio.create_task(self._supervise(r), name=f"stream-{r.name}") for r in self.runners]
        try:
            stopper = asyncio.create_task(self.stop.wait())
            await asyncio.wait([stopper, *self._tasks], return_when=asyncio.FIRST_COMPLETED)
            if not self.stop.is_set():
                # Every stream ended by itself (e.g. a stream configured to stop on trim).
                await asyncio.gather(*self._tasks, return_exceptions=True)
                stopper.cancel()
                return 2 if self.config_failures else 0  # 2: as `poller check` for a bad config
            _, pending = await asyncio.wait(self._tasks, timeout=self.shutdown_timeout)
            code = 0
            if pending:
                log.error("shutdown deadline passed; cancelling", streams=[t.get_name() for t in pending])
                for t in pending:
                    t.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                code = 1
            if self._signals > 1:
                code = 1
            log.info("poller stopped", exit_code=code)
            return code
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await self.http.stop()
