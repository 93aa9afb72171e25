"""The whole record path, fuzzed: decode → filter → map → coerce → the real
sink, through the real failure policy, into PostgreSQL, MariaDB and SQLite.

Each generated batch is a handful of payloads — clean records, records with
hostile values in any column (the table has a column of every type the sinks
support), and payloads that are not records at all — sent as Kinesis records
or SQS messages, with or without a filter. After the batch is committed, what
a user can see must hold:

- every record is exactly one of: a row in the target table, one failure
  record (in `poller_failures`, or in the destination's fallback file when the
  table refused it) whose payload decodes to the bytes sent, or filtered out
  (counted by `poller_records_total{outcome="filtered"}`);
- a clean record is a row, with its text, integer and boolean as sent; a
  clean record marked `drop` is filtered when the filter is on;
- nothing escapes `Preparer` or `FailurePolicy.commit`, and no record is
  treated as a transient error (with the databases up, that would hold the
  shard forever);
- preparing one record (decode, filter, map, coerce) takes under a second of
  CPU, and committing a batch a bounded time (bounds in `record_path.py`).

Budget: `POLLER_FUZZ_EXAMPLES` examples per database (default 150), derandomized,
so CI runs the same batches every time; `python -m bench.fuzz` runs a longer
budget and records what it saw. `POLLER_FUZZ_REPORT=FILE` appends one JSON
line of observations per database (bench/fuzz.py reads it).
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.property.record_path import (
    TYPES,
    Batch,
    Sent,
    Target,
    close_target,
    observations,
    open_target,
    report,
    run_batch,
)
from tests.support.bad_values import (
    FIELD_FRAGMENTS,
    PAYLOADS,
    SLOW_WHEN_UNBOUNDED,
    column_values,
    fragment,
    json_object,
    nasty_fragments,
    nasty_payloads,
    sqs_accepts,
)

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("POLLER_FUZZ_EXAMPLES", "150"))
REPORT = os.environ.get("POLLER_FUZZ_REPORT")

# Ids a bigint column cannot hold, so a record carrying one can only fail.
_BAD_IDS = st.one_of(
    st.sampled_from(
        [
            FIELD_FRAGMENTS[k]
            for k in (
                "str_abc",
                "str_empty",
                "null",
                "nan",
                "infinity",
                "exp_overflow",
                "int8_over",
                "int8_under",
                "two_pow_70",
                "digits_40",
                "digits_4301",
                "empty_object",
                "object",
                "nested_1000",
                "str_hex",
                "str_nul_escape",
                "str_lone_high_surrogate",
            )
        ]
        + [b"1.5", b'"1.5"', b'"1e-30"', b"[1]"]
    ),
    st.integers(2**63, 2**90).map(fragment),
    st.integers(-(2**90), -(2**63) - 1).map(fragment),
    st.builds(
        lambda m, e: f'"{m}e{e}"'.encode(), st.sampled_from(["1", "9.99", "-5"]), st.integers(20, 400_000)
    ),
)


def _readback(column: str, value: bytes) -> tuple[str, Any] | None:
    if column == "c_text":
        return column, json.loads(value)
    if column in ("c_int", "c_bool"):
        return column, int(json.loads(value))
    return None


@st.composite
def _record(draw: st.DrawFn, record_id: int, columns: list[str]) -> Sent:
    shape = draw(st.sampled_from(["clean", "hostile", "hostile", "payload", "object"]))
    drop = draw(st.booleans()) if shape != "payload" else False
    if shape == "payload":
        payload = draw(nasty_payloads().filter(lambda p: not _names_an_id(p)))
        return Sent(payload, "payload")
    if shape == "object":
        body = draw(
            st.dictionaries(
                st.sampled_from([*columns, "name", "x"]),
                st.recursive(
                    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3),
                    max_leaves=6,
                ),
                max_size=6,
            )
        )
        body["id"] = record_id
        if drop:
            body["drop"] = True
        return Sent(json.dumps(body).encode(), "object", record_id, drop=drop)
    present = draw(st.lists(st.sampled_from(columns), unique=True, max_size=len(columns)))
    fields: dict[str, bytes] = {c: draw(column_values(c)) for c in present}
    expect = [r for c in present if (r := _readback(c, fields[c])) is not None]
    label, rid = "clean", record_id
    fields_out: list[tuple[str, bytes]] = [("id", fragment(record_id))]
    if shape == "hostile":
        hit = draw(st.lists(st.sampled_from(["id", *columns]), unique=True, min_size=1, max_size=3))
        for c in hit:
            if c == "id":
                fields_out = [("id", draw(_BAD_IDS))]
                rid = None
            else:
                fields[c] = draw(nasty_fragments())
        expect = [e for e in expect if e[0] not in hit]
        label = "hostile:" + ",".join(hit)
    fields_out += list(fields.items())
    if drop:
        fields_out.append(("drop", b"true"))
    return Sent(json_object(fields_out), label, rid, clean=shape == "clean", drop=drop, expect=tuple(expect))


def _names_an_id(payload: bytes) -> bool:
    """A payload that parses to an object with an `id`: it could collide with a
    record's row, so it is not used as a non-record payload."""
    try:
        value = json.loads(payload)
    except (ValueError, RecursionError):
        return False
    return isinstance(value, dict) and "id" in value


