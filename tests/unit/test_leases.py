"""The pure parts of leasing: which leases a worker may take (`LeaseTaker`, on
its own monotonic clock) and how many and which (`balancer.choose`), alone and
in a simulated fleet of workers sharing an in-memory lease table with the
store's conditional-write rules."""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from poller.config import ConfigError, parse_stream
from poller.coordination import Lease, LeaseTaker, choose, fair_share, worker_id
from poller.fencing import new_token

L = 3.0  # lease_seconds
ROUND = L / 3  # renew period


def owned(shard: str, owner: str | None, counter: int = 1, ended: bool = False) -> Lease:
    return Lease(shard, owner, counter, (), ended)


# --------------------------------------------------------------------------- the stream file


def stream_file(source: dict[str, Any], sink: dict[str, Any], coordination: Any) -> dict[str, Any]:
    data = {"name": "orders", "source": source, "sink": sink}
    if coordination is not None:
        data["coordination"] = coordination
    return data


KINESIS = {"type": "kinesis", "stream": "orders"}
POSTGRES = {"type": "postgres", "dsn": "postgresql://u@db/app", "table": "orders"}
HANDLER = {"type": "handler", "handler": "app:handle"}


def test_without_coordination_one_worker_reads_every_shard() -> None:
    assert parse_stream(stream_file(KINESIS, POSTGRES, None), "orders.yaml").coordination is None


def test_coordination_defaults_to_leases_in_the_sinks_database_and_hostname_pid_random() -> None:
    cfg = parse_stream(stream_file(KINESIS, POSTGRES, {"worker_id": "${HOSTNAME:-}"}), "o.yaml", env={})
    c = cfg.coordination
    assert c is not None
    assert (c.lease_store, c.lease_seconds, c.worker_id) == ("sink", 10.0, "")
    host_pid, suffix = worker_id(c).rsplit("-", 1)
    assert host_pid.rsplit("-", 1)[1].isdigit() and len(suffix) == 6  # hostname-pid-random
    assert worker_id(c) == worker_id(c)  # one process, one id: a restarted stream takes its leases back


@pytest.mark.parametrize(
    ("source", "sink", "coordination", "says"),
    [
        (
            {"type": "sqs", "queue_url": "https://sqs/q"},
            POSTGRES,
            {},
            "coordination: an SQS queue needs no leases",
        ),
        (
            KINESIS,
            POSTGRES,
            {"lease_store": "dynamodb"},
            "a database sink keeps its leases in its own database",
        ),
        (KINESIS, POSTGRES, {"lease_seconds": 0.5}, "coordination.lease_seconds"),
        (KINESIS, POSTGRES, {"lease_store": "zookeeper"}, "coordination.lease_store"),
    ],
)
def test_coordination_that_cannot_work_is_refused_by_name(
    source: dict[str, Any], sink: dict[str, Any], coordination: Any, says: str
) -> None:
    with pytest.raises(ConfigError, match=says):
        parse_stream(stream_file(source, sink, coordination), "orders.yaml")


def test_user_code_may_keep_leases_and_checkpoints_in_dynamodb() -> None:
    c = parse_stream(stream_file(KINESIS, HANDLER, {"lease_store": "dynamodb"}), "o.yaml").coordination
    assert c is not None and c.table == "poller-leases"


# --------------------------------------------------------------------------- the taker


def test_a_free_lease_is_available_at_once() -> None:
    taker = LeaseTaker("me", L)
    lease = owned("s1", None, 7)
    taker.observe([lease], now=100.0)
    assert taker.availability(lease, held=set(), now=100.0) == "free"


def test_an_owned_lease_expires_once_its_counter_stood_still_for_lease_seconds() -> None:
    taker = LeaseTaker("me", L)
    lease = owned("s1", "other", 5)
    taker.observe([lease], now=100.0)  # first seen owned: counts as just renewed
    assert taker.availability(lease, set(), now=100.0) is None
    taker.observe([lease], now=102.9)
    assert taker.availability(lease, set(), now=102.9) is None
    taker.observe([lease], now=103.0)
    assert taker.availability(lease, set(), now=103.0) == "expired"


