"""Stream files: pydantic models, YAML loading and `${VAR}` interpolation.

Every model forbids unknown keys so a typo is an error, not a silently ignored
setting. `load_path` turns every failure into a `ConfigError` whose lines name
the file, the field path and what was expected: files are read with bounded
work (`safe_yaml`), no float setting is infinite, and every line is redacted
(`poller.redaction`), so `poller check` never prints a password, a traceback,
or runs for long, whatever the file holds.
"""

from __future__ import annotations

import os
import re
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from poller import dsn as dsn_rules
from poller import safe_yaml
from poller.redaction import redact, register_dsn

DecoderName = Literal["json", "text", "none", "kpl", "cloudwatch_logs", "mysql_audit"]


class Strict(BaseModel):
    # No float setting means anything at inf or NaN (YAML `.inf`, `1.0e+400`): refused by name.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class AwsEndpoint(Strict):
    region: str | None = Field(None, description="AWS region; default from AWS_REGION / AWS_DEFAULT_REGION.")
    endpoint_url: str | None = Field(
        None,
        description="VPC interface endpoint or local emulator URL. Empty means the default; "
        "AWS_ENDPOINT_URL_<SERVICE> and AWS_ENDPOINT_URL are honoured too.",
    )

    @field_validator("endpoint_url")
    @classmethod
    def _empty_is_none(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            return None
        if v is not None and not re.match(r"^https?://", v):
            raise ValueError("must start with http:// or https://")
        return v


StartingPosition = Literal["TRIM_HORIZON", "LATEST", "AT_TIMESTAMP"]
RetentionGapPolicy = Literal["continue", "stop", "snapshot"]


class ShardSourceCommon(AwsEndpoint):
    starting_position: StartingPosition = "TRIM_HORIZON"
    starting_timestamp: datetime | None = None
    latest_margin_seconds: float = Field(
        60.0,
        ge=0,
        le=3600,
        description="A LATEST start is stored as the first start's time minus this margin (room for "
        "this host's clock running ahead of AWS's): after a restart, a shard that had committed "
        "nothing yet is read from there, not from its oldest record.",
    )
    parallelization_factor: int = Field(1, ge=1, le=10)
    idle_poll_seconds: float = Field(
        1.0, ge=0.05, le=30, description="Wait between reads of a shard that is caught up."
    )
    max_idle_poll_seconds: float = Field(
        2.0,
        ge=0.05,
        le=60,
        description="A shard that keeps answering empty is read less and less often, doubling the wait "
        "from idle_poll_seconds up to this (idle cost against the latency of a first record). "
        "Set it equal to idle_poll_seconds to poll at a fixed rate.",
    )
    shard_discovery_seconds: float = Field(
        30.0, ge=0.5, le=3600, description="How often shards are listed to find new ones."
    )
    prefetch_records: int = Field(
        10_000, ge=100, le=1_000_000, description="Records read ahead per shard (bounds memory)."
    )
    on_retention_gap: RetentionGapPolicy | None = Field(
        None,
        description="When records were lost because a checkpoint fell behind the stream's retention "
        "(a trimmed position, a shard gone before it was read to its end, a resumed Kinesis "
        "checkpoint whose record is gone): `continue` from the oldest record still held, `stop` "
        "the stream, or (DynamoDB only) `snapshot`: re-sync the table with a new snapshot, then "
        "the stream from there. Every gap is counted (poller_retention_gaps_total) and logged as "
        "an error naming the time range lost. Default: continue (DynamoDB: as `on_trimmed`).",
    )

    @model_validator(mode="after")
    def _timestamp_needed(self) -> ShardSourceCommon:
        if self.starting_position == "AT_TIMESTAMP" and self.starting_timestamp is None:
            raise ValueError("starting_position AT_TIMESTAMP needs starting_timestamp")
        return self


class KinesisSource(ShardSourceCommon):
    type: Literal["kinesis"]
    stream: str = Field(..., min_length=1, description="Stream name or ARN.")
    max_records_per_call: int = Field(10_000, ge=1, le=10_000)

    @model_validator(mode="after")
    def _no_snapshot_policy(self) -> KinesisSource:
        if self.on_retention_gap == "snapshot":
            raise ValueError("on_retention_gap `snapshot` is for DynamoDB sources only: continue or stop")
        return self

    @property
    def retention_gap_policy(self) -> str:
        return self.on_retention_gap or "continue"


class SnapshotConfig(Strict):
    """A DynamoDB source's initial snapshot: the table's items, then its stream."""

    mode: Literal["none", "initial", "only"] = Field(
        "none",
        description="none: the stream alone. initial: record the stream position, scan the whole table "
        "(each item as an INSERT whose new image is the item, through the same filters and "
        "columns as stream records), then read the stream from the recorded position, so the "
        "target converges to the table. only: the scan, then the stream ends. A completed "
        "snapshot is recorded and not taken again (a whole-stream `poller checkpoints rewind` "
        "asks for a new one).",
    )
    segments: int = Field(
        4, ge=1, le=1000, description="Parallel Scan segments (TotalSegments), each resumable on its own."
    )
    max_read_units_per_second: float | None = Field(
        None,
        gt=0,
        le=1_000_000,
        description="Read capacity the scan may consume per second, all segments together, from the "
        "Scan responses' ConsumedCapacity; absent: as fast as the table and the sink allow.",
    )
    consistent_read: bool = Field(
        False, description="Strongly consistent Scan pages (twice the read units of eventual reads)."
    )


class DynamoDBSource(ShardSourceCommon):
    type: Literal["dynamodb"]
    table: str | None = Field(None, description="Table name: its latest stream is read.")
    stream_arn: str | None = None
    max_records_per_call: int = Field(1000, ge=1, le=1000)
    on_trimmed: Literal["continue", "stop"] = Field(
        "continue", description="On TrimmedDataAccessException: go on from TRIM_HORIZON, or stop."
    )
    idle_poll_seconds: float = Field(0.5, ge=0.05, le=30)
    snapshot: SnapshotConfig = SnapshotConfig()

    @model_validator(mode="after")
    def _table_or_arn(self) -> DynamoDBSource:
        if (self.table is None) == (self.stream_arn is None):
            raise ValueError("give exactly one of `table` or `stream_arn`")
        if self.starting_position == "AT_TIMESTAMP":
            raise ValueError("DynamoDB Streams supports TRIM_HORIZON or LATEST only")
        if (
            self.on_retention_gap is not None
            and "on_trimmed" in self.model_fields_set
            and self.on_trimmed != self.on_retention_gap
        ):
            raise ValueError("on_trimmed and on_retention_gap disagree: give on_retention_gap alone")
        return self

    @property
    def retention_gap_policy(self) -> str:
        """`on_retention_gap`, or the older `on_trimmed` when it is not given."""
        return self.on_retention_gap or self.on_trimmed


class SqsSource(AwsEndpoint):
    type: Literal["sqs"]
    queue_url: str = Field(..., min_length=1)
    max_concurrency: int = Field(2, ge=1, le=100, description="Concurrent long-pollers.")
    wait_seconds: int = Field(20, ge=0, le=20, description="Long-poll wait (WaitTimeSeconds).")
    max_inflight_messages: int = Field(
        1000, ge=10, le=120_000, description="Messages received but not yet deleted."
    )
    max_inflight_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        le=16 * 1024**3,
        description="Bytes of messages (body and message attributes, as SQS counts a message's size) "
        "received but not yet deleted. A receive asks only for as many messages as fit if each were "
        "of the queue's MaximumMessageSize (up to 1 MiB), so the bound holds; one message larger than "
        "the bound is still taken when nothing else is held. The default holds 64 of the largest "
        "messages and leaves max_inflight_messages the bound for small ones.",
    )
    visibility_timeout_seconds: int | None = Field(
        None, ge=1, le=43_200, description="Override the queue's own VisibilityTimeout."
    )
    idempotency_retention_seconds: int = Field(
        14 * 86_400,
        ge=60,
        le=30 * 86_400,
        description="How long processed message ids are kept (SQS keeps messages 14 days at most).",
    )


