"""A fast SQS stand-in speaking the JSON protocol, for throughput benchmarks.

moto's SQS manages ~170 messages/s; this serves tens of thousands, so the
daemon, not the emulator, is what a benchmark measures. It runs in its own
process (`python -m bench.sqs_standin --port P --messages N`) so its CPU is not
counted as the daemon's, and holds one standard queue of N pre-generated
messages (order JSON bodies of ~200 bytes, as the other benchmarks write).

Speaks: ReceiveMessage (long polling, visibility timeout, receive counts, new
receipt handle per receive, system attributes), DeleteMessage(Batch),
ChangeMessageVisibility(Batch) and GetQueueAttributes — the calls the poller
makes. Any queue URL names the one queue. Signatures are not checked.

Benchmark control, outside the SQS protocol:
- `POST /_bench/start` — messages are held back until this, so a benchmark can
  take its CPU reading first;
- `GET /_bench/stats` — counters as JSON (`monotonic` times are CLOCK_MONOTONIC,
  comparable with other processes' `time.monotonic()`).

The HTTP server is a small asyncio protocol rather than a framework: the
stand-in's own cost must stay far below the daemon's.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import hashlib
import json
import os
import time
import uuid
from typing import Any

from bench.payloads import order_json

QUEUE_NAME = "bench-queue"
ACCOUNT = "123456789012"
REGION = "us-east-1"
QUEUE_ARN = f"arn:aws:sqs:{REGION}:{ACCOUNT}:{QUEUE_NAME}"
SENDER = "AIDAIT2UOQQY3AUEKVGXU"


class Message:
    __slots__ = ("body_json", "deadline", "id", "md5", "receipt", "receives", "sent_ms")

    def __init__(self, index: int, body: bytes, sent_ms: int):
        self.id = str(uuid.UUID(int=index + 1))
        self.body_json = json.dumps(body.decode())
        self.md5 = hashlib.md5(body).hexdigest()
        self.sent_ms = sent_ms
        self.receives = 0
        self.receipt = ""
        self.deadline = 0.0


class Queue:
    def __init__(self, count: int, visibility: int):
        now_ms = int(time.time() * 1000)
        self.visible: collections.deque[Message] = collections.deque(
            Message(i, order_json(i), now_ms) for i in range(count)
        )
        self.inflight: dict[str, Message] = {}  # receipt handle -> message
        self.visibility = visibility
        self.started = asyncio.Event()
        self.arrived = asyncio.Event()
        self.stats: dict[str, Any] = {
            "messages": count,
            "received": 0,
            "deleted": 0,
            "requests": 0,
            "receive_calls": 0,
            "empty_receives": 0,
            "visibility_changes": 0,
            "redelivered": 0,
            "started_at": None,
            "first_receive_at": None,
            "last_delete_at": None,
        }
        self._pad = base64.b64encode(os.urandom(240)).decode()

    # -- SQS operations -------------------------------------------------------------

    async def receive(self, req: dict[str, Any]) -> dict[str, Any]:
        self.stats["receive_calls"] += 1
        want = max(1, min(10, int(req.get("MaxNumberOfMessages", 1))))
        wait = max(0, min(20, int(req.get("WaitTimeSeconds", 0))))
        visibility = int(req.get("VisibilityTimeout", self.visibility))
        deadline = time.monotonic() + wait
        while True:  # long polling: wait for a visible message or the deadline
            self._expire()
            if self.visible and self.started.is_set():
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.stats["empty_receives"] += 1
                return {}
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), min(remaining, 0.5))
            except TimeoutError:
                pass
        now = time.monotonic()
        now_ms = int(time.time() * 1000)
        out = []
        for _ in range(min(want, len(self.visible))):
            m = self.visible.popleft()
            m.receives += 1
            if m.receives > 1:
                self.stats["redelivered"] += 1
            m.receipt = f"{m.id}#{m.receives}#{self._pad}"
            m.deadline = now + visibility
            self.inflight[m.receipt] = m
            out.append(
                f'{{"MessageId":"{m.id}","ReceiptHandle":"{m.receipt}","MD5OfBody":"{m.md5}",'
                f'"Body":{m.body_json},"Attributes":{{"SenderId":"{SENDER}",'
                f'"ApproximateFirstReceiveTimestamp":"{now_ms}","ApproximateReceiveCount":"{m.receives}",'
                f'"SentTimestamp":"{m.sent_ms}"}}}}'
            )
        self.stats["received"] += len(out)
        if self.stats["first_receive_at"] is None:
            self.stats["first_receive_at"] = now
        return {"__raw__": '{"Messages":[' + ",".join(out) + "]}"}

    def delete_batch(self, req: dict[str, Any]) -> dict[str, Any]:
        ok, failed = [], []
        for e in req.get("Entries", []):
            if self._delete(e["ReceiptHandle"]):
                ok.append({"Id": e["Id"]})
            else:
                failed.append(
                    {"Id": e["Id"], "SenderFault": True, "Code": "ReceiptHandleIsInvalid", "Message": "gone"}
                )
        return {"Successful": ok, "Failed": failed}

    def delete(self, req: dict[str, Any]) -> dict[str, Any]:
        self._delete(req["ReceiptHandle"])
        return {}

    def _delete(self, receipt: str) -> bool:
        m = self.inflight.pop(receipt, None)
        if m is None:
            return False
        self.stats["deleted"] += 1
        self.stats["last_delete_at"] = time.monotonic()
        return True

    def change_visibility_batch(self, req: dict[str, Any]) -> dict[str, Any]:
        ok, failed = [], []
        for e in req.get("Entries", []):
            if self._change(e["ReceiptHandle"], int(e.get("VisibilityTimeout", 0))):
                ok.append({"Id": e["Id"]})
            else:
                failed.append(
                    {"Id": e["Id"], "SenderFault": True, "Code": "ReceiptHandleIsInvalid", "Message": "gone"}
                )
        return {"Successful": ok, "Failed": failed}

    def change_visibility(self, req: dict[str, Any]) -> dict[str, Any]:
        self._change(req["ReceiptHandle"], int(req.get("VisibilityTimeout", 0)))
        return {}

    def _change(self, receipt: str, seconds: int) -> bool:
        m = self.inflight.get(receipt)
        if m is None:
            return False
        self.stats["visibility_changes"] += 1
        if seconds <= 0:
            del self.inflight[receipt]
            self.visible.appendleft(m)
            self.arrived.set()
        else:
            m.deadline = time.monotonic() + seconds
        return True

    def attributes(self, req: dict[str, Any]) -> dict[str, Any]:
        self._expire()
        return {
            "Attributes": {
                "VisibilityTimeout": str(self.visibility),
                "QueueArn": QUEUE_ARN,
                "ApproximateNumberOfMessages": str(len(self.visible)),
                "ApproximateNumberOfMessagesNotVisible": str(len(self.inflight)),
                "ApproximateNumberOfMessagesDelayed": "0",
            }
        }

    def _expire(self) -> None:
        now = time.monotonic()
        expired = [r for r, m in self.inflight.items() if m.deadline <= now]
        for r in expired:
            self.visible.append(self.inflight.pop(r))
        if expired:
            self.arrived.set()

    def start(self) -> None:
        self.stats["started_at"] = time.monotonic()
        self.started.set()
        self.arrived.set()


class Http(asyncio.Protocol):
    """HTTP/1.1 with keep-alive and Content-Length bodies; enough for botocore."""

    def __init__(self, queue: Queue):
        self.queue = queue
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.pending: collections.deque[asyncio.Task[None]] = collections.deque()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            head_end = self.buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buf[:head_end].decode("latin-1").split("\r\n")
            headers = {}
            for line in head[1:]:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            length = int(headers.get("content-length", "0"))
            if len(self.buf) < head_end + 4 + length:
                return
            body = self.buf[head_end + 4 : head_end + 4 + length]
            self.buf = self.buf[head_end + 4 + length :]
            method, path = head[0].split(" ")[:2]
            # Responses must go out in request order on one connection: chain them.
            prev = self.pending[-1] if self.pending else None
            task = asyncio.ensure_future(self.handle(method, path, headers, body, prev))
            self.pending.append(task)
            task.add_done_callback(lambda t: self.pending.remove(t))

    async def handle(
        self, method: str, path: str, headers: dict[str, str], body: bytes, prev: asyncio.Task[None] | None
    ) -> None:
        status, payload = await self.dispatch(method, path, headers, body)
        if prev is not None:
            await asyncio.shield(prev)
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: application/x-amz-json-1.0\r\n"
            b"x-amzn-RequestId: %s\r\nContent-Length: %d\r\n\r\n"
            % (status, b"OK" if status == 200 else b"Bad Request", uuid.uuid4().hex.encode(), len(payload))
            + payload
        )

    async def dispatch(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, bytes]:
        q = self.queue
        q.stats["requests"] += 1
        if path.startswith("/_bench/"):
            if path == "/_bench/start":
                q.start()
            s = dict(q.stats, visible=len(q.visible), inflight=len(q.inflight), monotonic=time.monotonic())
            return 200, json.dumps(s).encode()
        target = headers.get("x-amz-target", "")
        op = target.rpartition(".")[2]
        try:
            req = json.loads(body) if body else {}
            if op == "ReceiveMessage":
                resp = await q.receive(req)
            elif op == "DeleteMessageBatch":
                resp = q.delete_batch(req)
            elif op == "DeleteMessage":
                resp = q.delete(req)
            elif op == "ChangeMessageVisibilityBatch":
                resp = q.change_visibility_batch(req)
            elif op == "ChangeMessageVisibility":
                resp = q.change_visibility(req)
            elif op == "GetQueueAttributes":
                resp = q.attributes(req)
            elif op == "GetQueueUrl":
                resp = {"QueueUrl": f"http://{headers.get('host', '127.0.0.1')}/{ACCOUNT}/{QUEUE_NAME}"}
            else:
                return 400, json.dumps(
                    {"__type": "com.amazonaws.sqs#UnsupportedOperation", "message": f"{op} is not supported"}
                ).encode()
        except (KeyError, ValueError) as e:
            return 400, json.dumps(
                {"__type": "com.amazonaws.sqs#InvalidParameterValue", "message": str(e)}
            ).encode()
        raw = resp.pop("__raw__", None)
        return 200, (raw.encode() if raw is not None else json.dumps(resp).encode())

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def serve(port: int, messages: int, visibility: int) -> None:
    queue = Queue(messages, visibility)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Http(queue), "127.0.0.1", port)
    print(f"sqs stand-in listening on {port}", flush=True)

    async def sweep() -> None:
        while True:
            await asyncio.sleep(1)
            queue._expire()

    sweeper = asyncio.create_task(sweep())
    try:
        async with server:
            await server.serve_forever()
    finally:
        sweeper.cancel()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--messages", type=int, default=100_000)
    p.add_argument("--visibility", type=int, default=30)
    args = p.parse_args()
    try:
        asyncio.run(serve(args.port, args.messages, args.visibility))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