def test_the_taker_knows_when_the_next_lease_expires_so_a_round_can_be_there() -> None:
    taker = LeaseTaker("me", L)
    taker.observe([owned("s1", "other", 1), owned("s2", None, 0), owned("s3", "me", 2)], now=10.0)
    taker.observe([owned("s1", "other", 1), owned("s4", "other", 7)], now=11.0)
    leases = [owned("s1", "other", 1), owned("s4", "other", 7)]
    assert taker.next_expiry(leases, now=11.0) == 13.0  # s1, first seen at 10
    assert taker.next_expiry(leases, now=13.5) == 14.0  # s1 has expired: s4, first seen at 11
    assert taker.next_expiry(leases, now=14.0) is None


def test_a_moving_counter_keeps_a_lease_alive_however_long() -> None:
    taker = LeaseTaker("me", L)
    for i in range(20):
        lease = owned("s1", "other", i)
        taker.observe([lease], now=100.0 + i * ROUND)
        assert taker.availability(lease, set(), now=100.0 + i * ROUND) is None
    assert taker.live_holder(lease, now=100.0 + 19 * ROUND)


def test_expiry_reads_no_wall_clock_only_the_takers_own_clock() -> None:
    """Two takers whose clocks are hours apart (different hosts, different boot
    times) decide alike: only how long each watched an unmoving counter counts."""
    near, far = LeaseTaker("a", L), LeaseTaker("b", L)
    lease = owned("s1", "holder", 3)
    for elapsed in (0.0, 1.0, 2.0, 2.99, 3.0):
        near.observe([lease], now=50.0 + elapsed)
        far.observe([lease], now=7_200_050.0 + elapsed)
        assert near.expired(lease, 50.0 + elapsed) == far.expired(lease, 7_200_050.0 + elapsed)
    assert near.expired(lease, 53.0)


def test_a_lease_this_process_held_under_its_id_in_an_earlier_life_of_the_stream_is_its_own() -> None:
    taker = LeaseTaker("me", L)
    lease = Lease("s1", "me", 9, token=new_token())  # a token this very process drew
    taker.observe([lease], now=1.0)
    assert taker.availability(lease, held=set(), now=1.0) == "mine"
    assert taker.availability(lease, held={"s1"}, now=1.0) is None


def test_a_lease_under_this_id_but_another_process_token_is_not_its_own() -> None:
    """Two processes sharing a worker_id: the other's lease is taken only once it
    expires, like anyone's, and while its counter moves it is a duplicate."""
    taker = LeaseTaker("me", L)
    other = "otherhost/1/abcd1234/0123456789abcdef"
    taker.observe([Lease("s1", "me", 9, token=other)], now=1.0)
    assert taker.availability(Lease("s1", "me", 9, token=other), set(), now=1.0) is None
    assert not taker.duplicate(Lease("s1", "me", 9, token=other), now=1.0)  # not seen renewing yet
    taker.observe([Lease("s1", "me", 10, token=other)], now=2.0)
    assert taker.duplicate(Lease("s1", "me", 10, token=other), now=2.0)
    assert taker.availability(Lease("s1", "me", 10, token=other), set(), now=2.0) is None
    taker.observe([Lease("s1", "me", 10, token=other)], now=5.0)  # it stopped renewing
    assert not taker.duplicate(Lease("s1", "me", 10, token=other), now=5.0)
    assert taker.availability(Lease("s1", "me", 10, token=other), set(), now=5.0) == "expired"
    # A row written by an older poller (no token) under this id is not this process's either.
    taker.observe([Lease("s2", "me", 3)], now=5.0)
    assert taker.availability(Lease("s2", "me", 3), set(), now=5.0) is None


def test_an_ended_lease_is_never_available() -> None:
    taker = LeaseTaker("me", L)
    lease = owned("s1", None, 4, ended=True)
    taker.observe([lease], now=1.0)
    taker.observe([lease], now=100.0)
    assert taker.availability(lease, set(), now=100.0) is None


def test_a_holder_is_live_only_once_seen_renewing() -> None:
    taker = LeaseTaker("me", L)
    taker.observe([owned("s1", "other", 1)], now=0.0)
    assert not taker.live_holder(owned("s1", "other", 1), now=0.5)  # a dead worker's row looks the same
    taker.observe([owned("s1", "other", 2)], now=1.0)
    assert taker.live_holder(owned("s1", "other", 2), now=1.0)
    taker.observe([owned("s1", "other", 2)], now=4.0)
    assert not taker.live_holder(owned("s1", "other", 2), now=4.0)  # stopped renewing


# --------------------------------------------------------------------------- the balancer


