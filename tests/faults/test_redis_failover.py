"""Redis fails over to a replica that missed the primary's last writes, under load.

A primary with a real replica behind one address, as managed Redis runs it. While
orders flow through two bridges and two workers, the replication link is cut (the
primary still counts its replica online, so outcomes wait for it and are held
back), then the primary is SIGKILLed and the replica promoted behind the same
address: every write since the cut is gone, broker messages included.

Afterwards every order has exactly one outcome event and Redis agrees with it
(status, charges - refunds, stock), although the replica never saw some
of the outcomes the old primary recorded: none was published before the replica
had it. No order waited for ``WORKFLOW_STALL_TIMEOUT`` (set far above the test's
length): the bridges noticed the new server and re-sent what was in flight at once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from failover import FailoverStack
from harness import bridge_metric, restart_workers_kombu_crashed, wait_in_flight, wait_ready
from invariants import check_invariants
from partition import print_timings
from workload import Workload

from dev.servers import wait_until
from dev.stack import Child

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ORDERS = 1000
RATE = 45.0  # orders/s: a steady flow with orders always in flight
CUT_S = 1.5  # the replica misses this much of the primary's writes
STALL_TIMEOUT_S = 600  # no order may get near it
ENV = {
    "WORKFLOW_STALL_TIMEOUT": str(STALL_TIMEOUT_S),
    "REDIS_WAIT_TIMEOUT_MS": "500",
    # The harness's 32 would spread 1,000 orders thin; as in the restart test.
    "BRIDGE_MAX_IN_FLIGHT": "50",
}


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[FailoverStack]:
    """Replaces the suite's stack: this test's Redis is a primary with a replica."""
    with FailoverStack(tmp_path, ENV) as failover_stack:
        yield failover_stack


def test_failover_to_a_replica_that_missed_the_last_writes_loses_and_doubles_nothing(
    stack: FailoverStack,
) -> None:
    workers = [stack.add_worker(), stack.add_worker()]
    bridges = [stack.add_bridge(), stack.add_bridge()]
    wait_until(
        lambda: all(bridge_metric(b, "orders_bridge_redis_wait_replicas") == 1 for b in bridges),
        10,
        0.2,
        "every bridge to wait for the replica",
    )
    # The same orders without a fault first, on the same servers and processes: the
    # failover's cost in wall time is measured against it (printed, not asserted).
    baseline = Workload(stack, ORDERS)
    baseline_s = _wall_time(stack, baseline)

    workload = Workload(stack, ORDERS)
    started = time.time()
    workload.start(rate=RATE)
    workload.wait_published(len(workload.publications) // 3)
    wait_in_flight(stack, 1)
    stack.cut_replication()
    time.sleep(CUT_S)
    primary_offset, replica_offset = stack.replication_offsets()
    held_back = sum(bridge_metric(b, "orders_bridge_redis_replicas_behind_total") for b in bridges)
    failed_over_at = time.time()
    stack.fail_over()

    crashed = restart_workers_kombu_crashed(stack, workers)
    wait_ready(stack)
    report = check_invariants(stack, workload)
    print(report.summary())
    last_outcome = _last_outcome_at(stack, workload)

    sent = {cause: sum(_sent(b, cause) for b in bridges) for cause in ("failover", "stalled")}
    print_timings(
        "redis failover",
        {
            "replication bytes the replica missed": primary_offset - replica_offset,
            "WAITs held back while cut": int(held_back),
            "workflows re-sent after the failover": int(sent["failover"]),
            "workflows re-sent after a stall": int(sent["stalled"]),
            "fault-free wall time": baseline_s,
            "wall time through the failover": last_outcome - started,
            "ratio": f"{(last_outcome - started) / baseline_s:.2f}",
            "last outcome after the failover": last_outcome - failed_over_at,
        },
    )
    print(f"workers restarted after kombu's connection-loss crash: {[w.name for w in crashed]}")
    assert primary_offset > replica_offset, "the replica did not fall behind: no fault injected"
    assert held_back > 0, "no outcome was held back for the replica"
    assert report.ok, report.summary()
    assert sent["failover"] > 0, "no workflow was re-sent after the failover"
    assert sent["stalled"] == 0, "an order waited for WORKFLOW_STALL_TIMEOUT"
    assert all(b.alive and b.spawned == 1 for b in bridges), "a bridge died or was restarted"
    changes = [bridge_metric(b, "orders_bridge_redis_server_changes_total") for b in bridges]
    assert changes == [1, 1], f"each bridge must notice the new server once: {changes}"


def _wall_time(stack: FailoverStack, workload: Workload) -> float:
    """Seconds from the first publish to the last outcome stored, all checked."""
    started = time.time()
    workload.start(rate=RATE)
    report = check_invariants(stack, workload)
    assert report.ok, report.summary()
    return _last_outcome_at(stack, workload) - started


def _last_outcome_at(stack: FailoverStack, workload: Workload) -> float:
    return max(
        event.stored_at
        for event in stack.pipeline.all_outcomes()
        if event.order_id.startswith(workload.tag)
    )


def _sent(bridge: Child, cause: str) -> float:
    return bridge_metric(bridge, "orders_bridge_workflows_sent_total", cause=cause)
