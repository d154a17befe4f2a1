"""A worker dies under load: the whole worker (SIGKILL of the Celery main process
and its prefork pool), or one pool child. Every order still ends exactly once.

A task taken by a killed worker is neither acked nor requeued by Redis before the
visibility timeout (minutes); the bridge sends the stalled workflow again after
``WORKFLOW_STALL_TIMEOUT``, and every step is idempotent. A task whose pool child
dies under it is requeued at once (``task_reject_on_worker_lost``).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from harness import FaultStack, unfinished_tasks, wait_ready
from invariants import check_invariants
from workload import Workload

from dev.servers import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ORDERS = 1500
RATE = 40.0  # orders/s: a steady flow with orders always in flight
# A gateway call takes this long, so a worker is caught inside a task, not between.
SLOW_GATEWAY = {"PAYMENT_LATENCY_MS": "50"}
SLOWER_GATEWAY = {"PAYMENT_LATENCY_MS": "300"}


def test_sigkilled_worker_and_its_pool_lose_no_order(stack: FaultStack) -> None:
    victim = stack.add_worker(SLOWER_GATEWAY)
    stack.add_worker(SLOW_GATEWAY)
    stack.add_bridge()
    workload = Workload(stack, ORDERS)
    workload.start(rate=RATE)

    workload.wait_published(len(workload.publications) // 3)
    wait_until(lambda: _charging(victim.log), 10, 0.01, "the worker to be charging")
    stack.kill(victim)
    interrupted = unfinished_tasks(victim.log)
    wait_until(lambda: not stack.group_alive(victim), 5, 0.05, "the pool to die with its parent")
    workload.wait_published(2 * len(workload.publications) // 3)
    stack.add_worker()

    report = check_invariants(stack, workload)
    print(report.summary())
    assert report.ok, report.summary()
    assert _charging(victim.log), f"the worker was not charging when killed: {interrupted}"
    # Its tasks stay unacked in Redis for the visibility timeout (minutes): only the
    # bridge sending the stalled workflows again finished those orders.
    assert report.stats["workflow re-sent"] > 0, report.summary()
    wait_ready(stack)


def test_sigkilled_pool_child_has_its_task_requeued(stack: FaultStack) -> None:
    victim = stack.add_worker(SLOW_GATEWAY)
    stack.add_worker(SLOW_GATEWAY)
    stack.add_bridge()
    workload = Workload(stack, ORDERS)
    workload.start(rate=RATE)

    workload.wait_published(len(workload.publications) // 3)
    # A child may be between tasks when it dies; kill until one dies under a task.
    killed: list[int] = []
    for _ in range(10):
        killed.append(stack.kill_pool_child(victim))
        wait_until(
            lambda: len(set(stack.pool_children(victim)) - set(killed)) == 2,
            30,
            0.05,
            "the worker to replace its pool child",
        )
        with contextlib.suppress(TimeoutError):
            wait_until(lambda: _lost_tasks(victim.log), 2, 0.05, "a lost task to be logged")
            break
    lost = _lost_tasks(victim.log)

    report = check_invariants(stack, workload)
    print(report.summary())
    assert report.ok, report.summary()
    assert lost, f"killed children {killed}, none of them was running a task"
    assert victim.alive and len(stack.pool_children(victim)) == 2
    wait_ready(stack)


def _charging(log: Path) -> list[str]:
    """Charges the worker took and had not finished (by its log)."""
    return [task for task in unfinished_tasks(log) if task.endswith(":charge")]


def _lost_tasks(log: Path) -> int:
    """Tasks whose pool child died under them, as the worker's main process logs them."""
    return log.read_text(errors="replace").count("WorkerLostError")
