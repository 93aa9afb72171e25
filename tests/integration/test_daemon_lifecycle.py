"""The daemon as an operator sees it: one broken stream does not take the
others down, readiness says which, and secrets stay out of the logs."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.integration.test_sqs_to_database import body, count, make_table, new_queue, stream
from tests.support.aws import client, send_all
from tests.support.daemon import Daemon, wait_for
from tests.support.servers import MotoServer

pytestmark = pytest.mark.integration


def test_a_stream_that_cannot_start_is_reported_and_the_others_run(moto: MotoServer, pg_dsn: str) -> None:
    kind, table = "postgres", "life_good"
    make_table(kind, pg_dsn, table)
    make_table(kind, pg_dsn, "life_broken")
    sqs = client("sqs", moto.url)
    url = new_queue(sqs, f"{table}-{uuid.uuid4().hex[:6]}")
    good = stream(table, kind, pg_dsn, url, moto.url)
    # A password in the DSN of the broken stream must never reach the log.
    broken_dsn = "postgresql://postgres:s3cr3t-pw@127.0.0.1:5432/test"
    broken = stream("life_broken", kind, broken_dsn, f"{moto.url}/123456789012/no-such-queue", moto.url)
    with Daemon([good, broken]) as d:
        send_all(sqs, url, [body(i) for i in range(20)])
        wait_for(lambda: count(kind, pg_dsn, table) == 20, 60, message="the good stream's rows")
        status, text = d.get("/readyz")
        assert status == 503
        assert json.loads(text)["streams"] == {"life_good": True, "life_broken": False}
        log = wait_for(lambda: "stream failed" in (t := d.tail(400)) and t, 30, message="failure logged")
        line = next(json.loads(x) for x in log.splitlines() if '"stream failed' in x)
        assert line["stream"] == "life_broken" and "no-such-queue" in line["error"]
        assert d.get("/healthz")[0] == 200
        assert d.stop() == 0
    assert "s3cr3t-pw" not in d.log.read_text()
