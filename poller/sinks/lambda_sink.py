"""The `lambda` sink: invoke a deployed function with the event-source-mapping
event of the source (`Invoke`, `RequestResponse`), from inside the VPC when
`endpoint_url` names a Lambda interface endpoint.

The answer is read as an event source mapping reads it: `FunctionError` fails
the batch (retries, bisection), a returned `batchItemFailures` fails those
records. Throttling and 5xx are transient: retried without costing an attempt.

On a tumbling window each invocation carries the window's fields after
`Records`; a batch too large for one payload is invoked in parts, each part
given the state the previous one returned (`windows.py` chains them).
"""

from __future__ import annotations

import json
from contextlib import AsyncExitStack
from typing import Any

from poller.aws import aws_client, classify_aws, error_code, is_throttling
from poller.config import LambdaSinkConfig
from poller.events import lambda_record
from poller.observability import metrics
from poller.observability.logging import get_logger
from poller.records import Record, RecordError, TransientError
from poller.sinks.handler import EventSink
from poller.sinks.session_bounds import SessionBounds
from poller.sinks.windows import WindowOptions

log = get_logger()

# Lambda refuses a synchronous request of 6,291,456 bytes or more.
MAX_PAYLOAD_BYTES = 6 * 1024 * 1024 - 1

_HEAD, _TAIL = b'{"Records":[', b"]}"

# Errors about the request itself; any other error from Lambda (function not
# found, not ready, ENI or KMS trouble, access) needs an operator, not a record.
_REQUEST_ERRORS = {"RequestTooLargeException", "InvalidRequestContentException"}


class FunctionError(RecordError):
    """The function raised, timed out or ran out of memory."""

    reason = "function_error"


class PayloadTooLarge(RecordError):
    reason = "payload_too_large"


def classify_invoke(exc: BaseException) -> Exception:
    err = classify_aws(exc)
    if isinstance(err, RecordError) and error_code(exc) not in _REQUEST_ERRORS:
        return TransientError(f"lambda cannot run the function (needs attention): {err}")
    return err


def _tail(fields: dict[str, Any]) -> bytes:
    """What follows the records in the payload: `]}`, or `],` and the fields."""
    if not fields:
        return _TAIL
    return b"]," + json.dumps(fields, separators=(",", ":")).encode()[1:]


def _item(record: Record) -> bytes:
    return json.dumps(lambda_record(record), separators=(",", ":")).encode()


def fitting(records: list[Record], fields: dict[str, Any], limit: int = MAX_PAYLOAD_BYTES) -> int:
    """How many of `records`, from the first, fit one payload with `fields`."""
    size = len(_HEAD) + len(_tail(fields))
    for n, record in enumerate(records):
        size += len(_item(record)) + (1 if n else 0)
        if size > limit:
            return n
    return len(records)


def split_event(records: list[Record], limit: int = MAX_PAYLOAD_BYTES) -> list[tuple[list[Record], bytes]]:
    """The event for `records` as JSON, cut into as few payloads in order as fit
    `limit` bytes each; each payload is `{"Records": [...]}` of its part."""
    parts: list[tuple[list[Record], bytes]] = []
    chunk: list[Record] = []
    encoded: list[bytes] = []
    size = len(_HEAD) + len(_TAIL)
    for record in records:
        item = json.dumps(lambda_record(record), separators=(",", ":")).encode()
        extra = len(item) + (1 if encoded else 0)
        if encoded and size + extra > limit:
            parts.append((chunk, _HEAD + b",".join(encoded) + _TAIL))
            chunk, encoded, size = [], [], len(_HEAD) + len(_TAIL)
            extra = len(item)
        chunk.append(record)
        encoded.append(item)
        size += extra
    if encoded:
        parts.append((chunk, _HEAD + b",".join(encoded) + _TAIL))
    return parts