@st.composite
def batches(draw: st.DrawFn, columns: list[str]) -> Batch:
    source = draw(st.sampled_from(["kinesis", "sqs"]))
    filtering = draw(st.booleans())
    n = draw(st.integers(1, 10))
    sent = [draw(_record(i + 1, columns)) for i in range(n)]
    if source == "sqs":
        sent = [s for s in sent if sqs_accepts(s.payload)]
    return Batch(source, filtering, tuple(sent))


@pytest_asyncio.fixture(scope="module", loop_scope="session", params=["postgres", "mysql", "sqlite"])
async def target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Target]:
    kind: str = request.param
    folder = tmp_path_factory.mktemp(f"fuzz-{kind}")
    if kind == "sqlite":
        dsn = str(folder / "fuzz.sqlite")
    else:
        dsn = request.getfixturevalue("pg_dsn" if kind == "postgres" else "mysql_dsn")
    t = await open_target(kind, dsn, folder)
    try:
        yield t
    finally:
        await close_target(t)
        seen: dict[str, Any] = observations(t)
        if REPORT:
            with Path(REPORT).open("a") as fh:  # noqa: ASYNC230 (once, at teardown)
                fh.write(json.dumps(seen) + "\n")
        print(f"\n{kind}: {json.dumps(seen)}")


# --------------------------------------------------------------------------- the tests


async def test_catalogue_is_contained(target: Target) -> None:
    """Every catalogued value in every column, and every catalogued payload, as
    Kinesis records and as SQS messages (one batch per column): the values the
    issue names, exponents that take ~40 s of CPU when unbounded included.

    Which of them may be rows is each database's business (MariaDB's text holds
    a NUL, PostgreSQL's numeric a NaN); that each ends as exactly one thing is
    not. Ids are unique, so a row is recognised by its id."""
    columns = [c for c in TYPES[target.kind] if c != "id"]
    ids = iter(range(1, 10**6))
    groups: list[list[Sent]] = [
        [
            Sent(json_object([("id", fragment(i := next(ids))), (column, value)]), f"{column}={label}", i)
            for label, value in FIELD_FRAGMENTS.items()
        ]
        for column in columns
    ]
    groups.append([Sent(payload, f"payload={label}", _id_of(payload)) for label, payload in PAYLOADS.items()])
    found: list[str] = []
    for source in ("kinesis", "sqs"):
        for group in groups:
            # The costly exponents once (the coercion they test is the same for both sources).
            sent = [
                s
                for s in group
                if source == "kinesis"
                or (sqs_accepts(s.payload) and s.label.partition("=")[2] not in SLOW_WHEN_UNBOUNDED)
            ]
            batch = Batch(source, False, tuple(sent))
            problems = await run_batch(target, batch)
            found += [f"{source}: {p}" for p in problems]
    assert not found, f"{len(found)} problems:\n" + "\n".join(found)


def _id_of(payload: bytes) -> int | None:
    try:
        value = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    return value.get("id") if isinstance(value, dict) and type(value.get("id")) is int else None


@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
@given(data=st.data())
async def test_generated_batches_are_contained(target: Target, data: st.DataObject) -> None:
    columns = [c for c in TYPES[target.kind] if c != "id"]
    batch = data.draw(batches(columns), label="batch")
    target.examples += 1
    problems = await run_batch(target, batch)
    assert not problems, report(batch, problems)
