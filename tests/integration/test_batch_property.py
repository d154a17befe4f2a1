"""Property: however orders are cut into batches, and however often a batch is run
again (a stall re-send, a redelivery, a worker killed after its step), every order
ends as it would have alone, once, on the real scripts of a real Redis.

Each example runs the batch steps as the batch tasks do (``orders.services``: one
reserve call and one charge call for the batch, a transient charge fault sending
that order on alone, one settle call, compensation per order), against a model
that takes the orders one by one. Scarce stock makes the batch's order of
reservation matter; declines and transient faults make compensation and splits
happen; repeats must change nothing.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import TypeVar

import pytest
import redis
import redis.asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from orders_builder import order

from orders import services
from orders.adapters import redis_keys as keys
from orders.adapters.order_state import OrderState
from orders.adapters.redis_inventory import RedisInventory
from orders.adapters.simulated_gateway import SimulatedGateway
from orders.domain.errors import TransientError
from orders.domain.model import FailureReason, Order, OutcomeKind, Settlement
from orders.domain.validation import Limits, validate_order
from orders.services import Pipeline, Placed
from relay.ledger import AsyncLedger

pytestmark = pytest.mark.integration

PLENTY_STOCK = 1000
DECLINE_ABOVE = Decimal("10000")
# A transient fault every time for this long would be a broken test, not bad luck.
MAX_ATTEMPTS = 200


@dataclass(frozen=True)
class Spec:
    kind: str  # plenty | scarce | declined
    quantity: int


specs = st.lists(
    st.builds(Spec, st.sampled_from(["plenty", "scarce", "declined"]), st.integers(1, 2)),
    min_size=1,
    max_size=12,
)


@st.composite
def schedules(draw: st.DrawFn, n: int) -> list[list[int]]:
    """Consecutive batches of the orders' indexes, each run once in order, with
    repeats of earlier batches slipped in anywhere after their first run."""
    cuts = sorted(draw(st.sets(st.integers(1, n - 1), max_size=n - 1)) if n > 1 else set())
    bounds = [0, *cuts, n]
    batches = [list(range(a, b)) for a, b in itertools.pairwise(bounds)]
    runs: list[list[int]] = []
    for batch in batches:
        runs.append(batch)
        for _ in range(draw(st.integers(0, 1))):
            earlier = draw(st.sampled_from(runs))
            runs.insert(draw(st.integers(runs.index(earlier) + 1, len(runs))), earlier)
    return runs


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url, decode_responses=True)
    yield c
    c.close()


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    specs=specs,
    scarce_stock=st.integers(0, 4),
    transient_rate=st.sampled_from([0.0, 0.3]),
    seed=st.integers(0, 2**32 - 1),
    data=st.data(),
)
def test_any_batching_and_any_repeats_end_each_order_as_alone(
    client: redis.Redis,
    redis_url: str,
    specs: list[Spec],
    scarce_stock: int,
    transient_rate: float,
    seed: int,
    data: st.DataObject,
) -> None:
    run = uuid.uuid4().hex[:10]
    plenty, scarce = f"plenty-{run}", f"scarce-{run}"
    p = _pipeline(client, transient_rate, seed)
    p.inventory.set_stock(plenty, PLENTY_STOCK)
    p.inventory.set_stock(scarce, scarce_stock)
    orders = [_order(f"o-{run}-{i}", spec, plenty, scarce) for i, spec in enumerate(specs)]
    asyncio.run(_begin_all(redis_url, [o.order_id for o in orders]))

    for batch in data.draw(schedules(len(orders)), label="batch runs"):
        _run_batch(p, [(orders[i], 1) for i in batch])

    expected = _one_by_one(specs, scarce_stock)
    announced = _announced(client, {o.order_id for o in orders})
    for o, (kind, reason) in zip(orders, expected, strict=True):
        view = p.state.view(o.order_id)
        assert view is not None and view.outcome is not None, o.order_id
        assert (view.outcome.kind, view.outcome.reason) == (kind, reason), o.order_id
        assert announced.count(o.order_id) == 1, o.order_id  # one completion event
        net_charges = view.charges - view.refunds
        assert net_charges == (1 if kind is OutcomeKind.COMPLETED else 0), (o.order_id, view)
    taken = {
        sku: sum(
            s.quantity
            for s, (kind, _) in zip(specs, expected, strict=True)
            if kind is OutcomeKind.COMPLETED and (s.kind == "scarce") == (sku == scarce)
        )
        for sku in (plenty, scarce)
    }
    assert p.inventory.available([plenty, scarce]) == {
        plenty: PLENTY_STOCK - taken[plenty],
        scarce: scarce_stock - taken[scarce],
    }


def _pipeline(client: redis.Redis, transient_rate: float, seed: int) -> Pipeline:
    return Pipeline(
        state=OrderState(client),
        inventory=RedisInventory(client, default_stock=0),
        gateway=SimulatedGateway(
            client,
            decline_above=DECLINE_ABOVE,
            transient_failure_rate=transient_rate,
            rng=random.Random(seed),
        ),
        limits=Limits(),
        max_worker_losses=3,
    )


def _order(order_id: str, spec: Spec, plenty: str, scarce: str) -> Order:
    sku = scarce if spec.kind == "scarce" else plenty
    price = 20_000.0 if spec.kind == "declined" else 5.0
    validated = validate_order(order(order_id, [(sku, spec.quantity, price)]))
    assert isinstance(validated, Order)
    return validated


async def _begin_all(redis_url: str, order_ids: list[str]) -> None:
    """Each order delivered once: its ledger entry at epoch 1 (the bridge's part)."""
    async with redis.asyncio.Redis.from_url(redis_url, decode_responses=True) as aclient:
        ledger = AsyncLedger(aclient, keys.LEDGER)
        await asyncio.gather(*(ledger.begin(o, 60, input="{}") for o in order_ids))


def _run_batch(p: Pipeline, placed: list[Placed]) -> None:
    """The batch chord as its tasks run it: both header steps for the whole batch, an
    order with a transient fault on its own, then the batch's settle."""
    reservations = services.reserve_steps(p, placed)
    charges = services.charge_steps(p, placed)
    settled = []
    for (o, epoch), reservation, charge in zip(placed, reservations, charges, strict=True):
        if isinstance(charge, TransientError):
            _run_alone(p, o, epoch)  # split: the single-order chord, retried
        else:
            settled.append((o, epoch, reservation, charge))
    for (o, epoch, _, _), settlement in zip(
        settled, services.settle_steps(p, settled), strict=True
    ):
        _compensate(p, o, epoch, settlement)


def _run_alone(p: Pipeline, o: Order, epoch: int) -> None:
    reservation = services.reserve_step(p, o, epoch)
    charge = _until_done(lambda: services.charge_step(p, o, epoch))
    _compensate(p, o, epoch, services.settle_step(p, o, epoch, reservation, charge))


def _compensate(p: Pipeline, o: Order, epoch: int, settlement: Settlement) -> None:
    """The compensation chain: release, refund (retried until done), finalize."""
    if not (settlement.release_stock or settlement.refund_payment):
        return
    if settlement.release_stock:
        services.release_step(p, o.order_id, epoch, o.quantities())
    if settlement.refund_payment:
        _until_done(lambda: services.refund_step(p, o.order_id, epoch))
    services.finalize_step(p, epoch, settlement.outcome)


T = TypeVar("T")


def _until_done(step: Callable[[], T]) -> T:
    for _ in range(MAX_ATTEMPTS):
        try:
            return step()
        except TransientError:
            continue
    raise AssertionError(f"still failing after {MAX_ATTEMPTS} attempts")


def _one_by_one(
    specs: list[Spec], scarce_stock: int
) -> list[tuple[OutcomeKind, FailureReason | None]]:
    """The model: orders taken one at a time, in order."""
    left, expected = scarce_stock, []
    for spec in specs:
        if spec.kind == "declined":
            expected.append((OutcomeKind.FAILED, FailureReason.PAYMENT_DECLINED))
        elif spec.kind == "scarce" and spec.quantity > left:
            expected.append((OutcomeKind.FAILED, FailureReason.OUT_OF_STOCK))
        else:
            left -= spec.quantity if spec.kind == "scarce" else 0
            expected.append((OutcomeKind.COMPLETED, None))
    return expected


def _announced(client: redis.Redis, order_ids: set[str]) -> list[str]:
    """The order ids the completion stream announced an outcome for, once per mention
    (the stream's newest entries: the example's are among them)."""
    named = []
    for _id, fields in client.xrevrange(keys.LEDGER.completions, count=1000):
        if fields.get("event") != "outcome":
            continue
        mentioned = json.loads(fields["keys"]) if "keys" in fields else [fields.get("key")]
        named += [k for k in mentioned if k in order_ids]
    return named
