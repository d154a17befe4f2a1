"""The batched Redis work, on a real server: several entries decided, confirmed,
started and finalized by one script call, and the orders of a batch reserved,
charged and counted by one call, each exactly as the same work done one by one.

Ledger tests run under a key prefix of their own (their own completion stream);
the orders' adapters use the application's keys, under order ids of their own.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import pytest
import redis
import redis.asyncio
from test_redis_adapters import client, uid

from orders.adapters import redis_keys
from orders.adapters.order_state import OrderState
from orders.adapters.redis_inventory import RedisInventory
from orders.adapters.simulated_gateway import SimulatedGateway
from orders.domain.errors import GatewayUnavailable
from orders.domain.model import FailureReason, Outcome, OutcomeKind, StepResult
from orders.ports import ChargeRequest, ChargeResult, ReservationRequest
from relay.completions import CompletionWatcher
from relay.keys import LedgerKeys
from relay.ledger import COALESCE_MAX_BYTES, AsyncLedger, Begin, Ledger, Next, Record
from relay.redis_replies import decoded_entries, decoded_hash

pytestmark = pytest.mark.integration

__all__ = ["client"]  # a fixture of test_redis_adapters, used by name

STALL_S = 60.0
SERVER = "server-1"


def own_keys() -> LedgerKeys:
    """A ledger of this test's own: its entries and its completion stream."""
    return LedgerKeys(f"{uid('test')}:", "entry")


@asynccontextmanager
async def async_ledger(redis_url: str, keys: LedgerKeys) -> AsyncIterator[AsyncLedger]:
    aclient = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield AsyncLedger(aclient, keys)
    finally:
        await aclient.aclose()


async def deliver(ledger: AsyncLedger, *names: str) -> None:
    """First deliveries, one after another: each entry RECEIVED in epoch 1, run 1."""
    for name in names:
        begun = await ledger.begin(name, STALL_S, input=f"in-{name}", server=SERVER)
        assert (begun.next, begun.epoch, begun.run) == (Next.START, 1, 1)


def delivered(
    redis_url: str, keys: LedgerKeys, *names: str, abandoned: tuple[str, ...] = ()
) -> None:
    """:func:`deliver` from synchronous code; then ``abandoned`` dead-lettered (epoch 1)."""

    async def scenario() -> None:
        async with async_ledger(redis_url, keys) as aledger:
            await deliver(aledger, *names)
            for name in abandoned:
                assert await aledger.abandon(name, 1, "gave up")

    asyncio.run(scenario())


