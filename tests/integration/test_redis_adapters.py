"""The Redis scripts behind stock, payments and order state, on a real server."""

import asyncio
import random
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
import redis
import redis.asyncio

from orders.adapters import redis_keys as keys
from orders.adapters.order_state import OrderState
from orders.adapters.redis_inventory import RedisInventory
from orders.adapters.simulated_gateway import SimulatedGateway
from orders.domain.errors import GatewayUnavailable
from orders.domain.model import FailureReason, Outcome, OutcomeKind
from relay.ledger import AsyncLedger, Next

pytestmark = pytest.mark.integration


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url, decode_responses=True)
    yield c
    c.close()


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def test_reservation_is_all_or_nothing(client: redis.Redis) -> None:
    inv = RedisInventory(client, default_stock=10)
    a, b = uid("a"), uid("b")
    inv.set_stock(b, 1)
    result = inv.reserve(uid("o"), 1, {a: 5, b: 2})
    assert not result.ok and result.reason is FailureReason.OUT_OF_STOCK
    assert f"{b}: requested 2, available 1" == result.detail
    assert inv.available([a, b]) == {a: 10, b: 1}


def test_reservation_is_idempotent_and_release_gives_back_once(client: redis.Redis) -> None:
    inv = RedisInventory(client, default_stock=10)
    sku, order = uid("s"), uid("o")
    assert inv.reserve(order, 1, {sku: 3}).ok
    assert inv.reserve(order, 1, {sku: 3}).ok
    assert inv.available([sku]) == {sku: 7}
    assert inv.release(order, 1, {sku: 3}) is True
    assert inv.release(order, 1, {sku: 3}) is False
    assert inv.available([sku]) == {sku: 10}
    # Repeating the step after compensation repeats its first answer, without taking stock.
    assert inv.reserve(order, 1, {sku: 3}).ok
    assert inv.available([sku]) == {sku: 10}
    # A new epoch (replay after dead-lettering) reserves afresh.
    assert inv.reserve(order, 2, {sku: 3}).ok
    assert inv.available([sku]) == {sku: 7}


def test_release_before_reserve_blocks_a_late_reservation(client: redis.Redis) -> None:
    inv = RedisInventory(client, default_stock=10)
    sku, order = uid("s"), uid("o")
    assert inv.release(order, 1, {sku: 3}) is False
    assert not inv.reserve(order, 1, {sku: 3}).ok
    assert inv.available([sku]) == {sku: 10}


def test_concurrent_orders_never_oversell(client: redis.Redis) -> None:
    inv = RedisInventory(client, default_stock=0)
    sku = uid("s")
    inv.set_stock(sku, 50)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: inv.reserve(uid("o"), 1, {sku: 3}), range(40)))
    assert sum(r.ok for r in results) == 16
    assert inv.available([sku]) == {sku: 2}


def test_gateway_charges_once_per_key_and_declines_above_limit(client: redis.Redis) -> None:
    gw = SimulatedGateway(client, decline_above=Decimal("100.00"))
    key = uid("k")
    first = gw.charge(key, 5000, "USD")
    again = gw.charge(key, 5000, "USD")
    assert first.approved and first == again
    declined = gw.charge(uid("k"), 10001, "USD")
    assert not declined.approved and "above the decline limit" in declined.detail
    assert gw.refund(key).payment_id == first.payment_id
    assert gw.refund(key).payment_id == first.payment_id  # idempotent


def test_a_repeat_under_the_same_key_gets_the_first_decision_as_it_was_made(
    client: redis.Redis,
) -> None:
    gw = SimulatedGateway(client, decline_above=Decimal("100.00"))
    declined, approved = uid("k"), uid("k")
    first = gw.charge(declined, 10001, "USD")
    assert not first.approved and "amount 100.01 USD" in first.detail, first.detail
    # A repeat that would have been approved on its own is declined as the first was.
    assert gw.charge(declined, 500, "USD") == first
    assert gw.charge(approved, 500, "USD") == gw.charge(approved, 10001, "USD")


def test_refund_before_charge_voids_the_key(client: redis.Redis) -> None:
    gw = SimulatedGateway(client, decline_above=Decimal("100.00"))
    key = uid("k")
    assert gw.refund(key).payment_id == ""
    assert not gw.charge(key, 100, "USD").approved


def test_a_lost_response_is_answered_by_the_retry(client: redis.Redis) -> None:
    gw = SimulatedGateway(
        client, decline_above=Decimal("100"), transient_failure_rate=1.0, rng=random.Random(3)
    )
    key = uid("k")
    for _ in range(10):
        with pytest.raises(GatewayUnavailable):
            gw.charge(key, 100, "USD")
    healthy = SimulatedGateway(client, decline_above=Decimal("100"))
    result = healthy.charge(key, 100, "USD")
    assert result.approved and result == healthy.charge(key, 100, "USD")


def test_outcome_is_recorded_once_per_epoch_and_payments_counted_once(
    client: redis.Redis, redis_url: str
) -> None:
    order_id = uid("o")
    state = OrderState(client)

    async def begin(poll: bool = False):
        aclient = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
        try:
            return await AsyncLedger(aclient, keys.LEDGER).begin(order_id, 60, poll=poll)
        finally:
            await aclient.aclose()

    first = asyncio.run(begin())
    assert (first.next, first.epoch, first.run) == (Next.START, 1, 1)
    assert asyncio.run(begin()).next is Next.ATTACH
    state.count_charge(order_id, "pay_1")
    state.count_charge(order_id, "pay_1")
    outcome = Outcome(
        order_id=order_id,
        kind=OutcomeKind.COMPLETED,
        payment_id="pay_1",
        total_minor=100,
        currency="USD",
    )
    assert state.finalize(1, outcome) is True
    assert state.finalize(1, outcome.model_copy(update={"kind": OutcomeKind.FAILED})) is False
    view = state.view(order_id)
    assert view is not None
    assert (view.status, view.charges, view.outcome) == ("COMPLETED", 1, outcome)
    assert asyncio.run(begin()).next is Next.PUBLISH


def test_failed_workflow_is_reported_to_waiters_and_restarted_on_delivery(
    client: redis.Redis, redis_url: str
) -> None:
    order_id = uid("o")
    state = OrderState(client)

    async def begin(poll: bool):
        aclient = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
        try:
            return await AsyncLedger(aclient, keys.LEDGER).begin(order_id, 60, poll=poll)
        finally:
            await aclient.aclose()

    asyncio.run(begin(poll=False))
    assert state.record_error(order_id, 1, "payments.charge_payment failed") is True
    polled = asyncio.run(begin(poll=True))
    assert polled.next is Next.ERRORED and "charge_payment" in polled.error
    again = asyncio.run(begin(poll=False))
    assert (again.next, again.epoch, again.run) == (Next.START, 1, 2)

    # Dead-lettered: the epoch can no longer complete, and a replay starts a new one.
    async def abandon() -> bool:
        aclient = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
        try:
            return await AsyncLedger(aclient, keys.LEDGER).abandon(order_id, 1, "gave up")
        finally:
            await aclient.aclose()

    assert asyncio.run(abandon()) is True
    late = Outcome(
        order_id=order_id, kind=OutcomeKind.COMPLETED, payment_id="p", total_minor=1, currency="USD"
    )
    assert state.finalize(1, late) is False
    view = state.view(order_id)
    assert view is not None and (view.status, view.reason) == ("FAILED", "DEAD_LETTERED")
    replay = asyncio.run(begin(poll=False))
    assert (replay.next, replay.epoch, replay.run) == (Next.START, 2, 1)
