"""Prometheus metrics. Names follow `poller_` + base units + `_total` for counters.

Label sets stay small and bounded: stream names come from config, shard ids
from the source (a few hundred at most), outcomes and reasons from fixed sets.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

RECORDS = Counter(
    "poller_records_total",
    "Records by outcome: received, written, filtered, failed, duplicate.",
    ["stream", "outcome"],
)
BATCH_SIZE = Histogram(
    "poller_batch_size",
    "Records per committed batch.",
    ["stream"],
    buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
)
BATCH_DURATION = Histogram(
    "poller_batch_duration_seconds",
    "Time from a batch's first commit attempt to its commit, retries included.",
    ["stream"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
RETRIES = Counter(
    "poller_retries_total",
    "Retried commits by error class (transient, record).",
    ["stream", "error_class"],
)
BISECTIONS = Counter(
    "poller_bisections_total", "Batches split in two to isolate a failing record.", ["stream"]
)
FAILED = Counter(
    "poller_failed_records_total",
    "Records sent to the on-failure destination (or dropped: destination=none).",
    ["stream", "destination", "reason"],
)
FAILED_FALLBACK = Counter(
    "poller_failed_records_fallback_total",
    "Failure records the destination refused, kept whole in the fallback file instead.",
    ["stream", "destination"],
)
SINK_ERRORS = Counter("poller_sink_errors_total", "Errors raised by the sink.", ["stream", "error_class"])
LOCK_WAITS = Counter(
    "poller_lock_waits_total",
    "Commits that waited for a lock another transaction held past the lock-wait bound (a replica "
    "frozen mid-commit, a long transaction); each is also a transient retry.",
    ["stream"],
)
SQS_INFLIGHT = Gauge("poller_sqs_inflight_messages", "SQS messages received and not yet deleted.", ["stream"])
SQS_INFLIGHT_BYTES = Gauge(
    "poller_sqs_inflight_bytes",
    "Bytes of SQS messages (body and message attributes) received and not yet deleted.",
    ["stream"],
)
SQS_DELETED = Counter("poller_sqs_deleted_messages_total", "SQS messages deleted after commit.", ["stream"])
SQS_RELEASED = Counter(
    "poller_sqs_released_messages_total",
    "SQS messages made visible again for a later retry.",
    ["stream"],
)
SQS_VISIBILITY_EXTENSIONS = Counter(
    "poller_sqs_visibility_extensions_total",
    "In-flight messages whose visibility was extended.",
    ["stream"],
)
ITERATOR_AGE = Gauge(
    "poller_iterator_age_seconds",
    "Now minus the arrival time of the last record processed on a shard.",
    ["stream", "shard"],
)
MILLIS_BEHIND = Gauge(
    "poller_millis_behind_latest",
    "MillisBehindLatest of the last GetRecords call.",
    ["stream", "shard"],
)
GET_RECORDS = Counter("poller_get_records_calls_total", "GetRecords calls.", ["stream", "shard"])
THROTTLES = Counter(
    "poller_throttles_total",
    "Throttling errors from AWS (ProvisionedThroughputExceeded, KMS, SQS).",
    ["stream", "operation"],
)
SHARDS = Gauge("poller_shards", "Shards by state: waiting_on_parent, reading, ended.", ["stream", "state"])
BLOCKED = Gauge("poller_blocked", "1 while retries hold a shard (or SQS batch).", ["stream", "shard"])
READY = Gauge("poller_stream_ready", "1 when the stream has reached its source and its sink.", ["stream"])
CLOCK_SKEW = Gauge(
    "poller_clock_skew_seconds",
    "AWS's clock minus this host's (positive: AWS ahead), from the Date header of an AWS response "
    "at start and hourly; known within 0.5 s (the header's resolution) plus half the round trip.",
    ["stream"],
)
LEASES_HELD = Gauge("poller_leases_held", "Shard leases held by this process.", ["stream"])
DUPLICATE_WORKER_ID = Gauge(
    "poller_duplicate_worker_id",
    "1 while another live process holds leases of this stream under this process's worker_id "
    "(its tenure tokens are not this process's): this process takes no lease until they expire.",
    ["stream"],
)
TRIMMED = Counter(
    "poller_trimmed_reads_total",
    "Reads that found their position past the stream's retention (DynamoDB Streams "
    "TrimmedDataAccessException): the records in between were lost.",
    ["stream", "shard"],
)

# The series labelled by shard. A shard's are removed once this process is done
# with it (`forget_shard`), so a stream that reshards for months does not keep
# a series for every shard it ever had.
SHARD_SERIES = (ITERATOR_AGE, MILLIS_BEHIND, GET_RECORDS, BLOCKED, TRIMMED)


def forget_shard(stream: str, shard: str) -> None:
    for family in SHARD_SERIES:
        family.remove(stream, shard)


# --------------------------------------------------------------------------- ESM shape
# Lambda's event-source-mapping metrics, one to one, so a dashboard or alert
# written for an ESM translates by name: PolledEventCount → poller_events_polled_total,
# FilteredOutEventCount → _filtered_out_, InvokedEventCount → _delivered_,
# FailedInvokeEventCount → _failed_, DroppedEventCount → _dropped_,
# OnFailureDestinationDeliveredEventCount → _sent_to_failure_destination_,
# DeletedEventCount (SQS) → _deleted_. All but `failed` are read from the
# counters above at scrape time, so the two shapes can never disagree.
EVENTS_FAILED = Counter(
    "poller_events_failed_total",
    "Records in a delivery attempt that failed with a record error (Lambda: FailedInvokeEventCount); "
    "a record retried three times counts three.",
    ["stream"],
)

_ESM_EVENTS = {
    "polled": "Records read from the source (Lambda: PolledEventCount).",
    "filtered_out": "Records the filters dropped (Lambda: FilteredOutEventCount).",
    "delivered": "Records written to the sink (Lambda: InvokedEventCount).",
    "dropped": "Records given up on after their attempts or their age (Lambda: DroppedEventCount).",
    "sent_to_failure_destination": "Records sent to the on-failure destination "
    "(Lambda: OnFailureDestinationDeliveredEventCount).",
    "deleted": "SQS messages deleted after their commit (Lambda: DeletedEventCount).",
}
_FROM_OUTCOME = {
    "received": "polled",
    "filtered": "filtered_out",
    "written": "delivered",
    "failed": "dropped",
}


class _EsmEvents(Collector):
    def describe(self) -> Iterable[Metric]:
        return [_family(event, help_text) for event, help_text in _ESM_EVENTS.items()]

    def collect(self) -> Iterable[Metric]:
        totals: dict[str, dict[str, float]] = {k: {} for k in _ESM_EVENTS}

        def add(event: str, stream: str, value: float) -> None:
            totals[event][stream] = totals[event].get(stream, 0.0) + value

        for sample in _samples(RECORDS, "poller_records_total"):
            event = _FROM_OUTCOME.get(sample.labels["outcome"])
            if event:
                add(event, sample.labels["stream"], sample.value)
        for sample in _samples(FAILED, "poller_failed_records_total"):
            if sample.labels["destination"] != "none":
                add("sent_to_failure_destination", sample.labels["stream"], sample.value)
        for sample in _samples(SQS_DELETED, "poller_sqs_deleted_messages_total"):
            add("deleted", sample.labels["stream"], sample.value)
        for event, help_text in _ESM_EVENTS.items():
            family = _family(event, help_text)
            for stream, value in sorted(totals[event].items()):
                family.add_metric([stream], value)
            yield family


def _family(event: str, help_text: str) -> CounterMetricFamily:
    return CounterMetricFamily(f"poller_events_{event}", help_text, labels=["stream"])


def _samples(counter: Counter, name: str) -> Iterable[Sample]:
    for family in counter.collect():
        yield from (s for s in family.samples if s.name == name)


REGISTRY.register(_EsmEvents())


# --------------------------------------------------------------------------- snapshots and gaps
SNAPSHOT_ITEMS = Counter(
    "poller_snapshot_items_total",
    "Items of a DynamoDB snapshot committed (written, filtered or sent to the failure destination).",
    ["stream"],
)
SNAPSHOT_PAGES = Counter("poller_snapshot_pages_total", "Scan pages read by a DynamoDB snapshot.", ["stream"])
SNAPSHOT_READ_UNITS = Counter(
    "poller_snapshot_read_units_total",
    "Read capacity units a DynamoDB snapshot consumed (the Scan responses' ConsumedCapacity).",
    ["stream"],
)
SNAPSHOT_SEGMENTS = Gauge(
    "poller_snapshot_segments",
    "Segments of the DynamoDB snapshot by state: pending, scanning, done.",
    ["stream", "state"],
)
SNAPSHOT_PROGRESS = Gauge(
    "poller_snapshot_progress_ratio",
    "Items a DynamoDB snapshot committed over the table's ItemCount (which DynamoDB updates about every "
    "six hours, so it may pass 1); 1 once the snapshot is complete.",
    ["stream"],
)
RETENTION_GAPS = Counter(
    "poller_retention_gaps_total",
    "Retention gaps: records lost because a position fell behind the stream's retention (a trimmed "
    "checkpoint, a shard gone before it was read to its end, a snapshot longer than the retention).",
    ["stream", "shard"],
)


# --------------------------------------------------------------------------- leases
LEASE_EVENTS = Counter(
    "poller_lease_events_total",
    "Shard lease events of this process: taken (free or expired), stolen (balancing), renewed, "
    "lost (found taken by another worker, or not renewed in time), released (shutdown), "
    "fenced (a commit refused because the lease had passed to another worker), duplicate_id "
    "(a live lease under this worker's id held by another process).",
    ["stream", "event"],
)
