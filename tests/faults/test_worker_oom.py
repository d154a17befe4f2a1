"""A task that kills its own worker process every time (as an out-of-memory kill
would). ``task_reject_on_worker_lost`` requeues it, and Redis has no redelivered
flag (celery#9082), so without a bound it would be requeued forever. The task
refuses to run after ``TASK_MAX_WORKER_LOSSES`` lost starts, the bridge naks
the order, and after ``MAX_DELIVERIES`` it is compensated and dead-lettered with
a reason. The other orders keep flowing and end exactly once.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import FaultStack, wait_ready
from invariants import check_invariants
from workload import Workload

from dev.servers import wait_until
from orders import names
from orders.domain.model import RawItem, RawOrder

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ORDERS = 600
POISON_ORDERS = 2
OOM_PLUGIN = {"PYTHONPATH": str(Path(__file__).parent / "oom")}
POISON_SKU = "oom-poison-sku"  # tests/faults/oom/sitecustomize.py
FAST_GIVE_UP = {"MAX_DELIVERIES": "3", "TASK_MAX_WORKER_LOSSES": "2"}


def test_task_killing_its_worker_is_dead_lettered_and_others_flow(tmp_path: Path) -> None:
    with FaultStack(tmp_path, extra_env=FAST_GIVE_UP) as stack:
        stack.add_worker(OOM_PLUGIN)
        stack.add_worker(OOM_PLUGIN)
        stack.add_bridge()
        pipeline = stack.pipeline
        pipeline.set_stock(POISON_SKU, 100)
        workload = Workload(stack, ORDERS)
        workload.start(rate=40.0)

        killers = [f"{workload.tag}-oom-{n}" for n in range(POISON_ORDERS)]
        for order_id in killers:
            order = RawOrder(
                order_id=order_id,
                customer_id="c-oom",
                items=(RawItem(product_id=POISON_SKU, quantity=2, unit_price=3.0),),
                total_amount=6.0,
                currency="USD",
            )
            pipeline.publish(order, msg_id=order_id)

        report = check_invariants(stack, workload)
        print(report.summary())
        assert report.ok, report.summary()

        def dead_letters() -> dict[str, dict[str, str]]:
            found = {}
            for letter in pipeline.dlq_messages():
                for order_id in killers:
                    if order_id.encode() in letter.data:
                        found[order_id] = letter.headers
            return found

        wait_until(
            lambda: len(dead_letters()) == POISON_ORDERS, 120, 0.5, "the killers' dead letters"
        )
        letters = dead_letters()
        for order_id in killers:
            reason = letters[order_id][names.HDR_DLQ_REASON]
            assert "lost its worker process" in reason, reason
            assert pipeline.outcomes_for(order_id) == []

        def compensated() -> bool:
            views = [pipeline.status(order_id) for order_id in killers]
            return all(
                v is not None and v.charges == v.refunds and v.reason == "DEAD_LETTERED"
                for v in views
            )

        wait_until(compensated, 60, 0.5, "the killers' charges to be refunded")
        assert pipeline.stock(POISON_SKU) == 100
        # The workers are still there, their pools replenished.
        assert all(w.alive for w in stack.workers)
        wait_ready(stack)