SourceConfig = Annotated[KinesisSource | DynamoDBSource | SqsSource, Field(discriminator="type")]


class LimitsConfig(Strict):
    """What one source record may expand into while it is decoded; over a limit, the record
    is a decode error and goes to the failure destination with its payload."""

    max_records_per_payload: int = Field(
        10_000,
        ge=1,
        le=1_000_000,
        description="Records one source record may expand into at each expanding decode stage: user "
        "records of a KPL aggregate, log events of a CloudWatch Logs delivery. 10,000 is the most "
        "events one PutLogEvents call takes, and more than a KPL aggregate of the KPL's default size "
        "(50 KiB, at least 6 bytes a user record) can hold; raise it for producers that pack tiny "
        "user records into aggregates of up to 1 MiB.",
    )
    max_inflated_bytes: int = Field(
        16 * 1024 * 1024,
        ge=1024,
        le=1024**3,
        description="Bytes one source record may inflate to (gunzip of CloudWatch Logs deliveries, all "
        "of them together for a KPL aggregate of deliveries), checked while inflating. A delivery is "
        "at most one Kinesis record of gzip (1 MiB) and log text rarely compresses better than 10:1, "
        "so the default takes any real delivery and stops a gzip bomb (1000:1) after 16 MiB.",
    )
    max_json_depth: int = Field(
        256,
        ge=1,
        le=512,
        description="Deepest nesting of arrays and objects the json decoder accepts. Deeper values "
        "would exceed the interpreter's recursion limit later (mapping, the sink's JSON encoding); "
        "MySQL's JSON type stops at 100.",
    )


