"""Smoke tests for the test bed itself: moto, kinesalite and the fault proxy.

If these fail, every other integration test's failure is suspect first.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiobotocore.session import get_session
from botocore.config import Config
from botocore.exceptions import ClientError, HTTPClientError

# `tests` is a plain directory: make `tests.support` importable however pytest is run.
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.support.fault_proxy import FaultProxy  # noqa: E402
from tests.support.servers import Kinesalite, MotoServer  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

_CREDS = {
    "region_name": "us-east-1",
    "aws_access_key_id": "test",
    "aws_secret_access_key": "test",
}
# botocore: Config.retries["max_attempts"] counts *retries*; 0 means a single attempt
# in every retry mode (it becomes total_max_attempts=1).
_NO_RETRIES = Config(retries={"max_attempts": 0})


@asynccontextmanager
async def aws_client(service: str, endpoint_url: str, config: Config | None = None) -> AsyncIterator[Any]:
    async with get_session().create_client(
        service, endpoint_url=endpoint_url, config=config, **_CREDS
    ) as client:
        yield client


# A private server rather than conftest's shared one: these tests reset it.
@pytest.fixture(scope="module")
def own_moto() -> Iterator[MotoServer]:
    with MotoServer() as server:
        yield server


@pytest.fixture(scope="module")
def kinesalite() -> Iterator[Kinesalite]:
    with Kinesalite() as server:
        yield server


async def _create_active_stream(kinesis: Any, name: str, shards: int = 1) -> None:
    await kinesis.create_stream(StreamName=name, ShardCount=shards)
    deadline = time.monotonic() + 10
    while True:
        desc = await kinesis.describe_stream_summary(StreamName=name)
        if desc["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE":
            return
        assert time.monotonic() < deadline, f"stream {name} not ACTIVE after 10s"
        await asyncio.sleep(0.05)


async def _first_shard_iterator(kinesis: Any, name: str) -> str:
    shards = (await kinesis.list_shards(StreamName=name))["Shards"]
    resp = await kinesis.get_shard_iterator(
        StreamName=name, ShardId=shards[0]["ShardId"], ShardIteratorType="TRIM_HORIZON"
    )
    iterator: str = resp["ShardIterator"]
    return iterator


async def _kinesis_roundtrip(endpoint_url: str, name: str) -> None:
    async with aws_client("kinesis", endpoint_url) as kinesis:
        await _create_active_stream(kinesis, name)
        payloads = [f"record-{i}".encode() for i in range(5)]
        resp = await kinesis.put_records(
            StreamName=name,
            Records=[{"Data": data, "PartitionKey": "pk"} for data in payloads],
        )
        assert resp["FailedRecordCount"] == 0
        iterator = await _first_shard_iterator(kinesis, name)
        records = (await kinesis.get_records(ShardIterator=iterator, Limit=100))["Records"]
        assert [r["Data"] for r in records] == payloads
        sequence_numbers = [int(r["SequenceNumber"]) for r in records]
        assert sequence_numbers == sorted(sequence_numbers)


async def test_moto_server_serves_kinesis(own_moto: MotoServer) -> None:
    assert own_moto.url.startswith("http://127.0.0.1:")
    await _kinesis_roundtrip(own_moto.url, "smoke-moto")


async def test_moto_reset_drops_state(own_moto: MotoServer) -> None:
    async with aws_client("kinesis", own_moto.url) as kinesis:
        await _create_active_stream(kinesis, "smoke-reset")
        await asyncio.to_thread(own_moto.reset)
        assert (await kinesis.list_streams())["StreamNames"] == []


async def test_kinesalite_serves_kinesis(kinesalite: Kinesalite) -> None:
    assert kinesalite.url.startswith("http://127.0.0.1:")
    await _kinesis_roundtrip(kinesalite.url, "smoke-kinesalite")


def test_servers_stop_their_processes() -> None:
    for server in (MotoServer(), Kinesalite()):
        with server:
            proc = server._child.proc
            assert proc is not None and server.running
        assert proc.poll() is not None
        assert not server.running


@pytest.fixture
async def proxy(own_moto: MotoServer) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(own_moto.url, seed=7) as p:
        yield p


@pytest.mark.parametrize("mode", ["legacy", "standard"])
async def test_proxy_passes_through_and_throttles(own_moto: MotoServer, proxy: FaultProxy, mode: str) -> None:
    stream = f"smoke-throttle-{mode}"
    async with aws_client("kinesis", own_moto.url) as direct:
        await _create_active_stream(direct, stream)
        await direct.put_record(StreamName=stream, Data=b"hello", PartitionKey="pk")

    config = Config(retries={"max_attempts": 0, "mode": mode})
    async with aws_client("kinesis", proxy.url, config) as kinesis:
        # No faults: everything is forwarded verbatim (the signature headers too).
        iterator = await _first_shard_iterator(kinesis, stream)
        resp = await kinesis.get_records(ShardIterator=iterator)
        assert [r["Data"] for r in resp["Records"]] == [b"hello"]
        assert proxy.requests == {"ListShards": 1, "GetShardIterator": 1, "GetRecords": 1}
        assert sum(proxy.injected.values()) == 0

        proxy.set_faults(throttle=1.0, only_targets={"GetRecords"})
        with pytest.raises(kinesis.exceptions.ProvisionedThroughputExceededException) as err:
            await kinesis.get_records(ShardIterator=iterator)
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
        assert proxy.injected == {"throttle": 1}  # exactly one attempt: retries are off
        assert proxy.requests["GetRecords"] == 1  # the throttled call never reached moto

        # Operations outside only_targets are untouched.
        await kinesis.get_shard_iterator(
            StreamName=stream, ShardId="shardId-000000000000", ShardIteratorType="LATEST"
        )
        assert proxy.requests["GetShardIterator"] == 2

        proxy.set_faults()
        resp = await kinesis.get_records(ShardIterator=iterator)
        assert len(resp["Records"]) == 1
        assert proxy.requests["GetRecords"] == 2


async def test_proxy_server_errors(proxy: FaultProxy) -> None:
    async with aws_client("kinesis", proxy.url, _NO_RETRIES) as kinesis:
        proxy.set_faults(server_error=1.0)
        statuses = set()
        for _ in range(8):
            with pytest.raises(ClientError) as err:
                await kinesis.list_streams()
            statuses.add(err.value.response["ResponseMetadata"]["HTTPStatusCode"])
        assert statuses == {500, 503}  # seed 7 draws both within 8 calls
        assert proxy.injected == {"server_error": 8}
        assert proxy.requests["ListStreams"] == 0


@pytest.mark.timing
async def test_proxy_drop_breaks_the_connection(proxy: FaultProxy) -> None:
    async with aws_client("kinesis", proxy.url, _NO_RETRIES) as kinesis:
        proxy.set_faults(drop=1.0)
        started = time.monotonic()
        # botocore wraps aiohttp's ServerDisconnectedError as ConnectionClosedError.
        with pytest.raises(HTTPClientError):
            await kinesis.list_streams()
        assert time.monotonic() - started < 5  # broken: waited for a timeout, not the drop
        assert proxy.injected == {"drop": 1}

        proxy.set_faults()  # the client recovers on a fresh connection
        await kinesis.list_streams()
        assert proxy.requests["ListStreams"] == 1


async def test_proxy_faults_are_reproducible(own_moto: MotoServer) -> None:
    async def outcomes(seed: int) -> list[str]:
        seen = []
        async with FaultProxy(own_moto.url, seed=seed) as p:
            p.set_faults(throttle=0.5)
            async with aws_client("kinesis", p.url, _NO_RETRIES) as kinesis:
                for _ in range(12):
                    try:
                        await kinesis.list_streams()
                        seen.append("ok")
                    except kinesis.exceptions.ProvisionedThroughputExceededException:
                        seen.append("throttled")
            assert p.injected["throttle"] == seen.count("throttled")
            assert p.requests["ListStreams"] == seen.count("ok")
        return seen

    first = await outcomes(3)
    assert first == await outcomes(3)
    assert {"ok", "throttled"} == set(first)


@pytest.mark.timing
async def test_proxy_relays_sqs_long_poll(proxy: FaultProxy) -> None:
    async with aws_client("sqs", proxy.url, _NO_RETRIES) as sqs:
        queue_url = (await sqs.create_queue(QueueName="smoke-long-poll"))["QueueUrl"]

        async def send_later() -> None:
            await asyncio.sleep(0.5)
            await sqs.send_message(QueueUrl=queue_url, MessageBody="wake")

        sender = asyncio.create_task(send_later())
        started = time.monotonic()
        resp = await sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=5)
        await sender
        assert [m["Body"] for m in resp["Messages"]] == ["wake"]
        # Held until the message came (0.5 s), not answered at once, nor at the poll's 5 s
        # end: load only delays the answer, and 4.5 s of it is allowed.
        assert 0.3 < time.monotonic() - started < 5
        assert proxy.requests["ReceiveMessage"] == 1

        proxy.set_faults(throttle=1.0, only_targets={"ReceiveMessage"})
        with pytest.raises(sqs.exceptions.RequestThrottled):
            await sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=1)
        assert proxy.injected == {"throttle": 1}
