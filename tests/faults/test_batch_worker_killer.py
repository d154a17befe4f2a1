"""A batch holding an order that kills its worker process every time (as an
out-of-memory kill would): the batch task keeps dying with it until it refuses to
run (``TASK_MAX_WORKER_LOSSES``), which fails the batch as a whole. That says
nothing about the other orders, so each is sent again alone at once: they complete,
exactly once, and the killer, alone now, is compensated and dead-lettered after its
deliveries. Real bridge and worker processes; the kill is a real SIGKILL.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from orders_builder import order
from pipeline_stack import Pipeline, pipeline_of_its_own

from dev.servers import wait_until
from orders import names
from orders.domain.model import OutcomeKind

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

POISON_SKU = "oom-poison-sku"  # tests/faults/oom/sitecustomize.py
ENV = {
    "PYTHONPATH": str(Path(__file__).parent / "oom"),
    "TASK_MAX_WORKER_LOSSES": "2",
    "MAX_DELIVERIES": "2",
}
INNOCENT = 12


@pytest.fixture
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    with pipeline_of_its_own(tmp_path_factory.mktemp("batch-killer"), ENV) as running:
        yield running


def test_a_worker_killer_in_a_batch_is_isolated_and_the_rest_complete(
    pipeline: Pipeline,
) -> None:
    run = uuid.uuid4().hex[:8]
    sku = f"sku-{run}"
    pipeline.set_stock(sku, 100)
    pipeline.set_stock(POISON_SKU, 100)
    innocent = [order(f"ok-{run}-{n}", [(sku, 1, 5.0)]) for n in range(INNOCENT)]
    killer = order(f"killer-{run}", [(POISON_SKU, 1, 5.0)])
    placed = [*innocent[:6], killer, *innocent[6:]]

    pipeline.stack.stop()  # all stored before the bridge's first fetch: one batch
    last_seq = 0
    for o in placed:
        last_seq = pipeline.publish(o, msg_id=o.order_id).seq
    pipeline.stack.start()
    pipeline.await_idle(after_seq=last_seq, timeout=240)

    sizes = pipeline.batch_sizes()
    assert sizes["count"] < len(placed), sizes  # the killer went in a batch of several

    by_order = pipeline.outcomes_by_order()
    for o in innocent:
        [event] = by_order[o.order_id]  # exactly one outcome each
        assert event.kind is OutcomeKind.COMPLETED, o.order_id
        view = pipeline.status(o.order_id)
        assert view is not None and view.charges - view.refunds == 1, view
    assert pipeline.stock(sku) == 100 - INNOCENT

    assert pipeline.outcomes_for(killer.order_id) == []
    [letter] = [d for d in pipeline.dlq_messages() if killer.order_id.encode() in d.data]
    assert "lost its worker process" in letter.headers[names.HDR_DLQ_REASON]

    def compensated() -> bool:
        view = pipeline.status(killer.order_id)
        return view is not None and view.charges == view.refunds and view.dead

    wait_until(compensated, 60, 0.5, "the killer's charge to be refunded")
    assert pipeline.stock(POISON_SKU) == 100