class BatchConfig(Strict):
    size: int = Field(100, ge=1, le=10_000)
    window_seconds: float = Field(0.5, ge=0, le=300)


class RetryConfig(Strict):
    max_attempts: int = Field(3, ge=1, le=10_000, description="Attempts per record; never infinite.")
    max_record_age_seconds: int | None = Field(None, ge=1, le=604_800)
    bisect_on_error: bool = True
    backoff_initial_seconds: float = Field(0.2, ge=0.001, le=60)
    backoff_max_seconds: float = Field(30.0, ge=0.01, le=3600)


_FALLBACK_DESCRIPTION = (
    "JSON-lines file (fsynced) that keeps, whole, a failure record the destination refused "
    "(a row the failure table refused even in safe form, a body over the queue's "
    "MaximumMessageSize): the stream never blocks on it and nothing is lost."
)


class TableDestination(Strict):
    type: Literal["table"]
    table: str = "poller_failures"
    fallback_path: str = Field(
        "poller-failures-fallback.jsonl", min_length=1, description=_FALLBACK_DESCRIPTION
    )

    @field_validator("table")
    @classmethod
    def _table_name(cls, v: str) -> str:
        return _identifier(v, table=True)


class SqsDestination(AwsEndpoint):
    type: Literal["sqs"]
    queue_url: str
    fallback_path: str = Field(
        "poller-failures-fallback.jsonl", min_length=1, description=_FALLBACK_DESCRIPTION
    )


class FileDestination(Strict):
    type: Literal["file"]
    path: str


OnFailure = Annotated[TableDestination | SqsDestination | FileDestination, Field(discriminator="type")]


def _identifier(name: str, *, table: bool, **limits: int) -> str:
    from poller.sinks.ddl import identifier_problem

    problem = identifier_problem(name, table=table, **limits)
    if problem:
        raise ValueError(f"{'table' if table else 'column'} {name!r}: {problem}")
    return name


def _server_dsn(v: str, schemes: tuple[str, ...], default_port: int | None = None) -> str:
    # DsnError never quotes the DSN; pydantic's own message would not either.
    try:
        parsed = dsn_rules.check(v, schemes)
        if default_port is not None:
            parsed.host_port(default_port)
    except dsn_rules.DsnError as e:
        raise ValueError(str(e)) from None
    return v