def test_the_fair_share_rounds_up_and_is_one_with_more_workers_than_leases() -> None:
    assert fair_share(12, 3) == 4
    assert fair_share(13, 3) == 5
    assert fair_share(2, 5) == 1
    assert fair_share(0, 3) == 0


def test_a_worker_takes_available_leases_up_to_its_fair_share_and_steals_nothing_then() -> None:
    leases = [owned(f"s{i}", None, 0) for i in range(6)] + [owned(f"o{i}", "busy", 1) for i in range(6)]
    available = {lease.shard_id: "free" for lease in leases[:6]}
    plan = choose("me", leases, available, set(), {lease.shard_id for lease in leases}, random.Random(1))
    assert plan.need == 6  # 12 leases, workers "busy" and "me": 6 each
    assert {t.how for t in plan.takes} == {"free"}  # the others are spares for lost races


def test_a_steal_is_one_lease_from_the_most_loaded_worker() -> None:
    leases = [owned(f"a{i}", "a", 1) for i in range(8)] + [owned(f"b{i}", "b", 1) for i in range(4)]
    wanted = {lease.shard_id for lease in leases}
    plan = choose("me", leases, {}, set(), wanted, random.Random(2))
    assert plan.need == 1
    assert [(t.how, t.lease.owner) for t in plan.takes] == [("stolen", "a")]


def test_no_steal_when_it_would_not_even_things_out() -> None:
    # 13 leases over three workers: 5, 4, 4 is as even as it gets.
    leases = (
        [owned(f"a{i}", "a", 1) for i in range(5)]
        + [owned(f"b{i}", "b", 1) for i in range(4)]
        + [owned(f"m{i}", "me", 1) for i in range(4)]
    )
    held = {f"m{i}" for i in range(4)}
    assert not choose("me", leases, {}, held, {lease.shard_id for lease in leases}, random.Random(3))


def test_the_victim_at_its_share_gives_one_to_a_worker_two_below_it() -> None:
    # 13 leases: target 5; "a" and "b" hold 5 each, "me" 3: one steal makes it 5, 4, 4.
    leases = (
        [owned(f"a{i}", "a", 1) for i in range(5)]
        + [owned(f"b{i}", "b", 1) for i in range(5)]
        + [owned(f"m{i}", "me", 1) for i in range(3)]
    )
    held = {f"m{i}" for i in range(3)}
    plan = choose("me", leases, {}, held, {lease.shard_id for lease in leases}, random.Random(4))
    assert [t.how for t in plan.takes] == ["stolen"]


def test_a_take_lost_to_a_faster_worker_is_made_up_from_the_next_available_lease() -> None:
    """Two survivors see a dead worker's four leases expire in the same round and
    plan from the same view: the slower one's lost races are made up from the
    spares, so all four are taken in that one round."""
    table = {f"s{i}": owned(f"s{i}", "dead", 5) for i in range(4)}
    table |= {f"a{i}": owned(f"a{i}", "a", 1) for i in range(4)}
    table |= {f"b{i}": owned(f"b{i}", "b", 1) for i in range(4)}
    view = list(table.values())
    available = {f"s{i}": "expired" for i in range(4)}
    plans = {
        w: choose(w, view, available, {f"{w}{i}" for i in range(4)}, set(table), random.Random(seed))
        for w, seed in (("a", 1), ("b", 1))  # the same seed: they reach for the same leases
    }
    for w, plan in plans.items():
        won = 0
        for take in plan.takes:
            current = table[take.lease.shard_id]
            if won < plan.need and current.counter == take.lease.counter:
                table[current.shard_id] = replace(current, owner=w, counter=current.counter + 1)
                won += 1
    assert sorted(table[f"s{i}"].owner or "" for i in range(4)) == ["a", "a", "b", "b"]


def test_only_shards_the_worker_may_read_are_taken() -> None:
    leases = [owned("parent", None, 0), owned("child", None, 0)]
    available = {"parent": "free", "child": "free"}
    plan = choose("me", leases, available, set(), {"parent"}, random.Random(5))
    assert [t.lease.shard_id for t in plan.takes] == ["parent"]


def test_one_worker_stores_never_steal() -> None:
    leases = [owned(f"a{i}", "a", 1) for i in range(4)]
    assert not choose("me", leases, {}, set(), {"a0", "a1", "a2", "a3"}, random.Random(6), may_steal=False)


# --------------------------------------------------------------------------- a simulated fleet