def count_begin_calls(
    ledger: AsyncLedger, calls: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Record the number of entries of each ``begin.lua`` call ``ledger`` makes."""
    script = ledger._begin

    async def counted(keys: list[str], args: list[Any]) -> Any:
        calls.append(len(keys))
        return await script(keys=keys, args=args)

    monkeypatch.setattr(ledger, "_begin", counted)


def entry_hash(client: redis.Redis, keys: LedgerKeys, name: str) -> dict[str, str]:
    return decoded_hash(client.hgetall(keys.entry(name)))


def stream_after(client: redis.Redis, stream: str, last_id: str) -> list[dict[str, str]]:
    """The fields of the stream's entries after ``last_id``."""
    return [fields for _, fields in decoded_entries(client.xrange(stream, f"({last_id}"))]


def last_stream_id(client: redis.Redis, stream: str) -> str:
    newest = decoded_entries(client.xrevrange(stream, count=1))
    return newest[0][0] if newest else "0-0"


# --- begin ------------------------------------------------------------------------

# Entries the begins below find, prepared one by one by :func:`prepare`.
PREPARED = ["fresh", "decided", "published", "dead", "dead-polled", "errored", "resent"]
PREPARED += ["stalled", "moved"]

# (key, begin's keyword arguments), asked in this order; a key asked twice sees the
# first ask's write.
ASKS: list[tuple[str, dict[str, Any]]] = [
    ("new", {"input": "in-new"}),
    ("new", {"input": "other content"}),
    ("fresh", {"input": "in-fresh"}),
    ("decided", {"input": "in-decided"}),
    ("published", {"input": "in-published"}),
    ("dead", {"input": "in-dead"}),
    ("dead", {"input": "in-dead"}),
    ("dead-polled", {"poll": True}),
    ("lost", {"poll": True, "known": (3, 2)}),
    ("lost", {"input": "in-lost", "known": (3, 2)}),
    ("lost", {"poll": True, "known": (3, 3)}),
    ("errored", {"poll": True}),
    ("resent", {"resend": True}),
    ("resent", {"poll": True}),
    ("stalled", {"input": "in-stalled"}),
    ("stalled", {"input": "in-stalled"}),
    ("moved", {"input": "in-moved", "server": "server-2"}),
]

EXPECTED = [
    Begin(Next.START, 1, 1, input="in-new", cause="new"),
    Begin(Next.ATTACH, 1, 1, input="in-new"),  # the first content stays the input
    Begin(Next.ATTACH, 1, 1, input="in-fresh"),
    Begin(Next.PUBLISH, 1, 1),
    Begin(Next.DONE, 1, 1),
    Begin(Next.START, 2, 1, input="in-dead", cause="new"),  # a replay: a new epoch
    Begin(Next.ATTACH, 2, 1, input="in-dead"),
    Begin(Next.ERRORED, 1, 1, error="dead-lettered meanwhile"),
    Begin(Next.LOST, 3, 2),
    Begin(Next.START, 3, 3, input="in-lost", cause="failover"),  # restored, run not reused
    Begin(Next.ATTACH, 3, 3, input="in-lost"),
    Begin(Next.ERRORED, 1, 1, error="boom"),
    Begin(Next.START, 1, 2, input="in-resent", cause="retry"),
    Begin(Next.ATTACH, 1, 2, input="in-resent"),
    Begin(Next.START, 1, 2, input="in-stalled", cause="stalled"),
    Begin(Next.ATTACH, 1, 2, input="in-stalled"),
    Begin(Next.START, 1, 2, input="in-moved", cause="failover"),
]


async def prepare(ledger: AsyncLedger, client: redis.Redis) -> None:
    """The entries of :data:`PREPARED`, each in the state its name says."""
    await deliver(ledger, *PREPARED)
    workers = Ledger(client, ledger.keys)
    assert workers.finalize("decided", 1, "out")
    assert workers.finalize("published", 1, "out")
    await ledger.mark_published("published", "stored")
    assert await ledger.abandon("dead", 1, "gave up")
    assert await ledger.abandon("dead-polled", 1, "gave up")
    assert workers.record_error("errored", 1, "boom")
    assert workers.record_error("resent", 1, "boom")
    client.hset(ledger.keys.entry("stalled"), "updated_ms", 0)  # last heard of long ago


def ask(ledger: AsyncLedger, key: str, kwargs: dict[str, Any]) -> Any:
    return ledger.begin(key, STALL_S, **{"server": SERVER, **kwargs})


def without_times(fields: dict[str, str]) -> dict[str, str]:
    return {f: v for f, v in fields.items() if not f.endswith("_ms")}


def test_begins_asked_together_decide_as_the_same_begins_one_after_another(
    client: redis.Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    together_keys, one_by_one_keys = own_keys(), own_keys()
    script_calls: dict[str, list[int]] = {"together": [], "one by one": []}

    async def scenario() -> tuple[list[Begin], list[Begin]]:
        async with (
            async_ledger(redis_url, together_keys) as together,
            async_ledger(redis_url, one_by_one_keys) as one_by_one,
        ):
            await prepare(together, client)
            await prepare(one_by_one, client)
            count_begin_calls(together, script_calls["together"], monkeypatch)
            count_begin_calls(one_by_one, script_calls["one by one"], monkeypatch)
            batched = await asyncio.gather(*(ask(together, k, kw) for k, kw in ASKS))
            alone = [await ask(one_by_one, k, kw) for k, kw in ASKS]
            return list(batched), alone

    batched, alone = asyncio.run(scenario())
    assert script_calls == {"together": [len(ASKS)], "one by one": [1] * len(ASKS)}
    assert alone == EXPECTED
    assert batched == EXPECTED
    for name in {k for k, _ in ASKS}:
        together_state = entry_hash(client, together_keys, name)
        assert together_state, name
        assert without_times(together_state) == without_times(
            entry_hash(client, one_by_one_keys, name)
        ), name
    # A poll never creates an entry; the delivery after it did, with the known epoch.
    assert entry_hash(client, together_keys, "lost")["epoch"] == "3"


def test_begins_of_large_inputs_go_in_calls_of_at_most_the_byte_budget(
    client: redis.Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = own_keys()
    calls: list[int] = []
    inputs = {f"big-{n}": f"{n}" * (COALESCE_MAX_BYTES * 2 // 5) for n in range(5)}
    inputs["small"] = "s"

    async def scenario() -> list[Begin]:
        async with async_ledger(redis_url, keys) as ledger:
            count_begin_calls(ledger, calls, monkeypatch)
            return list(
                await asyncio.gather(
                    *(ledger.begin(k, STALL_S, input=v, server=SERVER) for k, v in inputs.items())
                )
            )

    begun = asyncio.run(scenario())
    assert [(b.next, b.epoch, b.run) for b in begun] == [(Next.START, 1, 1)] * len(inputs)
    # Two fifths of the budget each: two a call, the small one with the last.
    assert calls == [2, 2, 2]
    for name, stored in inputs.items():
        assert entry_hash(client, keys, name)["input"] == stored, name


def test_published_marks_of_one_moment_are_each_written(
    client: redis.Redis, redis_url: str
) -> None:
    keys = own_keys()

    async def scenario() -> None:
        async with async_ledger(redis_url, keys) as ledger:
            await deliver(ledger, "a", "b", "c")
            await asyncio.gather(
                ledger.mark_published("a", "completed"),
                ledger.mark_published("b", ""),
                ledger.mark_published("c", "failed"),
            )

    asyncio.run(scenario())
    marks = [entry_hash(client, keys, name).get("published") for name in ("a", "b", "c")]
    assert marks == ["completed", "1", "failed"]


# --- one entry's fault stays its own ----------------------------------------------


@pytest.mark.parametrize(
    ("damage", "begin_error", "confirm_error"),
    [
        # A key of another type: every script call on it fails.
        ("wrong type", "WRONGTYPE", "WRONGTYPE"),
        # A hash whose epoch is not a number: the script would answer a reply cut
        # short (Lua stops a table at its first nil), the reader a ValueError.
        ("corrupt epoch", "corrupt epoch", "unreadable entry"),
    ],
)
def test_an_entry_that_cannot_be_read_fails_alone_in_a_coalesced_call(
    client: redis.Redis,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    damage: str,
    begin_error: str,
    confirm_error: str,
) -> None:
    """A fetch's begins share one script call: a damaged entry among them (an
    operator's mistake, a corrupt key) fails that delivery alone, never its fetch."""
    keys = own_keys()
    if damage == "wrong type":
        client.set(keys.entry("bad"), "a string, not a hash")
    else:
        client.hset(keys.entry("bad"), mapping={"epoch": "x", "run": "1", "input": "in-bad"})
    before = client.dump(keys.entry("bad"))
    names = ("a", "bad", "b")
    calls: list[int] = []

    async def scenario() -> None:
        async with async_ledger(redis_url, keys) as ledger:
            count_begin_calls(ledger, calls, monkeypatch)
            a, bad, b = await asyncio.gather(
                *(ledger.begin(n, STALL_S, input=f"in-{n}", server=SERVER) for n in names),
                return_exceptions=True,
            )
            assert isinstance(bad, redis.exceptions.ResponseError), bad
            assert begin_error in str(bad)
            assert isinstance(a, Begin) and isinstance(b, Begin)
            assert (a.next, b.next) == (Next.START, Next.START)

            read = await ledger.confirm(list(names), replicas=0, aof=False, timeout_ms=1000)
            entry_a, entry_bad, entry_b = read.entries
            assert isinstance(entry_bad, redis.exceptions.ResponseError), entry_bad
            assert confirm_error in str(entry_bad)
            assert not isinstance(entry_a, Exception) and entry_a is not None
            assert not isinstance(entry_b, Exception) and entry_b is not None
            assert (entry_a.input, entry_b.input) == ("in-a", "in-b")

            marks = await asyncio.gather(
                *(ledger.mark_published(n, "completed") for n in ("a", "b")),
                return_exceptions=True,
            )
            assert marks == [None, None]

    asyncio.run(scenario())
    assert calls == [len(names)]  # one call: the fault was isolated inside it
    assert entry_hash(client, keys, "a")["published"] == "completed"
    assert entry_hash(client, keys, "b")["published"] == "completed"
    assert client.dump(keys.entry("bad")) == before  # left as it was, for the operator


def test_a_published_mark_on_a_key_of_another_type_fails_alone(
    client: redis.Redis, redis_url: str
) -> None:
    keys = own_keys()
    client.set(keys.entry("wrong"), "a string, not a hash")

    async def scenario() -> list[BaseException | None]:
        async with async_ledger(redis_url, keys) as ledger:
            await deliver(ledger, "a", "b")
            return await asyncio.gather(
                *(ledger.mark_published(n, "completed") for n in ("a", "wrong", "b")),
                return_exceptions=True,
            )

    marks = asyncio.run(scenario())
    assert marks[0] is None and marks[2] is None
    assert isinstance(marks[1], redis.exceptions.ResponseError), marks
    assert entry_hash(client, keys, "a")["published"] == "completed"
    assert entry_hash(client, keys, "b")["published"] == "completed"


# --- confirm ----------------------------------------------------------------------


def test_confirm_reads_every_entry_asked_in_one_call(client: redis.Redis, redis_url: str) -> None:
    keys = own_keys()

    async def scenario() -> None:
        async with async_ledger(redis_url, keys) as ledger:
            await deliver(ledger, "a", "b")
            assert Ledger(client, keys).finalize("a", 1, "out-a", {"status": "COMPLETED"})
            asked = ["a", "missing", "b", "a"]

            read = await ledger.confirm(asked, replicas=0, aof=False, timeout_ms=1000)
            assert (read.acked, read.fsynced) == (0, True)
            assert [e.key if e else None for e in read.entries] == ["a", None, "b", "a"]
            a, missing, b, a_again = read.entries
            assert a is not None and b is not None and missing is None
            assert (a.outcome, a.input, a.fields["status"]) == ("out-a", "in-a", "COMPLETED")
            assert (b.outcome, b.input, b.fields["status"]) == (None, "in-b", "RECEIVED")
            assert a_again == a
            # Nothing to wait for: nothing written.
            assert "confirmed_ms" not in entry_hash(client, keys, "b")

            # Waiting for a replica (this server has none: WAIT answers 0 at the timeout).
            waited = await ledger.confirm(asked, replicas=1, aof=False, timeout_ms=50)
            assert (waited.acked, waited.fsynced) == (0, True)
            outcomes = [e.outcome if e else "-" for e in waited.entries]
            assert outcomes == ["out-a", "-", None, "out-a"]

    asyncio.run(scenario())
    # A write of its own on each entry it read (for the WAIT behind it), and none
    # that would create the missing one.
    assert "confirmed_ms" in entry_hash(client, keys, "a")
    assert "confirmed_ms" in entry_hash(client, keys, "b")
    assert not client.exists(keys.entry("missing"))


# --- start_tasks ------------------------------------------------------------------


def test_start_tasks_counts_each_call_once_and_marks_only_live_entries(
    client: redis.Redis, redis_url: str
) -> None:
    keys = own_keys()
    ledger = Ledger(client, keys)
    delivered(redis_url, keys, "received", "replayed", "decided", "working")
    assert ledger.finalize("decided", 1, "out", {"status": "COMPLETED"})
    client.hset(keys.entry("working"), "status", "PROCESSING")
    for name in ("received", "replayed", "decided", "working"):
        client.hset(keys.entry(name), "updated_ms", 1)
    inputs = [("received", 1), ("replayed", 2), ("decided", 1), ("working", 1)]
    task_id = uid("task")

    assert ledger.start_tasks(task_id, inputs) == 1
    states = {name: entry_hash(client, keys, name) for name, _ in inputs}
    assert {name: s["status"] for name, s in states.items()} == {
        "received": "PROCESSING",  # progress
        "replayed": "RECEIVED",  # another epoch than the task's: untouched
        "decided": "COMPLETED",  # an outcome keeps its status
        "working": "PROCESSING",
    }
    assert {name: s["updated_ms"] != "1" for name, s in states.items()} == {
        "received": True,
        "replayed": False,
        "decided": True,
        "working": True,
    }
    # One count per start of the task, however many inputs it works for.
    assert ledger.start_tasks(task_id, inputs) == 2
    assert ledger.start_tasks(task_id, inputs[:1]) == 3
    assert 0 < client.ttl(keys.task_starts(task_id)) <= 24 * 3600
    assert ledger.start_task("received", 1, uid("task")) == 1


# --- finalize_many ----------------------------------------------------------------


def test_finalize_many_records_each_once_and_announces_them_with_one_event(
    client: redis.Redis, redis_url: str
) -> None:
    keys = own_keys()
    ledger = Ledger(client, keys)
    delivered(
        redis_url, keys, "a", "b", "replayed", "dead", "decided", "single", abandoned=("dead",)
    )
    assert ledger.finalize("decided", 1, "first")
    records = [
        Record("a", 1, "out-a", {"status": "COMPLETED", "reason": ""}),
        Record("replayed", 2, "out-replayed", {"status": "COMPLETED"}),  # not its epoch
        Record("b", 1, "out-b", {"status": "FAILED", "reason": "OUT_OF_STOCK"}),
        Record("dead", 1, "out-dead", {"status": "COMPLETED"}),  # dead-lettered
        Record("decided", 1, "second", {"status": "FAILED"}),  # decided already
    ]
    before = last_stream_id(client, keys.completions)

    assert ledger.finalize_many(records) == [True, False, True, False, False]
    events = stream_after(client, keys.completions, before)
    assert len(events) == 1 and set(events[0]) == {"keys", "event"}
    assert (json.loads(events[0]["keys"]), events[0]["event"]) == (["a", "b"], "outcome")
    a, b = entry_hash(client, keys, "a"), entry_hash(client, keys, "b")
    assert (a["outcome"], a["status"], a["reason"]) == ("out-a", "COMPLETED", "")
    assert (b["outcome"], b["status"], b["reason"]) == ("out-b", "FAILED", "OUT_OF_STOCK")
    assert "outcome" not in entry_hash(client, keys, "replayed")
    dead = entry_hash(client, keys, "dead")
    assert "outcome" not in dead and dead["status"] == "FAILED"
    assert entry_hash(client, keys, "decided")["outcome"] == "first"

    # Once each: a repeat records nothing and announces nothing.
    before = last_stream_id(client, keys.completions)
    assert ledger.finalize_many(records) == [False] * len(records)
    assert ledger.finalize_many([]) == []
    assert stream_after(client, keys.completions, before) == []
    assert entry_hash(client, keys, "a")["outcome"] == "out-a"

    # One recorded among several: announced as a single key.
    again = [Record("single", 1, "out-single", {}), Record("a", 1, "other", {})]
    assert ledger.finalize_many(again) == [True, False]
    assert stream_after(client, keys.completions, before) == [{"key": "single", "event": "outcome"}]


def test_finalize_many_writes_nothing_when_one_entry_cannot_be_read(client: redis.Redis) -> None:
    """A script is not rolled back on error: were outcomes written before the failing
    entry, they would have no completion event. Every entry is read first, so the
    call fails whole (the batch task retries, then its orders go alone)."""
    keys = own_keys()
    ledger = Ledger(client, keys)
    for name in ("a", "b"):
        client.hset(keys.entry(name), mapping={"epoch": 1, "run": 1, "status": "RECEIVED"})
    client.set(keys.entry("wrong"), "a string, not a hash")
    before = last_stream_id(client, keys.completions)
    records = [Record(n, 1, f"out-{n}", {"status": "COMPLETED"}) for n in ("a", "wrong", "b")]

    with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
        ledger.finalize_many(records)
    assert "outcome" not in entry_hash(client, keys, "a")
    assert "outcome" not in entry_hash(client, keys, "b")
    assert stream_after(client, keys.completions, before) == []
    # Asked without it, the others are recorded and announced, once each.
    assert ledger.finalize_many([records[0], records[2], records[0]]) == [True, True, False]
    [event] = stream_after(client, keys.completions, before)
    assert json.loads(event["keys"]) == ["a", "b"]


def test_the_watcher_wakes_every_key_of_one_batch_event(
    client: redis.Redis, redis_url: str
) -> None:
    keys = own_keys()

    async def scenario() -> None:
        async with async_ledger(redis_url, keys) as aledger:
            await deliver(aledger, "a", "b", "c", "d")
            watcher = CompletionWatcher(aledger.redis, keys.completions, block_ms=50)
            a1, a2 = watcher.expect("a"), watcher.expect("a")  # two handlers on one key
            b, c = watcher.expect("b"), watcher.expect("c")
            reading = asyncio.create_task(watcher.run())
            try:
                async with asyncio.timeout(5):
                    while not watcher.healthy:  # reading from the stream's end on
                        await asyncio.sleep(0.01)
                    # A malformed batch event names nobody and stops nothing.
                    await aledger.redis.xadd(keys.completions, {"keys": "[oops", "event": "x"})
                    recorded = await asyncio.to_thread(
                        Ledger(client, keys).finalize_many,
                        [Record(k, 1, f"out-{k}", {}) for k in ("a", "b", "d")],
                    )
                    assert recorded == [True, True, True]
                    await asyncio.gather(a1.wait(), a2.wait(), b.wait())
                    await asyncio.sleep(0.2)  # time enough for a wrong wake-up
                assert not c.is_set()
                assert watcher.healthy and not reading.done()
            finally:
                reading.cancel()
                await asyncio.gather(reading, return_exceptions=True)

    asyncio.run(scenario())


# --- the orders' adapters ---------------------------------------------------------


def reservations(scarce: str, plenty: str, short: str) -> list[ReservationRequest]:
    """Orders competing for 3 of ``scarce``; ``short`` has 4, ``plenty`` the default."""
    return [
        ReservationRequest(uid("o"), 1, {scarce: 2, plenty: 1}),  # fits: 1 left
        ReservationRequest(uid("o"), 1, {scarce: 2}),  # does not fit
        ReservationRequest(uid("o"), 1, {scarce: 1, short: 5}),  # short lacks: takes nothing
        ReservationRequest(uid("o"), 1, {scarce: 1}),  # the last one fits
        ReservationRequest(uid("o"), 1, {plenty: 1, scarce: 1}),  # none left
    ]


def expected_reservations(scarce: str, short: str) -> list[StepResult]:
    def out(detail: str) -> StepResult:
        return StepResult.failure(FailureReason.OUT_OF_STOCK, detail)

    return [
        StepResult.success(),
        out(f"{scarce}: requested 2, available 1"),
        out(f"{short}: requested 5, available 4"),
        StepResult.success(),
        out(f"{scarce}: requested 1, available 0"),
    ]


def test_reserve_many_takes_stock_exactly_as_the_orders_one_by_one(client: redis.Redis) -> None:
    inv = RedisInventory(client, default_stock=10)
    # Sorted as the script checks them: scarce before short, plenty before scarce.
    batch = {"plenty": uid("plenty"), "scarce": uid("scarce"), "short": uid("short")}
    alone = {"plenty": uid("plenty"), "scarce": uid("scarce"), "short": uid("short")}
    for skus in (batch, alone):
        inv.set_stock(skus["scarce"], 3)
        inv.set_stock(skus["short"], 4)
    batch_orders = reservations(batch["scarce"], batch["plenty"], batch["short"])
    alone_orders = reservations(alone["scarce"], alone["plenty"], alone["short"])

    in_one_call = inv.reserve_many(batch_orders)
    one_by_one = [inv.reserve(r.order_id, r.epoch, r.quantities) for r in alone_orders]

    assert one_by_one == expected_reservations(alone["scarce"], alone["short"])
    assert in_one_call == expected_reservations(batch["scarce"], batch["short"])
    left = {"plenty": 9, "scarce": 0, "short": 4}
    for skus in (batch, alone):
        assert inv.available(list(skus.values())) == {skus[role]: n for role, n in left.items()}

    # Repeated (a re-sent batch): the first answers, and no more stock taken, even
    # when stock came back meanwhile.
    assert inv.release(batch_orders[0].order_id, 1, batch_orders[0].quantities) is True
    assert inv.reserve_many(batch_orders[1:]) == in_one_call[1:]
    assert inv.available([batch["scarce"], batch["plenty"]]) == {
        batch["scarce"]: 2,
        batch["plenty"]: 10,
    }
    assert inv.reserve_many([]) == []


def test_reserve_many_reserves_an_order_asked_twice_in_one_call_once(
    client: redis.Redis,
) -> None:
    inv = RedisInventory(client, default_stock=10)
    sku = uid("s")
    order = ReservationRequest(uid("o"), 1, {sku: 3})
    replay = ReservationRequest(order.order_id, 2, {sku: 3})  # a new epoch reserves afresh
    assert inv.reserve_many([order, order, replay]) == [StepResult.success()] * 3
    assert inv.available([sku]) == {sku: 4}


DECLINE_ABOVE = Decimal("100.00")
CHEAP, DEAR = 5000, 20000  # below and above the decline limit, in cents
# A seed under which one call meets every case: faults before and after charging,
# approvals and a decline (asserted below, so a change of seed cannot hide one).
GATEWAY_SEED = 7


def test_charge_many_fails_transiently_per_request_and_answers_repeats_alike(
    client: redis.Redis,
) -> None:
    flaky = SimulatedGateway(
        client,
        decline_above=DECLINE_ABOVE,
        transient_failure_rate=0.4,
        rng=random.Random(GATEWAY_SEED),
    )
    requests = [ChargeRequest(uid("k"), DEAR if i % 4 == 0 else CHEAP, "USD") for i in range(12)]

    first = flaky.charge_many(requests)

    assert len(first) == len(requests)
    seen = []
    for request, result in zip(requests, first, strict=True):
        record = decoded_hash(client.hgetall(redis_keys.gateway_charge(request.idempotency_key)))
        if record:  # the books hold what the request asked, whatever the caller heard
            state = "declined" if request.amount_minor == DEAR else "approved"
            assert (record["state"], record["amount"]) == (state, str(request.amount_minor))
        if isinstance(result, GatewayUnavailable):
            after = "after charging" in str(result)
            assert after or "before charging" in str(result)
            assert bool(record) == after, str(result)  # only a lost answer was charged
            seen.append("fault after" if after else "fault before")
        elif request.amount_minor == DEAR:
            assert not result.approved and not result.payment_id
            assert "above the decline limit of 100.00 USD" in result.detail
            seen.append("declined")
        else:
            assert result == ChargeResult(approved=True, payment_id=record["payment_id"])
            seen.append("approved")
    assert set(seen) == {"fault before", "fault after", "declined", "approved"}, seen

    # Repeated, healthy now: what was answered is answered alike (the same payment
    # ids), what was lost after charging is answered as charged then, the rest now.
    healthy = SimulatedGateway(client, decline_above=DECLINE_ABOVE)
    again = healthy.charge_many(requests)
    for request, was, now in zip(requests, first, again, strict=True):
        assert isinstance(now, ChargeResult)
        assert now.approved == (request.amount_minor == CHEAP)
        if isinstance(was, ChargeResult):
            assert now == was
    # And under each key its first answer, whatever amount a repeat names.
    swapped = [
        ChargeRequest(r.idempotency_key, CHEAP if r.amount_minor == DEAR else DEAR, "USD")
        for r in requests
    ]

    def answers(results: list[ChargeResult | GatewayUnavailable]) -> list[tuple[bool, str]]:
        return [(r.approved, r.payment_id) for r in results if isinstance(r, ChargeResult)]

    assert answers(healthy.charge_many(swapped)) == answers(again)


def test_count_charges_counts_each_payment_once(client: redis.Redis) -> None:
    state = OrderState(client)
    one, two = uid("o"), uid("o")

    def counts() -> list[tuple[int, int]]:
        views = [state.view(one), state.view(two)]
        return [(v.charges, v.refunds) if v else (0, 0) for v in views]

    state.count_charges([(one, "p1"), (two, "p2"), (one, "p1"), (one, "p3")])
    assert counts() == [(2, 0), (1, 0)]
    state.count_charges([(two, "p2"), (one, "p3"), (one, "p1")])
    state.count_charges([])
    assert counts() == [(2, 0), (1, 0)]
    state.count_refund(one, "p1")  # a refund of a payment counts apart from its charge
    state.count_charges([(one, "p1")])
    assert counts() == [(2, 1), (1, 0)]


def test_order_state_finalize_many_records_each_order_once(
    client: redis.Redis, redis_url: str
) -> None:
    state = OrderState(client)
    done, failed, replayed = uid("o"), uid("o"), uid("o")

    async def scenario() -> None:
        async with async_ledger(redis_url, redis_keys.LEDGER) as ledger:
            await deliver(ledger, done, failed, replayed)

    asyncio.run(scenario())
    outcomes = [
        (1, Outcome(order_id=done, kind=OutcomeKind.COMPLETED, payment_id="p", total_minor=1)),
        (
            1,
            Outcome(
                order_id=failed,
                kind=OutcomeKind.FAILED,
                reason=FailureReason.PAYMENT_DECLINED,
                detail="declined",
            ),
        ),
        (2, Outcome(order_id=replayed, kind=OutcomeKind.COMPLETED)),  # not its epoch
    ]
    assert state.finalize_many(outcomes) == [True, True, False]
    assert state.finalize_many(outcomes) == [False, False, False]
    assert state.finalize_many([]) == []
    views = [state.view(order_id) for order_id in (done, failed, replayed)]
    assert [(v.status, v.reason, v.outcome) if v else None for v in views] == [
        ("COMPLETED", "", outcomes[0][1]),
        ("FAILED", "PAYMENT_DECLINED", outcomes[1][1]),
        ("RECEIVED", "", None),
    ]