def _checkpoint_dsn(v: str) -> str:
    """A checkpoint store is SQLite, PostgreSQL or MySQL: any other scheme is refused
    here rather than taken for a SQLite file named after the DSN."""
    store = dsn_rules.kind(v)
    if store is None:
        scheme = dsn_rules.scheme_of(v)
        what = f"scheme {scheme!r}" if scheme else "an empty value"
        raise ValueError(f"{what} is not a checkpoint store: give {dsn_rules.CHECKPOINT_DSN_FORMS}")
    if store == "postgres":
        return _server_dsn(v, dsn_rules.POSTGRES_SCHEMES)
    if store == "mysql":
        return _server_dsn(v, dsn_rules.MYSQL_SCHEMES, 3306)
    return v


_STORE_NAMES = {"postgres": "PostgreSQL", "mysql": "MySQL", "sqlite": "SQLite"}


def _sink_dsn(v: str, sink_type: str, check: Any) -> str:
    """`check(v)`, whose refusal also says when the DSN is of another database than
    the sink's (a `postgresql://` DSN on a `mysql` sink), naming both by kind only."""
    try:
        return str(check(v))
    except ValueError as e:
        other = dsn_rules.kind(v) if dsn_rules.scheme_of(v) else None
        if other is None or other == sink_type:
            raise
        name = _STORE_NAMES[other]
        raise ValueError(
            f"{e} — this is a {name} DSN on a {sink_type} sink (for {name}, set `type: {other}`)"
        ) from None


# Shared by the database sinks and the user-code sinks' checkpoint stores (`poller/sinks/session_bounds.py`).
_IDLE_IN_TRANSACTION_DESCRIPTION = (
    "PostgreSQL and MySQL/MariaDB, where several processes share the rows (`coordination:`, or an SQS "
    "source): seconds the database lets one of this sink's sessions sit idle inside a transaction "
    "before it ends the session, so a replica frozen mid-commit (SIGSTOP, `docker pause`) releases "
    "the rows, checkpoints and leases others wait for. Statements wait at most a third of it for a "
    "row lock (5 s at most, a third of the lease period at most), and `/readyz` reports a commit "
    "running longer than it. Default: three lease periods, 30 s at least (SQS: 30 s). Given, it also "
    "applies to a single worker. Handler and lambda sinks: their database checkpoint_dsn."
)


