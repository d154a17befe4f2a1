"""Group commit through real processes: orders fetched together go to Celery as one
chord of batch tasks, and each still ends on its own, exactly once.

A stack of its own, stopped while the orders are published, so that the bridge's
first fetch holds all of them (a batch is the new workflows of one fetch).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from orders_builder import order
from pipeline_stack import Pipeline, pipeline_of_its_own

from orders.adapters import redis_keys
from orders.domain.model import FailureReason, OutcomeKind

pytestmark = pytest.mark.e2e

# One charge attempt in four fails transiently (half of them after charging): an
# order so hit is split out of its batch and retried alone, up to eight times.
ENV = {"PAYMENT_TRANSIENT_FAILURE_RATE": "0.25", "TASK_MAX_RETRIES": "8"}
VALID, DECLINED, OUT_OF_STOCK = 20, 2, 2


@pytest.fixture
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    with pipeline_of_its_own(tmp_path_factory.mktemp("e2e-batching"), ENV) as running:
        yield running


def test_a_mixed_batch_ends_each_order_once_on_its_own(pipeline: Pipeline) -> None:
    run = uuid.uuid4().hex[:8]
    sku, scarce = f"sku-{run}", f"scarce-{run}"
    pipeline.set_stock(sku, 1000)
    pipeline.set_stock(scarce, 0)
    expected: dict[str, tuple[OutcomeKind, FailureReason | None]] = {}
    orders = []
    for n in range(VALID):
        orders.append(order(f"ok-{run}-{n}", [(sku, 1, 5.0)]))
        expected[orders[-1].order_id] = (OutcomeKind.COMPLETED, None)
    for n in range(DECLINED):  # above PAYMENT_DECLINE_ABOVE (10000.00)
        orders.append(order(f"declined-{run}-{n}", [(sku, 1, 20_000.0)]))
        expected[orders[-1].order_id] = (OutcomeKind.FAILED, FailureReason.PAYMENT_DECLINED)
    for n in range(OUT_OF_STOCK):
        orders.append(order(f"scarce-{run}-{n}", [(scarce, 1, 5.0)]))
        expected[orders[-1].order_id] = (OutcomeKind.FAILED, FailureReason.OUT_OF_STOCK)
    invalid = order(f"invalid-{run}", [(sku, 0, 5.0)])  # decided by the bridge: no batch
    expected[invalid.order_id] = (OutcomeKind.FAILED, FailureReason.INVALID_ORDER)

    pipeline.stack.stop()  # all stored before the bridge's first fetch
    last_seq = 0
    for placed in [*orders, invalid]:
        last_seq = pipeline.publish(placed, msg_id=placed.order_id).seq
    pipeline.stack.start()
    pipeline.await_idle(after_seq=last_seq, timeout=120)

    by_order = pipeline.outcomes_by_order()
    for order_id, (kind, reason) in expected.items():
        [event] = by_order[order_id]  # exactly one outcome each
        got = (event.kind, event.fields.get("reason") or None)
        assert got == (kind, reason.value if reason else None), order_id
        view = pipeline.status(order_id)
        assert view is not None
        charged = view.charges - view.refunds
        assert charged == (1 if kind is OutcomeKind.COMPLETED else 0), (order_id, view)
    assert pipeline.stock(sku) == 1000 - VALID
    assert pipeline.stock(scarce) == 0

    sizes = pipeline.batch_sizes()
    worked = VALID + DECLINED + OUT_OF_STOCK
    assert sizes["sum"] == worked  # every order the workers saw was sent once, new
    assert sizes["count"] < worked, sizes  # in fewer canvases than orders
    # At a quarter of the charges failing, some of 24 orders were split out and
    # finished alone (the chance that none was is about one in a thousand).
    split = [o for o in expected if pipeline.redis_key_exists(_split_key(pipeline, o))]
    assert split, "no order was split out of its batch"


def _split_key(pipeline: Pipeline, order_id: str) -> str:
    view = pipeline.status(order_id)
    assert view is not None
    return redis_keys.split(order_id, view.epoch, 1)
