"""A scriptable fake of the DynamoDB Streams service, over real HTTP.

moto's DynamoDB Streams always has exactly one shard: no lineage, no expiry,
no trimming (see TESTBED.md). Those are the behaviours a DynamoDB Streams
consumer gets wrong, so this fake speaks the service's JSON protocol
(`X-Amz-Target: DynamoDBStreams_20120810.<Operation>`) well enough for
botocore/aiobotocore, and lets a test script what moto cannot:

- shards that close and open at any time, each child naming its parent
  (`split` closes a shard into two children);
- DescribeStream paging (`ExclusiveStartShardId` / `LastEvaluatedShardId`,
  with a small page size to force it) and `ShardFilter` CHILD_SHARDS;
- iterators that expire (`expire_iterators`, or after `iterator_ttl_seconds`);
- trimmed records (`trim`: TrimmedDataAccessException for iterators and
  sequence numbers before the trim horizon);
- shards that disappear (`remove_shard`: ResourceNotFoundException) and
  errors injected on the next calls (`fail`).

It also records what the client did: calls per operation and the largest
number of concurrent GetRecords calls on each shard (AWS allows two readers).
`DynamoDB_20120810.DescribeTable` answers too, so `table:` configs resolve,
and so does `Scan` of the table's items as the test sets them (`set_item`,
`delete_item`: the stream records are the test's to script, as always), with
`Segment`/`TotalSegments`, `Limit`, `ExclusiveStartKey` and a
`ConsumedCapacity` of half a unit per item read — so a snapshot, a re-sync
after a forged trim among them, runs against the fake too.

Everything runs in a thread of the test process (`ThreadingHTTPServer`), so
synchronous tests can script it while the daemon runs as a child process.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from boto3.dynamodb.types import TypeSerializer

__all__ = ["FakeDynamoDBStreams"]

_NS = "com.amazonaws.dynamodb.v20120810#"
_JSON = "application/x-amz-json-1.0"
_SERIALIZER = TypeSerializer()


class _ApiError(Exception):
    def __init__(self, code: str, message: str, status: int = 400):
        super().__init__(message)
        self.code = code
        self.status = status


@dataclass
class _Shard:
    shard_id: str
    parent: str | None
    starting: int
    records: list[dict[str, Any]] = field(default_factory=list)
    ending: int | None = None  # set when the shard is closed
    trimmed: int = 0  # records before this index are gone
    removed: bool = False


@dataclass
class _Iterator:
    shard_id: str
    position: int  # index into the shard's records
    issued: float
    expired: bool = False


@dataclass
class _Injected:
    code: str
    status: int
    shard_id: str | None
    times: int


def _typed(value: Any) -> dict[str, Any]:
    """A plain Python value → DynamoDB's typed JSON wire form (blobs base64)."""
    if isinstance(value, float):
        value = Decimal(str(value))
    elif isinstance(value, set) and any(isinstance(v, float) for v in value):
        value = {Decimal(str(v)) if isinstance(v, float) else v for v in value}
    elif isinstance(value, list):
        return {"L": [_typed(v) for v in value]}
    elif isinstance(value, dict):
        return {"M": {k: _typed(v) for k, v in value.items()}}
    typed: dict[str, Any] = _SERIALIZER.serialize(value)
    if "B" in typed:
        typed["B"] = base64.b64encode(bytes(typed["B"])).decode()
    if "BS" in typed:
        typed["BS"] = [base64.b64encode(bytes(b)).decode() for b in typed["BS"]]
    return typed