class DatabaseSinkConfig(Strict):
    # Longest table or column name the database keeps (PostgreSQL truncates silently).
    _name_limits: ClassVar[dict[str, int]] = {}

    dsn: str = Field(..., min_length=1)
    table: str = Field(..., min_length=1)
    key: list[str] = Field(default_factory=list, description="Upsert key: a column name, or a list of them.")
    columns: dict[str, str] | None = Field(
        None, description="Column → JMESPath over the normalized record. Absent: append mode."
    )
    on_delete: Literal["delete", "soft_delete", "ignore"] = Field(
        "delete", description="What a REMOVE (DynamoDB) does to the row."
    )
    soft_delete_column: str | None = None
    pool_size: int = Field(2, ge=1, le=50)
    idle_in_transaction_seconds: int | None = Field(
        None, ge=5, le=3600, description=_IDLE_IN_TRANSACTION_DESCRIPTION
    )

    @model_validator(mode="after")
    def _keyed(self) -> DatabaseSinkConfig:
        if self.columns is not None:
            if not self.columns:
                raise ValueError("`columns` must map at least one column")
            if not self.key:
                raise ValueError("`key` is required when `columns` is given (the upsert key)")
            missing = [k for k in self.key if k not in self.columns]
            if missing:
                raise ValueError(f"key column(s) {missing} must also be in `columns`")
        if self.on_delete == "soft_delete" and not self.soft_delete_column:
            raise ValueError("on_delete soft_delete needs soft_delete_column")
        return self

    @field_validator("columns")
    @classmethod
    def _jmespath(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        import jmespath
        from jmespath.exceptions import JMESPathError

        for column, expr in (v or {}).items():
            try:
                jmespath.compile(expr)
            except JMESPathError as e:
                raise ValueError(f"column {column!r}: invalid JMESPath {expr!r}: {e}") from e
        return v

    @field_validator("table")
    @classmethod
    def _table_name(cls, v: str) -> str:
        return _identifier(v, table=True, **cls._name_limits)

    @field_validator("columns")
    @classmethod
    def _column_names(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        for column in v or {}:
            _identifier(column, table=False, **cls._name_limits)
        return v

    @field_validator("key", mode="before", json_schema_input_type=str | list[str])
    @classmethod
    def _one_key(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("key")
    @classmethod
    def _key_names(cls, v: list[str]) -> list[str]:
        for column in v:
            _identifier(column, table=False, **cls._name_limits)
        return v

    @field_validator("soft_delete_column")
    @classmethod
    def _soft_delete_name(cls, v: str | None) -> str | None:
        return None if v is None else _identifier(v, table=False, **cls._name_limits)


class PostgresSinkConfig(DatabaseSinkConfig):
    type: Literal["postgres"]
    _name_limits: ClassVar[dict[str, int]] = {"max_bytes": 63}

    @field_validator("dsn")
    @classmethod
    def _postgres_dsn(cls, v: str) -> str:
        return _sink_dsn(v, "postgres", lambda d: _server_dsn(d, dsn_rules.POSTGRES_SCHEMES))


class MysqlSinkConfig(DatabaseSinkConfig):
    type: Literal["mysql"]
    _name_limits: ClassVar[dict[str, int]] = {"max_chars": 64}

    @field_validator("dsn")
    @classmethod
    def _mysql_dsn(cls, v: str) -> str:
        schemes = (*dsn_rules.MYSQL_SCHEMES, "mysql+aiomysql")
        return _sink_dsn(v, "mysql", lambda d: _server_dsn(d, schemes, 3306))


class SqliteSinkConfig(DatabaseSinkConfig):
    type: Literal["sqlite"]
    dsn: str = Field(..., min_length=1, description="File path, or sqlite:///path.")

    @field_validator("dsn")
    @classmethod
    def _sqlite_dsn(cls, v: str) -> str:
        def check(d: str) -> str:
            if dsn_rules.kind(d) != "sqlite":
                raise ValueError("not a SQLite database: give a file path, sqlite:///path or file:path")
            return d

        return _sink_dsn(v, "sqlite", check)


class UserCodeSinkConfig(Strict):
    """What the `handler` and `lambda` sinks share: user code gets records as
    Lambda would, and checkpoints go to a store of their own."""

    checkpoint_dsn: str = Field(
        "poller-checkpoints.sqlite", description="sqlite path, postgres:// or mysql:// DSN"
    )
    report_batch_item_failures: bool = Field(
        True, description="Honour a returned `batchItemFailures` (Lambda: FunctionResponseTypes)."
    )
    tumbling_window_seconds: int = Field(
        0,
        ge=0,
        le=900,
        description="Lambda's TumblingWindowInSeconds (Kinesis and DynamoDB Streams): each shard's "
        "records are delivered in windows of this many seconds by arrival time, with the `state` "
        "the function returned passed to its next invocation of the window and a final invocation "
        "when the window ends (docs/migrating-from-lambda.md). 0: no windows.",
    )
    idle_in_transaction_seconds: int | None = Field(
        None, ge=5, le=3600, description=_IDLE_IN_TRANSACTION_DESCRIPTION
    )

    @field_validator("checkpoint_dsn")
    @classmethod
    def _checkpoint_store(cls, v: str) -> str:
        return _checkpoint_dsn(v)


class HandlerSinkConfig(UserCodeSinkConfig):
    type: Literal["handler"]
    handler: str = Field(..., pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    timeout_seconds: float = Field(60, gt=0, le=900)
    function_name: str | None = None
    memory_limit_in_mb: int = Field(128, ge=128, le=10_240)
    code_path: str | None = Field(
        None,
        description="Folder put first on the import path (Lambda's /var/task); default: the working folder.",
    )
    max_concurrency: int = Field(
        1,
        ge=1,
        le=64,
        description="Invocations of this handler that may overlap in the process. Lambda runs one at a "
        "time per sandbox, and handlers may keep per-invocation state in module globals.",
    )


class LambdaSinkConfig(AwsEndpoint, UserCodeSinkConfig):
    type: Literal["lambda"]
    function: str = Field(..., min_length=1, description="Function name, name:alias, or ARN.")
    qualifier: str | None = Field(None, description="Version or alias to invoke.")
    timeout_seconds: float = Field(
        900, gt=0, le=900, description="How long to wait for one Invoke (the function's own timeout or more)."
    )


SinkConfig = Annotated[
    PostgresSinkConfig | MysqlSinkConfig | SqliteSinkConfig | HandlerSinkConfig | LambdaSinkConfig,
    Field(discriminator="type"),
]


class CoordinationConfig(AwsEndpoint):
    """Several replicas of this stream file share its shards through leases
    (`poller.coordination`); region and endpoint_url are the DynamoDB table's."""

    lease_store: Literal["sink", "dynamodb"] = Field(
        "sink",
        description="sink: the table poller_leases in the sink's database (a handler or lambda sink: its "
        "checkpoint_dsn), where each commit checks the lease inside the row transaction; SQLite "
        "refuses a second worker. dynamodb: a DynamoDB table (created if missing) that also keeps "
        "the checkpoints, written conditionally on the lease (handler and lambda sinks).",
    )
    table: str = Field(
        "poller-leases",
        pattern=r"^[A-Za-z0-9_.-]{3,255}$",
        description="lease_store dynamodb: the table's name.",
    )
    lease_seconds: float = Field(
        10.0,
        ge=1,
        le=600,
        description="A lease not renewed for this long, as measured on the clock of the worker that "
        "watches it, may be taken; holders renew every third of it.",
    )
    worker_id: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_.:@/+=-]{0,200}$",
        description="This replica's name in the lease store; unique among the replicas running at once. "
        "Empty or absent: hostname-pid.",
    )


class StreamConfig(Strict):
    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    source: SourceConfig
    batch: BatchConfig = BatchConfig()
    filters: list[dict[str, Any]] = Field(default_factory=list, max_length=10)
    decode: DecoderName | list[DecoderName] = "json"
    limits: LimitsConfig = LimitsConfig()
    retry: RetryConfig = RetryConfig()
    on_failure: OnFailure | None = Field(
        None,
        description="Where records go that keep failing. Absent: on Kinesis and DynamoDB, the table "
        "poller_failures (in the sink's database; for handler and lambda sinks, in the checkpoint "
        "store); on SQS, back to the queue, whose redrive policy decides.",
    )
    sink: SinkConfig
    coordination: CoordinationConfig | None = Field(
        None,
        description="Several replicas sharing this stream's shards through leases. Absent: one worker "
        "reads every shard.",
    )

    @property
    def decoders(self) -> list[str]:
        return [self.decode] if isinstance(self.decode, str) else list(self.decode)

    @model_validator(mode="before")
    @classmethod
    def _user_code_reads_raw(cls, data: Any) -> Any:
        # User code gets the payload as Lambda gives it whatever the decoders
        # do, so by default nothing is decoded: a text payload must not fail
        # as bad JSON before it reaches a handler.
        if isinstance(data, dict) and "decode" not in data:
            sink = data.get("sink")
            if isinstance(sink, dict) and sink.get("type") in ("handler", "lambda"):
                return {**data, "decode": "none"}
        return data

    @field_validator("filters")
    @classmethod
    def _filters(cls, v: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from poller.processing.filters import compile_patterns

        compile_patterns(v)
        return v

    @model_validator(mode="after")
    def _coordination_fits(self) -> StreamConfig:
        c = self.coordination
        if c is None:
            return self
        if isinstance(self.source, SqsSource):
            raise ValueError(
                "coordination: an SQS queue needs no leases (replicas are competing consumers): remove it"
            )
        if c.lease_store == "dynamodb" and isinstance(self.sink, DatabaseSinkConfig):
            raise ValueError(
                "coordination.lease_store: dynamodb is for handler and lambda sinks; a database sink keeps "
                "its leases in its own database (lease_store: sink), where each commit checks its lease "
                "inside the row transaction"
            )
        return self

    @model_validator(mode="after")
    def _windows_fit(self) -> StreamConfig:
        sink = self.sink
        if not isinstance(sink, HandlerSinkConfig | LambdaSinkConfig) or not sink.tumbling_window_seconds:
            return self
        src = self.source
        if isinstance(src, SqsSource):
            raise ValueError(
                "sink.tumbling_window_seconds: windows are for Kinesis and DynamoDB Streams sources"
            )
        if src.parallelization_factor != 1:
            raise ValueError(
                "sink.tumbling_window_seconds: a window's records are delivered in shard order, one "
                "batch at a time: set source.parallelization_factor to 1"
            )
        if self.coordination is not None and self.coordination.lease_store == "dynamodb":
            raise ValueError(
                "sink.tumbling_window_seconds: the window state is kept with the checkpoints in the "
                "checkpoint store: use coordination.lease_store: sink"
            )
        return self

    @model_validator(mode="after")
    def _snapshot_in_one_process(self) -> StreamConfig:
        src = self.source
        if self.coordination is None or not isinstance(src, DynamoDBSource):
            return self
        if src.snapshot.mode != "none" or src.on_retention_gap == "snapshot":
            raise ValueError(
                "coordination: a snapshot is taken by one process: take it with this stream file "
                "without `coordination` and with snapshot.mode: only, then run the replicas with "
                "snapshot.mode: none (they read the stream from the snapshot's position); "
                "on_retention_gap: snapshot is refused with coordination for the same reason"
            )
        return self


# --------------------------------------------------------------------------- loading


class ConfigError(Exception):
    """A config problem; str() is one line per problem: `file: field: reason`.

    Every line is redacted (a DSN's password never shows, whatever it holds) and
    kept to one bounded line: it is printed by `poller check` and logged."""

    def __init__(self, problems: list[str]):
        lines = [_one_line(redact(p)) for p in problems]
        super().__init__("\n".join(lines))
        self.problems = lines


_MAX_LINE = 500
_MAX_PROBLEMS_PER_FILE = 20


def _one_line(text: str) -> str:
    text = " ".join(text.split("\n"))
    return text if len(text) <= _MAX_LINE else text[: _MAX_LINE - 3] + "..."


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(value: Any, env: dict[str, str], path: str = "") -> Any:
    """Replace `${VAR}` / `${VAR:-default}` in every string scalar (not in keys)."""
    if isinstance(value, dict):
        return {k: interpolate(v, env, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env, f"{path}.{i}") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in env and env[name] != "":
            return env[name]
        if default is not None:
            return default
        if name in env:
            return ""
        raise _MissingVar(path, name)

    return _VAR.sub(sub, value)


class _MissingVar(Exception):
    def __init__(self, path: str, name: str):
        super().__init__(f"{path}: environment variable {name} is not set (use ${{{name}:-default}})")


def _loc(loc: tuple[int | str, ...]) -> str:
    # Drop pydantic's discriminator tags (e.g. `source.kinesis.stream` → `source.stream`),
    # only right after a union field: `sink.postgres.table` is the field `sink.table`.
    parts: list[str] = []
    for i, p in enumerate(loc):
        if isinstance(p, str) and p in _TAGS and i > 0 and loc[i - 1] in _UNIONS:
            continue
        parts.append(str(p))
    return ".".join(parts) or "(top level)"


_UNIONS = {"source", "sink", "on_failure"}


_TAGS = {
    "kinesis",
    "dynamodb",
    "sqs",
    "postgres",
    "mysql",
    "sqlite",
    "handler",
    "lambda",
    "table",
    "file",
}


def _format_error(err: Any) -> str:
    msg = str(err["msg"])
    typ = err.get("type", "")
    if typ == "extra_forbidden":
        msg = "unknown field (not allowed here)"
    elif typ == "union_tag_invalid":
        ctx = err.get("ctx", {})
        msg = f"type {ctx.get('tag')!r} is not one of {ctx.get('expected_tags')}"
    elif typ == "union_tag_not_found":
        msg = "field `type` is required"
    elif typ == "missing":
        msg = "field required"
    elif typ == "literal_error":
        msg = f"expected {err.get('ctx', {}).get('expected')}, got {_short(err.get('input'))}"
    msg = msg.removeprefix("Value error, ")
    return f"{_loc(tuple(err['loc']))}: {msg}"


def parse_stream(data: Any, source_name: str, env: dict[str, str] | None = None) -> StreamConfig:
    if not isinstance(data, dict):
        raise ConfigError([f"{source_name}: expected a mapping of stream settings at the top level"])
    try:
        data = interpolate(data, dict(os.environ) if env is None else env)
    except _MissingVar as e:
        raise ConfigError([f"{source_name}: {e}"]) from None
    _register_secrets(data)
    try:
        return StreamConfig.model_validate(data)
    except ValidationError as e:
        errors = e.errors()
        problems = [f"{source_name}: {_format_error(err)}" for err in errors[:_MAX_PROBLEMS_PER_FILE]]
        if len(errors) > _MAX_PROBLEMS_PER_FILE:
            problems.append(f"{source_name}: ... and {len(errors) - _MAX_PROBLEMS_PER_FILE} more problems")
        raise ConfigError(problems) from None


def _register_secrets(value: Any) -> None:
    """Every URL password in the file is masked in all later output, however it is echoed."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, str) and "://" in v:
            register_dsn(v)


def _yaml_problem(e: yaml.YAMLError) -> str:
    if isinstance(e, yaml.reader.ReaderError):
        return f"invalid YAML: character #x{e.character:04x} at offset {e.position} is not allowed"
    mark = getattr(e, "problem_mark", None)
    where = f"line {mark.line + 1} column {mark.column + 1}: " if mark else ""
    return f"{where}invalid YAML: {getattr(e, 'problem', None) or e}"


def stream_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
        if not files:
            raise ConfigError([f"{path}: no .yaml or .yml stream files in this folder"])
        return files
    if path.exists():
        return [path]
    raise ConfigError([f"{path}: no such file or folder"])


def load_path(path: str | Path, env: dict[str, str] | None = None) -> list[StreamConfig]:
    """Load one stream file or a folder of them; all problems of all files are reported."""
    problems: list[str] = []
    streams: list[StreamConfig] = []
    for file in stream_files(Path(path)):
        try:
            data = safe_yaml.read(file)
        except yaml.YAMLError as e:
            problems.append(f"{file}: {_yaml_problem(e)}")
            continue
        except safe_yaml.YamlProblem as e:
            problems.append(f"{file}: {e}")
            continue
        except OSError as e:
            problems.append(f"{file}: cannot read: {e.strerror}")
            continue
        try:
            streams.append(parse_stream(data, str(file), env))
        except ConfigError as e:
            problems.extend(e.problems)
        except Exception as e:  # a validator's bug must not hide the other files' problems
            problems.append(f"{file}: cannot be checked: {type(e).__name__}: {e}")
    names: dict[str, int] = {}
    for s in streams:
        names[s.name] = names.get(s.name, 0) + 1
    problems += [f"{path}: name: stream name {n!r} is used by {c} files" for n, c in names.items() if c > 1]
    if problems:
        raise ConfigError(problems)
    return streams


def json_schema() -> dict[str, Any]:
    return StreamConfig.model_json_schema()


# Names from before the rename to `...Config` (kept so older imports work).
DatabaseSink = DatabaseSinkConfig
PostgresSink = PostgresSinkConfig
MysqlSink = MysqlSinkConfig
SqliteSink = SqliteSinkConfig
HandlerSink = HandlerSinkConfig
LambdaSink = LambdaSinkConfig