class LambdaSink(EventSink):
    kind = "lambda"

    def __init__(
        self,
        cfg: LambdaSinkConfig,
        stream: str,
        failures_table: str | None = None,
        windows: WindowOptions | None = None,
        bounds: SessionBounds | None = None,
    ):
        super().__init__(cfg, stream, failures_table, windows, bounds)
        self.cfg = cfg
        self.stream = stream
        self._stack: AsyncExitStack | None = None
        self.client: Any = None

    async def open(self) -> None:
        if self._stack is None:
            self._stack = AsyncExitStack()
            # No botocore retries (its `max_attempts` counts retries): the
            # failure policy retries with its own backoff and metrics, and
            # nothing re-invokes the function behind its back.
            self.client = await self._stack.enter_async_context(
                aws_client(
                    "lambda",
                    self.cfg.region,
                    self.cfg.endpoint_url,
                    read_timeout=self.cfg.timeout_seconds + 5,
                    max_attempts=0,
                )
            )
        await super().open()

    async def close(self) -> None:
        await super().close()
        if self._stack is not None:
            stack, self._stack = self._stack, None
            self.client = None
            await stack.aclose()

    async def deliver(self, records: list[Record]) -> Any:
        """One Invoke per payload that fits; their `batchItemFailures` merged.

        A function error in a later payload fails the whole batch, so records
        of the payloads before it are delivered again (at least once)."""
        failures: list[Any] = []
        for part, payload in split_event(records):
            if len(payload) > MAX_PAYLOAD_BYTES:
                raise PayloadTooLarge(
                    f"the event of one record is {len(payload)} bytes; Lambda takes less than "
                    f"{MAX_PAYLOAD_BYTES + 1} bytes per synchronous invocation"
                )
            answer = await self._invoke(payload, len(part))
            if isinstance(answer, dict) and answer.get("batchItemFailures") is not None:
                items = answer["batchItemFailures"]
                if not isinstance(items, list):
                    return answer  # malformed: read (and refused) by the caller
                failures.extend(items)
        return {"batchItemFailures": failures}

    def fit(self, records: list[Record], fields: dict[str, Any]) -> int:
        n = fitting(records, fields)
        if n == 0:
            size = len(_HEAD) + len(_item(records[0])) + len(_tail(fields))
            raise PayloadTooLarge(
                f"the event of one record with its window's state is {size} bytes; Lambda takes less "
                f"than {MAX_PAYLOAD_BYTES + 1} bytes per synchronous invocation"
            )
        return n

    async def invoke(self, records: list[Record], fields: dict[str, Any], source_arn: str) -> Any:
        """One Invoke; the answer is parsed whatever `report_batch_item_failures`
        says, since a window needs its `state` (an answer that is not JSON has none)."""
        payload = _HEAD + b",".join(_item(r) for r in records) + _tail(fields)
        return await self._invoke(payload, len(records), parse=True)

    async def _invoke(self, payload: bytes, count: int, parse: bool = False) -> Any:
        kwargs: dict[str, Any] = {
            "FunctionName": self.cfg.function,
            "InvocationType": "RequestResponse",
            "Payload": payload,
        }
        if self.cfg.qualifier:
            kwargs["Qualifier"] = self.cfg.qualifier
        try:
            resp = await self.client.invoke(**kwargs)
            body = await resp["Payload"].read()
        except Exception as e:
            if is_throttling(e):
                metrics.THROTTLES.labels(self.stream, "Invoke").inc()
            raise classify_invoke(e) from e
        if resp.get("FunctionError"):
            raise FunctionError(f"{self.cfg.function}: {resp['FunctionError']}: {_error_text(body)}")
        if parse:
            try:
                return json.loads(body) if body else None
            except ValueError:
                return None
        if not self.report_batch_item_failures or not body:
            return None
        try:
            return json.loads(body)
        except ValueError as e:
            # Lambda fails the batch when a partial-batch response is not JSON.
            raise RecordError(f"{self.cfg.function} answered with invalid JSON for {count} records") from e


def _error_text(body: bytes) -> str:
    """`errorType: errorMessage` of Lambda's error payload, else its start."""
    try:
        err = json.loads(body)
    except ValueError:
        return body[:500].decode("utf-8", "replace")
    if isinstance(err, dict):
        return f"{err.get('errorType', 'Error')}: {err.get('errorMessage', '')}"[:2000]
    return str(err)[:500]