@dataclass
class Worker:
    name: str
    taker: LeaseTaker
    held: dict[str, int] = field(default_factory=dict)  # shard → counter as last written
    alive: bool = True


class Fleet:
    """Workers sharing a lease table with the store's rules (conditional writes)
    on one simulated monotonic clock; each round every live worker renews, looks
    and takes, as `LeaseCoordinator.round` does."""

    def __init__(self, shards: int, workers: list[str], seed: int = 0):
        self.table = {f"shard-{i:02d}": Lease(f"shard-{i:02d}") for i in range(shards)}
        self.workers = {name: Worker(name, LeaseTaker(name, L)) for name in workers}
        self.rng = random.Random(seed)
        self.now = 0.0
        self.moves = 0

    def add(self, name: str) -> None:
        self.workers[name] = Worker(name, LeaseTaker(name, L))

    def round(self) -> None:
        order = list(self.workers.values())
        self.rng.shuffle(order)
        for w in order:
            if w.alive:
                self._turn(w)
        self.now += ROUND

    def _turn(self, w: Worker) -> None:
        for shard, counter in list(w.held.items()):
            lease = self.table[shard]
            if lease.owner == w.name and lease.counter == counter:
                self.table[shard] = replace(lease, counter=counter + 1)
                w.held[shard] = counter + 1
            else:
                del w.held[shard]  # lost
        leases = list(self.table.values())
        w.taker.observe(leases, self.now)
        available = {
            lease.shard_id: how
            for lease in leases
            if (how := w.taker.availability(lease, w.held, self.now)) is not None
        }
        plan = choose(w.name, leases, available, set(w.held), set(self.table), self.rng)
        won = 0
        for take in plan.takes:
            current = self.table[take.lease.shard_id]
            if won < plan.need and current.counter == take.lease.counter:  # the store's condition
                self.table[current.shard_id] = replace(current, owner=w.name, counter=current.counter + 1)
                w.held[current.shard_id] = current.counter + 1
                self.moves += 1
                won += 1

    def counts(self) -> dict[str, int]:
        return {w.name: len(w.held) for w in self.workers.values() if w.alive}


def test_three_workers_starting_together_settle_at_four_leases_each_within_two_lease_periods() -> None:
    for seed in range(20):
        fleet = Fleet(12, ["a", "b", "c"], seed)
        rounds = 0
        while sorted(fleet.counts().values()) != [4, 4, 4]:
            fleet.round()
            rounds += 1
            assert rounds * ROUND <= 2 * L, f"seed {seed}: {fleet.counts()} after {rounds} rounds"
        settled = fleet.moves
        for _ in range(60):
            fleet.round()
        assert fleet.moves == settled, "balanced workers went on trading leases"


def test_workers_joining_one_by_one_take_their_share_one_steal_per_round() -> None:
    fleet = Fleet(12, ["a"])
    for _ in range(3):
        fleet.round()
    assert fleet.counts() == {"a": 12}
    fleet.add("b")
    before = fleet.moves
    fleet.round()
    assert fleet.moves - before == 1  # one steal per round, not a stampede
    for _ in range(20):
        fleet.round()
    assert fleet.counts() == {"a": 6, "b": 6}
    fleet.add("c")
    for _ in range(20):
        fleet.round()
    assert sorted(fleet.counts().values()) == [4, 4, 4]


def test_a_dead_workers_leases_are_taken_within_lease_seconds_and_one_renew_period() -> None:
    fleet = Fleet(12, ["a", "b", "c"], seed=7)
    for _ in range(12):
        fleet.round()
    dead = fleet.workers["a"]
    orphans = set(dead.held)
    dead.alive = False
    last_renewal = fleet.now - ROUND  # the round it last took part in
    while any(fleet.table[s].owner == "a" for s in orphans):
        fleet.round()
        taken_at = fleet.now - ROUND
        assert taken_at - last_renewal <= L + ROUND
    assert sorted(fleet.counts().values()) == [6, 6]


def test_a_released_lease_is_taken_at_the_next_round() -> None:
    fleet = Fleet(12, ["a", "b", "c"], seed=8)
    for _ in range(12):
        fleet.round()
    leaving = fleet.workers["a"]
    for shard in leaving.held:
        fleet.table[shard] = replace(fleet.table[shard], owner=None, counter=fleet.table[shard].counter + 1)
    released = set(leaving.held)
    leaving.alive = False
    fleet.round()
    assert all(fleet.table[s].owner in ("b", "c") for s in released)
