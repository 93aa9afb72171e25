"""DynamoDB Streams: the `ShardApi` adapter over aiobotocore, and the consumer
that runs the shared shard machinery (`poller.sources.shards`) on it.

What differs from Kinesis stays here, behind the same four calls:

- The stream is found from the table (DescribeTable → LatestStreamArn) or
  given as an ARN; shards are listed with DescribeStream, paged by
  `ExclusiveStartShardId`. A shard has one parent at most (no merges).
- The view type (KEYS_ONLY, NEW_IMAGE, ...) is only known once DescribeStream
  answers; a mapping that needs what it leaves out stops the stream at start
  with a `ViewTypeMismatch` naming the field (see `dynamodb_views`).
- TrimmedDataAccessException (the checkpoint or the iterator is older than
  the 24-hour retention) is a retention gap (`retention.report_gap`: counted,
  logged with the time range lost, found by reading the oldest record still
  held), then, as `on_retention_gap` (or the older `on_trimmed`) says:
  reading goes on from TRIM_HORIZON, or the adapter stops the shard
  (`ShardStopped(TRIMMED)`) and the fleet stops the stream once what its
  lanes are committing is committed — for `stop`, and for `snapshot`, where
  the consumer then re-syncs the table (`snapshot.TableSnapshot.resync`).
- ResourceNotFoundException for a closed shard means it has been trimmed
  away entirely: the shard has ended, and what was left of it is a gap too.
- At most two readers per shard are allowed; the machinery runs one.

The consumer runs the table's snapshot first when `snapshot.mode` asks for
one (`snapshot`), checks the stored positions against the retention
(`retention.settle_vanished`; a snapshot whose recorded position has fallen
out of the retention at switch-over), then the shard fleet.

The client makes no retries of its own: the shard machinery retries every
call with its own backoff, so each throttling error is seen and counted.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any

from poller.aws import aws_client, classify_aws, error_code, region_of
from poller.config import ConfigError, DynamoDBSource
from poller.observability import metrics
from poller.observability.logging import get_logger
from poller.records import Record, RecordError, TransientError, seq_int
from poller.sources import fast_parse
from poller.sources.base import SourceConsumer
from poller.sources.dynamodb_records import creation_time, to_record
from poller.sources.dynamodb_views import check_view_type
from poller.sources.retention import DYNAMODB_RETENTION_SECONDS, report_gap, settle_vanished
from poller.sources.shards import (
    AFTER_SEQUENCE_NUMBER,
    AT_SEQUENCE_NUMBER,
    AT_TIMESTAMP,
    TRIM_HORIZON,
    IteratorExpired,
    ReadResult,
    ShardFleet,
    ShardInfo,
    ShardStopped,
    StopReason,
    Throttled,
    retrying,
)
from poller.sources.snapshot import SNAPSHOT_ID, TableSnapshot, switch_over_gap

__all__ = ["DynamoDBShardApi", "DynamoDBStreamsConsumer", "split_stream_arn"]

log = get_logger()

# Lambda polls a DynamoDB stream shard four times a second; so do we at most.
MIN_READ_INTERVAL = 0.25

_THROTTLED = {"LimitExceededException", "ThrottlingException", "ProvisionedThroughputExceededException"}

# What `iterator` returns for a shard that turned out to be gone: `read` then
# reports the shard as ended without calling AWS.
_ENDED = "poller:shard-ended:"


class _Trimmed(Exception):
    """TrimmedDataAccessException: the position asked for is past the retention."""


class _NotFound(Exception):
    """ResourceNotFoundException: the stream or the shard no longer exists."""


def split_stream_arn(arn: str) -> tuple[str, str | None]:
    """(table name, region or None) of `arn:aws:dynamodb:REGION:ACCOUNT:table/T/stream/LABEL`."""
    parts = arn.split(":", 5)
    resource = parts[5] if len(parts) == 6 and parts[0] == "arn" else ""
    table, mark, _ = resource.removeprefix("table/").partition("/stream/")
    if not resource.startswith("table/") or not mark or not table:
        raise ValueError(f"not a DynamoDB stream ARN: {arn!r}")
    return table, parts[3] or None


class DynamoDBShardApi:
    """The four calls the shard machinery needs, with DynamoDB Streams errors
    mapped to its own, plus trimming and vanished shards handled in place."""

    def __init__(
        self,
        client: Any,
        stream_arn: str,
        stream_label: str,
        region: str,
        *,
        on_retention_gap: str = "continue",
        policy_field: str = "on_retention_gap",
    ):
        self.client = client
        self.arn = stream_arn
        self.label = stream_label  # the configured stream name
        self.region = region
        self.on_retention_gap = on_retention_gap
        self.policy_field = policy_field  # the setting named in log lines
        self.view_type: str | None = None
        self.key_attributes: list[str] | None = None
        self.table: str | None = None
        self.closed: set[str] = set()  # shards listed with an ending sequence number
        # The shard of each live iterator, so a read that hits trimmed data can
        # reopen that shard; one entry per shard (`_current`), so it stays bounded.
        self._shard_of: dict[str, str] = {}
        self._current: dict[str, str] = {}
        # The last sequence number handed out per shard: a reopen at TRIM_HORIZON
        # must not hand back what was read before (see `read`).
        self._last_read: dict[str, int] = {}
        # DynamoDB Streams has no AT_TIMESTAMP iterator: a shard opened at a moment
        # is read from TRIM_HORIZON, dropping what was written before it.
        self._not_before: dict[str, float] = {}
        # Creation time of the last record handed out per shard: where a gap begins.
        self._last_time: dict[str, float] = {}

    # -- errors --------------------------------------------------------------------

    async def _call(self, operation: str, method: Any, **kwargs: Any) -> Any:
        try:
            return await method(**kwargs)
        except Exception as e:
            code = error_code(e)
            if code in _THROTTLED:
                raise Throttled(operation, f"{operation}: {code}: {e}") from e
            if code == "ExpiredIteratorException":
                raise IteratorExpired(str(e)) from e
            if code == "TrimmedDataAccessException":
                raise _Trimmed(str(e)) from e
            if code == "ResourceNotFoundException":
                raise _NotFound(str(e)) from e
            raise classify_aws(e) from e

    # -- the stream ----------------------------------------------------------------

    async def describe(self) -> str:
        """Learn the view type and key schema (first DescribeStream page)."""
        try:
            resp = await self._call(
                "DescribeStream", self.client.describe_stream, StreamArn=self.arn, Limit=1
            )
        except _NotFound as e:
            raise TransientError(f"stream {self.arn} not found: {e}") from e
        self._learn(resp["StreamDescription"])
        return str(resp["StreamDescription"].get("StreamStatus", ""))

    def _learn(self, description: dict[str, Any]) -> None:
        self.view_type = description.get("StreamViewType") or self.view_type
        self.table = description.get("TableName") or self.table
        schema = description.get("KeySchema")
        if schema:
            self.key_attributes = [k["AttributeName"] for k in schema]

    async def list_shards(self) -> list[ShardInfo]:
        shards: list[ShardInfo] = []
        kwargs: dict[str, Any] = {"StreamArn": self.arn}
        while True:
            try:
                resp = await self._call("DescribeStream", self.client.describe_stream, **kwargs)
            except _NotFound as e:
                raise TransientError(f"stream {self.arn} not found: {e}") from e
            description = resp["StreamDescription"]
            self._learn(description)
            for s in description.get("Shards", []):
                parent = s.get("ParentShardId")
                closed = "EndingSequenceNumber" in s.get("SequenceNumberRange", {})
                shards.append(ShardInfo(s["ShardId"], (parent,) if parent else (), closed))
            last = description.get("LastEvaluatedShardId")
            if not last:
                break
            kwargs = {"StreamArn": self.arn, "ExclusiveStartShardId": last}
        self.closed = {s.shard_id for s in shards if s.closed}
        return shards

    # -- reading -------------------------------------------------------------------

    async def iterator(
        self,
        shard_id: str,
        kind: str,
        sequence_number: str | None = None,
        timestamp: datetime | None = None,
    ) -> str:
        if kind == AT_TIMESTAMP and timestamp is not None:
            # Creation times are whole seconds: keep the second the moment falls in.
            self._not_before[shard_id] = float(int(timestamp.timestamp()))
            kind = TRIM_HORIZON
        kwargs: dict[str, Any] = {"StreamArn": self.arn, "ShardId": shard_id, "ShardIteratorType": kind}
        if kind in (AT_SEQUENCE_NUMBER, AFTER_SEQUENCE_NUMBER):
            kwargs["SequenceNumber"] = sequence_number
        try:
            try:
                resp = await self._call("GetShardIterator", self.client.get_shard_iterator, **kwargs)
            except _Trimmed as e:
                await self._trimmed(shard_id, f"{kind} {sequence_number}", e)
                kwargs = {"StreamArn": self.arn, "ShardId": shard_id, "ShardIteratorType": TRIM_HORIZON}
                resp = await self._call("GetShardIterator", self.client.get_shard_iterator, **kwargs)
        except _NotFound as e:
            return await self._gone(shard_id, e)
        iterator: str = resp["ShardIterator"]
        self._track(shard_id, iterator)
        return iterator

    async def read(self, iterator: str, limit: int) -> ReadResult:
        if iterator.startswith(_ENDED):
            return ReadResult([], None)
        shard_id = self._shard_of.get(iterator)
        try:
            resp = await self._call(
                "GetRecords", self.client.get_records, ShardIterator=iterator, Limit=limit
            )
        except _Trimmed as e:
            if shard_id is None:
                raise IteratorExpired(f"trimmed, shard unknown: {e}") from e  # reopens where reading stopped
            await self._trimmed(shard_id, "the shard iterator", e)
            return ReadResult([], await self.iterator(shard_id, TRIM_HORIZON))
        except _NotFound as e:
            if shard_id is None:
                raise RecordError(f"GetRecords: {e}") from e
            await self._gone(shard_id, e)
            return ReadResult([], None)
        following: str | None = resp.get("NextShardIterator")
        records: list[dict[str, Any]] = resp.get("Records", [])
        if shard_id is not None:
            records = self._unread(shard_id, records)
            if shard_id in self._not_before:
                records = self._since(shard_id, records)
            if following:
                self._track(shard_id, following)
            else:
                self._forget(shard_id)
        return ReadResult(records, following)

    def to_record(self, raw: dict[str, Any], shard_id: str) -> Record:
        return to_record(raw, stream=self.label, shard_id=shard_id, stream_arn=self.arn, region=self.region)

    def forget_reads(self) -> None:
        """Forget every shard's reading state, for a fleet that starts over (after a re-sync)."""
        for shard_id in list(self._current):
            self._forget(shard_id)
        self._shard_of.clear()
        self._last_read.clear()
        self._not_before.clear()
        self._last_time.clear()

    # -- the DynamoDB-specific cases -----------------------------------------------

    def _track(self, shard_id: str, iterator: str) -> None:
        old = self._current.get(shard_id)
        if old is not None:
            self._shard_of.pop(old, None)
        self._current[shard_id] = iterator
        self._shard_of[iterator] = shard_id

    def _forget(self, shard_id: str) -> None:
        old = self._current.pop(shard_id, None)
        if old is not None:
            self._shard_of.pop(old, None)
        self._last_read.pop(shard_id, None)
        self._not_before.pop(shard_id, None)
        self._last_time.pop(shard_id, None)

    def _unread(self, shard_id: str, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Drop records already handed out. On AWS a TRIM_HORIZON reopen after a
        trim only returns newer records; this makes sure of it, because the shard
        machinery drops old records only when it resumes from a checkpoint."""
        if not records:
            return records
        last = self._last_read.get(shard_id)
        if last is not None and seq_int(records[0]["dynamodb"]["SequenceNumber"]) <= last:
            records = [r for r in records if seq_int(r["dynamodb"]["SequenceNumber"]) > last]
        if records:
            self._last_read[shard_id] = seq_int(records[-1]["dynamodb"]["SequenceNumber"])
            self._last_time[shard_id] = creation_time(records[-1])
        return records

    def _since(self, shard_id: str, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Drop records created before the shard's start moment, up to the first one after it."""
        moment = self._not_before[shard_id]
        for i, r in enumerate(records):
            created = creation_time(r)
            if created >= moment or not created:  # no creation time: keep rather than lose
                del self._not_before[shard_id]
                return records[i:]
        return []

    async def _gone(self, shard_id: str, error: Exception) -> str:
        """A closed shard past retention has ended, and what was left unread in it
        is a retention gap; an open one vanishing means the stream itself is gone,
        which the stream must not take as an end."""
        if shard_id not in self.closed:
            raise RecordError(f"shard {shard_id} of {self.arn} not found while open: {error}")
        policy = self.on_retention_gap
        report_gap(
            self.label,
            shard_id,
            "closed shard no longer exists (trimmed away, past the stream's 24-hour retention) "
            f"before it was read to its end: what was left in it is lost; {self._action()}",
            policy=policy,
            lost_from=self._last_time.get(shard_id),
            lost_until=time.time() - DYNAMODB_RETENTION_SECONDS,
            error=str(error),
        )
        self._stop_if_configured(shard_id)
        log.info("closed shard no longer exists: it has ended", stream=self.label, shard=shard_id)
        self._forget(shard_id)
        return _ENDED + shard_id

    async def _trimmed(self, shard_id: str, what: str, error: Exception) -> None:
        """Count and log lost data; go on from TRIM_HORIZON, or stop the shard (and so the stream)."""
        metrics.TRIMMED.labels(self.label, shard_id).inc()
        report_gap(
            self.label,
            shard_id,
            "records were trimmed before they were read (older than the stream's 24-hour "
            f"retention); {self._action()}",
            policy=self.on_retention_gap,
            lost_from=self._last_time.get(shard_id),
            lost_until=await self._oldest(shard_id),
            position=what,
            error=str(error),
        )
        self._stop_if_configured(shard_id)

    def _action(self) -> str:
        policy = self.on_retention_gap
        if policy == "stop":
            return f"stopping the stream as configured ({self.policy_field}: stop)"
        if policy == "snapshot":
            return f"re-syncing the table with a new snapshot as configured ({self.policy_field}: snapshot)"
        return "continuing from TRIM_HORIZON, the trimmed records are lost"

    def _stop_if_configured(self, shard_id: str) -> None:
        if self.on_retention_gap in ("stop", "snapshot"):
            raise ShardStopped(StopReason.TRIMMED, f"{shard_id}: retention gap")

    async def _oldest(self, shard_id: str) -> float | None:
        """When the oldest record the shard still holds was created: where the gap
        ends (now, if it holds none). Read apart from the shard's own iterator."""
        try:
            resp = await self._call(
                "GetShardIterator",
                self.client.get_shard_iterator,
                StreamArn=self.arn,
                ShardId=shard_id,
                ShardIteratorType=TRIM_HORIZON,
            )
            page = await self._call(
                "GetRecords", self.client.get_records, ShardIterator=resp["ShardIterator"], Limit=1
            )
        except Exception as e:  # only a log field depends on it
            log.warning("could not read the oldest record still held", stream=self.label, error=str(e))
            return None
        records = page.get("Records") or []
        return creation_time(records[0]) if records else time.time()


class DynamoDBStreamsConsumer(SourceConsumer):
    """Runs one DynamoDB stream: find it, check the mapping fits its view type,
    take the table's snapshot if one is wanted, then the shard fleet until
    `stop` — acting on retention gaps as `on_retention_gap` says."""

    @property
    def src(self) -> DynamoDBSource:
        assert isinstance(self.cfg.source, DynamoDBSource)
        return self.cfg.source

    async def run(self, stop: asyncio.Event) -> None:
        name = self.cfg.name
        arn_region = None
        if self.src.stream_arn:
            try:
                arn_region = split_stream_arn(self.src.stream_arn)[1]
            except ValueError as e:
                raise ConfigError([f"stream {name!r}: source.stream_arn: {e}"]) from None
        region = region_of(self.src.region or arn_region)
        if self.src.snapshot.mode == "only":
            await self._snapshot_only(stop, region)
            return
        endpoint = self.src.endpoint_url
        arn = self.src.stream_arn or await self._latest_stream_arn(stop, region)
        if arn is None:
            return
        policy = self.src.retention_gap_policy
        field = "on_retention_gap" if self.src.on_retention_gap else "on_trimmed"
        async with (
            aws_client("dynamodbstreams", region, endpoint, max_attempts=0) as client,
            aws_client("dynamodb", region, endpoint, max_attempts=0) as ddb,
        ):
            fast_parse.install(client, ["GetRecords"])  # as for Kinesis: the parser is most of the CPU
            fast_parse.install(ddb, ["Scan"])
            self.clock.watch(client)
            self.clock.watch(ddb)
            api = DynamoDBShardApi(client, arn, name, region, on_retention_gap=policy, policy_field=field)
            status = await retrying(stop, name, "DescribeStream", api.describe)
            if status is None:
                return
            assert api.view_type is not None
            check_view_type(self.cfg, arn, api.view_type, api.key_attributes)
            log.info(
                "stream found",
                stream=name,
                table=api.table,
                stream_arn=arn,
                view_type=api.view_type,
                status=status,
            )
            table = api.table or split_stream_arn(arn)[0]
            snapshot = self._snapshot(ddb, table, region, arn, api.view_type)
            if not await snapshot.load(stop):
                return
            action: str | None = "continue"
            if snapshot.wanted():
                self.on_source_ready()
                action = await self._scan(stop, snapshot, policy)
            while action is not None and not stop.is_set():
                if action == "stop":
                    log.error(f"stream stopped after a retention gap ({field}: stop)", stream=name)
                    return
                if action == "snapshot":
                    action = await self._scan(stop, snapshot, policy, resync=True)
                    continue
                action = await settle_vanished(stop, name, self.sink, api, policy, DYNAMODB_RETENTION_SECONDS)
                if action != "continue":
                    continue
                api.forget_reads()
                if await self._fleet(api).run(stop) is not StopReason.TRIMMED:
                    return
                action = policy if policy != "continue" else None

    def _snapshot(
        self, ddb: Any, table: str, region: str, arn: str | None, view_type: str | None
    ) -> TableSnapshot:
        return TableSnapshot(
            self.cfg,
            self.sink,
            self.destination,
            self.preparer,
            ddb,
            table,
            region,
            self.on_health,
            stream_arn=arn,
            view_type=view_type,
            now=self.clock.now_utc,
        )

    def _fleet(self, api: DynamoDBShardApi) -> ShardFleet:
        return ShardFleet.of(self, api, MIN_READ_INTERVAL)

    async def _scan(
        self, stop: asyncio.Event, snapshot: TableSnapshot, policy: str, *, resync: bool = False
    ) -> str | None:
        """Take (or resume) the snapshot; then what to do at switch-over: `continue`
        to the stream, or the policy for a gap (None: stopped)."""
        done = await (snapshot.resync(stop) if resync else snapshot.run(stop))
        if not done:
            return None
        state = snapshot.state
        if not snapshot.completed_now or state is None or state.done is None:
            return "continue"
        gap = switch_over_gap(state.began, state.done, DYNAMODB_RETENTION_SECONDS)
        if gap is None:
            return "continue"
        report_gap(
            self.cfg.name,
            SNAPSHOT_ID,
            "the snapshot took longer than the stream's 24-hour retention: the changes made early in "
            "the scan are gone from the stream, and the target may miss them",
            policy=policy,
            lost_from=gap[0],
            lost_until=gap[1],
        )
        return policy

    async def _snapshot_only(self, stop: asyncio.Event, region: str) -> None:
        """`snapshot.mode: only`: the table's items, then the stream ends; no stream is read."""
        src = self.src
        table = src.table or split_stream_arn(src.stream_arn or "")[0]
        async with aws_client("dynamodb", region, src.endpoint_url, max_attempts=0) as ddb:
            fast_parse.install(ddb, ["Scan"])
            self.clock.watch(ddb)
            snapshot = self._snapshot(ddb, table, region, None, None)
            if not await snapshot.load(stop):
                return
            self.on_source_ready()
            if snapshot.state is not None and snapshot.state.done is not None:
                log.info(
                    "snapshot already complete (snapshot.mode: only): nothing to do", stream=self.cfg.name
                )
                return
            if await snapshot.run(stop):
                log.info("snapshot.mode is only: the stream is not read", stream=self.cfg.name)

    async def _latest_stream_arn(self, stop: asyncio.Event, region: str) -> str | None:
        """The table's current stream; waits (with backoff) while the table or its stream is missing."""
        table = self.src.table
        assert table is not None

        async with aws_client("dynamodb", region, self.src.endpoint_url, max_attempts=0) as ddb:
            self.clock.watch(ddb)

            async def describe() -> str:
                try:
                    resp = await ddb.describe_table(TableName=table)
                except Exception as e:
                    if error_code(e) == "ResourceNotFoundException":
                        raise TransientError(f"table {table!r} not found") from e
                    raise classify_aws(e) from e
                t = resp["Table"]
                spec = t.get("StreamSpecification") or {}
                arn = t.get("LatestStreamArn")
                if not spec.get("StreamEnabled") or not arn:
                    raise TransientError(
                        f"table {table!r} has no stream enabled: enable DynamoDB Streams on it "
                        "(e.g. StreamViewType NEW_AND_OLD_IMAGES)"
                    )
                return str(arn)

            return await retrying(stop, self.cfg.name, "DescribeTable", describe, table=table)
