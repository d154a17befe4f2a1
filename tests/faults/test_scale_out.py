"""The scale-out layout on one machine: two bridges sharing the durable consumer,
and workers split by queue, each with its own concurrency (one for ``orders``, one
for ``inventory``, two pool processes for ``payments``), as they would run on
separate hosts. Every order must end exactly once, and each worker must have run
only its own queue's tasks.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import FaultStack, wait_ready
from invariants import check_invariants
from workload import Workload

from orders import names

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ORDERS = 600
RATE = 40.0
SPLIT = {  # queue -> prefork processes
    names.QUEUE_ORDERS: "1",
    names.QUEUE_INVENTORY: "1",
    names.QUEUE_PAYMENTS: "2",
}


def test_two_bridges_and_workers_split_by_queue(stack: FaultStack) -> None:
    workers = {
        queue: stack.add_worker(args=("--queues", queue, "--concurrency", concurrency))
        for queue, concurrency in SPLIT.items()
    }
    stack.add_bridge()
    stack.add_bridge()
    workload = Workload(stack, ORDERS)
    workload.start(rate=RATE)

    report = check_invariants(stack, workload)
    print(report.summary())
    assert report.ok, report.summary()
    for queue, worker in workers.items():
        ran = _task_names_received(worker.log)
        assert ran, f"the {queue} worker ran nothing"
        assert all(name.startswith(f"{queue}.") for name in ran), (
            f"the {queue} worker ran other queues' tasks: {sorted(ran)}"
        )
    wait_ready(stack)


def _task_names_received(log: Path) -> set[str]:
    # "... Task inventory.reserve_stock[<id>] received"
    return {
        line.split("Task ", 1)[1].split("[", 1)[0]
        for line in log.read_text(errors="replace").splitlines()
        if "Task " in line and "] received" in line
    }
