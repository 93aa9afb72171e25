"""What every source is handed by the stream runner."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from poller.aws_clock import AwsClock
from poller.config import StreamConfig
from poller.processing.pipeline import Preparer
from poller.sink_api import FailureDestination, Sink


class SourceConsumer:
    """The stream's config, where rows go, where failures go, how records
    become commit units, and how to report readiness; `run` until `stop`.
    `clock` is AWS's time for the moments the source stores (it watches the
    source's AWS clients); the preparer's record-age check should share it."""

    def __init__(
        self,
        cfg: StreamConfig,
        sink: Sink,
        destination: FailureDestination,
        preparer: Preparer,
        on_source_ready: Callable[[], None],
        on_health: Callable[[bool], None],
        clock: AwsClock | None = None,
    ):
        self.cfg = cfg
        self.name = cfg.name
        self.sink = sink
        self.destination = destination
        self.preparer = preparer
        self.on_source_ready = on_source_ready
        self.on_health = on_health
        self.clock = clock or AwsClock.of(cfg)

    async def run(self, stop: asyncio.Event) -> None:
        raise NotImplementedError