def _image(values: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if values is None else {k: _typed(v) for k, v in values.items()}


class FakeDynamoDBStreams:
    """One table's stream. Sequence numbers rise across all shards, as on AWS."""

    def __init__(
        self,
        table: str = "fake-table",
        *,
        view_type: str = "NEW_AND_OLD_IMAGES",
        key_schema: tuple[tuple[str, str], ...] = (("id", "HASH"),),
        region: str = "us-east-1",
        describe_page_size: int = 100,
        iterator_ttl_seconds: float = 900.0,
        get_records_delay: float = 0.0,
    ):
        self.table = table
        self.view_type = view_type
        self.key_schema = key_schema
        self.region = region
        self.label = "2024-01-01T00:00:00.000"
        self.arn = f"arn:aws:dynamodb:{region}:123456789012:table/{table}/stream/{self.label}"
        self.describe_page_size = describe_page_size
        self.iterator_ttl_seconds = iterator_ttl_seconds
        self.get_records_delay = get_records_delay
        self.calls: collections.Counter[str] = collections.Counter()
        self.max_concurrent_reads: dict[str, int] = collections.defaultdict(int)
        self._reading: dict[str, int] = collections.defaultdict(int)
        self._lock = threading.RLock()
        self._seq = 1000
        self._shards: dict[str, _Shard] = {}  # insertion order = creation order
        self._iterators: dict[str, _Iterator] = {}
        self._injected: list[_Injected] = []
        self._items: dict[str, dict[str, Any]] = {}  # canonical key JSON → plain item
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("fake DynamoDB Streams is not running")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeDynamoDBStreams:
        fake = self

        class Handler(_Handler):
            owner = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="fake-ddb-streams", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> FakeDynamoDBStreams:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- scripting -----------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def add_shard(self, shard_id: str | None = None, parent: str | None = None) -> str:
        """Open a shard (a child when `parent` is given)."""
        with self._lock:
            sid = shard_id or f"shardId-{int(time.time() * 1000):020d}-{uuid.uuid4().hex[:8]}"
            if sid in self._shards:
                raise ValueError(f"shard {sid} exists")
            self._shards[sid] = _Shard(sid, parent, self._next_seq())
            return sid

    def close_shard(self, shard_id: str) -> None:
        """No more records go to `shard_id`; a reader that reaches its end gets no next iterator."""
        with self._lock:
            shard = self._shards[shard_id]
            if shard.ending is None:
                shard.ending = self._next_seq()

    def split(self, shard_id: str, children: int = 2) -> list[str]:
        """Close `shard_id` and open `children` shards whose parent it is."""
        with self._lock:
            self.close_shard(shard_id)
            return [self.add_shard(parent=shard_id) for _ in range(children)]

    def put(
        self,
        shard_id: str,
        event_name: str,
        keys: dict[str, Any],
        new: dict[str, Any] | None = None,
        old: dict[str, Any] | None = None,
        *,
        ttl: bool = False,
    ) -> str:
        """Append one change record to an open shard; returns its sequence number.

        Images are plain values; what the view type leaves out is dropped here,
        as DynamoDB would.
        """
        with self._lock:
            shard = self._shards[shard_id]
            if shard.ending is not None:
                raise ValueError(f"shard {shard_id} is closed")
            seq = f"{self._next_seq():021d}"
            ddb: dict[str, Any] = {
                "ApproximateCreationDateTime": round(time.time(), 3),
                "Keys": _image(keys),
                "SequenceNumber": seq,
                "SizeBytes": 10 + len(json.dumps([keys, new, old], default=str)),
                "StreamViewType": self.view_type,
            }
            if new is not None and self.view_type in ("NEW_IMAGE", "NEW_AND_OLD_IMAGES"):
                ddb["NewImage"] = _image(new)
            if old is not None and self.view_type in ("OLD_IMAGE", "NEW_AND_OLD_IMAGES"):
                ddb["OldImage"] = _image(old)
            record: dict[str, Any] = {
                "eventID": uuid.uuid4().hex,
                "eventName": event_name,
                "eventVersion": "1.1",
                "eventSource": "aws:dynamodb",
                "awsRegion": self.region,
                "dynamodb": ddb,
            }
            if ttl:
                record["userIdentity"] = {"Type": "Service", "PrincipalId": "dynamodb.amazonaws.com"}
            shard.records.append(record)
            return seq

    def expire_iterators(self) -> int:
        """Every iterator handed out so far expires (ExpiredIteratorException); returns how many."""
        with self._lock:
            live = [it for it in self._iterators.values() if not it.expired]
            for it in live:
                it.expired = True
            return len(live)

    def trim(self, shard_id: str, count: int) -> None:
        """Drop the first `count` records of a shard, as the 24-hour retention would."""
        with self._lock:
            shard = self._shards[shard_id]
            shard.trimmed = min(len(shard.records), shard.trimmed + count)

    def remove_shard(self, shard_id: str) -> None:
        """The shard is gone (past retention): ResourceNotFoundException from now on."""
        with self._lock:
            self._shards[shard_id].removed = True

    def fail(self, operation: str, code: str, *, times: int = 1, shard_id: str | None = None) -> None:
        """Answer the next `times` calls of `operation` (on `shard_id`, if given) with error `code`."""
        status = 500 if code == "InternalServerError" else 400
        with self._lock:
            self._injected.append(_Injected(f"{operation}:{code}", status, shard_id, times))

    def set_item(self, item: dict[str, Any]) -> None:
        """Put an item (plain values) into the table that Scan reads."""
        with self._lock:
            self._items[self._key_of(item)] = dict(item)

    def delete_item(self, keys: dict[str, Any]) -> None:
        with self._lock:
            self._items.pop(self._key_of(keys), None)

    def _key_of(self, values: dict[str, Any]) -> str:
        return json.dumps([str(values[name]) for name, _ in self.key_schema])

    def shards(self) -> list[str]:
        with self._lock:
            return [s.shard_id for s in self._shards.values() if not s.removed]

    def records(self, shard_id: str) -> int:
        with self._lock:
            return len(self._shards[shard_id].records)

    # -- the API -------------------------------------------------------------------

    def handle(self, target: str, body: dict[str, Any]) -> dict[str, Any]:
        service, _, operation = target.partition(".")
        with self._lock:
            self.calls[operation] += 1
        if service == "DynamoDB_20120810" and operation == "DescribeTable":
            return self._describe_table(body)
        if service == "DynamoDB_20120810" and operation == "Scan":
            return self._scan(body)
        if service != "DynamoDBStreams_20120810":
            raise _ApiError("UnknownOperationException", f"unsupported target {target}")
        handler = {
            "DescribeStream": self._describe_stream,
            "GetShardIterator": self._get_shard_iterator,
            "GetRecords": self._get_records,
            "ListStreams": self._list_streams,
        }.get(operation)
        if handler is None:
            raise _ApiError("UnknownOperationException", f"unsupported operation {operation}")
        return handler(body)

    def _maybe_fail(self, operation: str, shard_id: str | None) -> None:
        with self._lock:
            for inj in self._injected:
                op, _, code = inj.code.partition(":")
                if op == operation and inj.times > 0 and inj.shard_id in (None, shard_id):
                    inj.times -= 1
                    raise _ApiError(code, f"{code} (injected by the fake)", inj.status)

    def _check_arn(self, arn: str | None) -> None:
        if arn != self.arn:
            raise _ApiError(
                "ResourceNotFoundException", f"Requested resource not found: Stream: {arn} not found"
            )

    def _shard(self, shard_id: str) -> _Shard:
        shard = self._shards.get(shard_id)
        if shard is None or shard.removed:
            raise _ApiError(
                "ResourceNotFoundException", f"Requested resource not found: Shard: {shard_id} not found"
            )
        return shard

    def _key_schema(self) -> list[dict[str, str]]:
        return [{"AttributeName": n, "KeyType": t} for n, t in self.key_schema]

    def _describe_table(self, body: dict[str, Any]) -> dict[str, Any]:
        self._maybe_fail("DescribeTable", None)
        if body.get("TableName") not in (self.table, self.arn.split("/stream/")[0]):
            raise _ApiError(
                "ResourceNotFoundException", f"Requested resource not found: {body.get('TableName')}"
            )
        return {
            "Table": {
                "TableName": self.table,
                "TableArn": self.arn.split("/stream/")[0],
                "ItemCount": len(self._items),
                "TableStatus": "ACTIVE",
                "KeySchema": self._key_schema(),
                "StreamSpecification": {"StreamEnabled": True, "StreamViewType": self.view_type},
                "LatestStreamLabel": self.label,
                "LatestStreamArn": self.arn,
            }
        }

    def _scan(self, body: dict[str, Any]) -> dict[str, Any]:
        self._maybe_fail("Scan", None)
        if body.get("TableName") != self.table:
            raise _ApiError(
                "ResourceNotFoundException", f"Requested resource not found: {body.get('TableName')}"
            )
        segment, total = int(body.get("Segment", 0)), int(body.get("TotalSegments", 1))
        limit = int(body.get("Limit", 1_000_000))
        with self._lock:
            keys = sorted(
                k for k in self._items if int(hashlib.md5(k.encode()).hexdigest(), 16) % total == segment
            )
            start = body.get("ExclusiveStartKey")
            if start:
                plain = {name: next(iter(v.values())) for name, v in start.items()}
                after = self._key_of(plain)
                keys = [k for k in keys if k > after]
            page = keys[:limit]
            out: dict[str, Any] = {
                "Items": [_image(self._items[k]) for k in page],
                "Count": len(page),
                "ScannedCount": len(page),
            }
        if body.get("ReturnConsumedCapacity") in ("TOTAL", "INDEXES"):
            out["ConsumedCapacity"] = {"TableName": self.table, "CapacityUnits": max(0.5, 0.5 * len(page))}
        if len(keys) > limit:
            last = self._items[page[-1]]
            out["LastEvaluatedKey"] = {name: _typed(last[name]) for name, _ in self.key_schema}
        return out

    def _list_streams(self, body: dict[str, Any]) -> dict[str, Any]:
        self._maybe_fail("ListStreams", None)
        if body.get("TableName") not in (None, self.table):
            return {"Streams": []}
        return {"Streams": [{"StreamArn": self.arn, "TableName": self.table, "StreamLabel": self.label}]}

    def _describe_stream(self, body: dict[str, Any]) -> dict[str, Any]:
        self._maybe_fail("DescribeStream", None)
        self._check_arn(body.get("StreamArn"))
        with self._lock:
            shards = [s for s in self._shards.values() if not s.removed]
            flt = body.get("ShardFilter")
            if flt and flt.get("Type") == "CHILD_SHARDS":
                shards = [s for s in shards if s.parent == flt.get("ShardId")]
            start = body.get("ExclusiveStartShardId")
            if start is not None:
                ids = [s.shard_id for s in shards]
                shards = shards[ids.index(start) + 1 :] if start in ids else []
            limit = min(int(body.get("Limit", 100)), self.describe_page_size)
            page, more = shards[:limit], len(shards) > limit
            description: dict[str, Any] = {
                "StreamArn": self.arn,
                "StreamLabel": self.label,
                "StreamStatus": "ENABLED",
                "StreamViewType": self.view_type,
                "CreationRequestDateTime": 1704067200.0,
                "TableName": self.table,
                "KeySchema": self._key_schema(),
                "Shards": [self._shard_shape(s) for s in page],
            }
            if more:
                description["LastEvaluatedShardId"] = page[-1].shard_id
            return {"StreamDescription": description}

    @staticmethod
    def _shard_shape(shard: _Shard) -> dict[str, Any]:
        rng: dict[str, str] = {"StartingSequenceNumber": f"{shard.starting:021d}"}
        if shard.ending is not None:
            rng["EndingSequenceNumber"] = f"{shard.ending:021d}"
        out: dict[str, Any] = {"ShardId": shard.shard_id, "SequenceNumberRange": rng}
        if shard.parent is not None:
            out["ParentShardId"] = shard.parent
        return out

    def _get_shard_iterator(self, body: dict[str, Any]) -> dict[str, Any]:
        shard_id = str(body.get("ShardId"))
        self._maybe_fail("GetShardIterator", shard_id)
        self._check_arn(body.get("StreamArn"))
        with self._lock:
            shard = self._shard(shard_id)
            kind = body.get("ShardIteratorType")
            if kind == "TRIM_HORIZON":
                position = shard.trimmed
            elif kind == "LATEST":
                position = len(shard.records)
            elif kind in ("AT_SEQUENCE_NUMBER", "AFTER_SEQUENCE_NUMBER"):
                wanted = int(body.get("SequenceNumber") or "0")
                seqs = [int(r["dynamodb"]["SequenceNumber"]) for r in shard.records]
                position = next((i for i, s in enumerate(seqs) if s >= wanted), len(seqs))
                if kind == "AFTER_SEQUENCE_NUMBER" and position < len(seqs) and seqs[position] == wanted:
                    position += 1
                # A sequence number at or before the last trimmed record is past the trim horizon.
                if shard.trimmed and wanted <= seqs[shard.trimmed - 1]:
                    raise _ApiError(
                        "TrimmedDataAccessException",
                        f"The operation attempted to read past the oldest stream record in shard {shard_id}",
                    )
            else:
                raise _ApiError("ValidationException", f"bad ShardIteratorType {kind!r}")
            token = f"{shard_id}|{uuid.uuid4().hex}"
            self._iterators[token] = _Iterator(shard_id, position, time.monotonic())
            return {"ShardIterator": token}

    def _get_records(self, body: dict[str, Any]) -> dict[str, Any]:
        token = str(body.get("ShardIterator"))
        limit = int(body.get("Limit", 1000))
        with self._lock:
            it = self._iterators.get(token)
            if it is None:
                raise _ApiError("ValidationException", "Invalid ShardIterator")
            shard_id = it.shard_id
            self._reading[shard_id] += 1
            self.max_concurrent_reads[shard_id] = max(
                self.max_concurrent_reads[shard_id], self._reading[shard_id]
            )
        try:
            if self.get_records_delay:
                time.sleep(self.get_records_delay)
            self._maybe_fail("GetRecords", shard_id)
            with self._lock:
                if it.expired or time.monotonic() - it.issued > self.iterator_ttl_seconds:
                    it.expired = True
                    raise _ApiError("ExpiredIteratorException", "Iterator expired")
                shard = self._shard(shard_id)
                if it.position < shard.trimmed:
                    raise _ApiError(
                        "TrimmedDataAccessException",
                        f"The operation attempted to read past the oldest stream record in shard {shard_id}",
                    )
                batch = shard.records[it.position : it.position + limit]
                end = it.position + len(batch)
                out: dict[str, Any] = {"Records": batch}
                if shard.ending is None or end < len(shard.records):
                    nxt = f"{shard_id}|{uuid.uuid4().hex}"
                    self._iterators[nxt] = _Iterator(shard_id, end, time.monotonic())
                    out["NextShardIterator"] = nxt
                return out
        finally:
            with self._lock:
                self._reading[shard_id] -= 1


class _Handler(BaseHTTPRequestHandler):
    owner: FakeDynamoDBStreams
    protocol_version = "HTTP/1.1"  # keep-alive, as botocore expects

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b"{}"
        target = self.headers.get("X-Amz-Target", "")
        try:
            payload = self.owner.handle(target, json.loads(raw or b"{}"))
            self._send(200, payload)
        except _ApiError as e:
            self._send(e.status, {"__type": _NS + e.code, "message": str(e)})

    def do_GET(self) -> None:  # a liveness probe
        self._send(200, {})

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", _JSON)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-amzn-RequestId", uuid.uuid4().hex)
        self.end_headers()
        try:
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the daemon was stopped or killed mid-call: nobody to answer

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read the daemon's log
        pass
