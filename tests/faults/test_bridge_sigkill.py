"""A bridge dies under load (SIGKILL: no drain, no nak). The orders it held come back
after ``ACK_WAIT`` to whichever bridge is left, or to the same one restarted, and
each redelivery continues where the order was: it re-attaches to the running
workflow, publishes the outcome already decided, or acks what was published.
Every order still ends exactly once.
"""

from __future__ import annotations

import time

import pytest
from harness import FaultStack, ready_status, wait_bridge_in_flight, wait_ready
from invariants import check_invariants
from workload import Workload

from dev.servers import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ORDERS = 1500
RATE = 40.0  # orders/s: a steady flow with orders always in flight
# Gateway calls take this long, so orders stay in flight long enough to be caught there.
SLOW_GATEWAY = {"PAYMENT_LATENCY_MS": "50"}


def test_one_of_two_bridges_sigkilled_the_other_carries_on(stack: FaultStack) -> None:
    stack.add_worker(SLOW_GATEWAY)
    stack.add_worker(SLOW_GATEWAY)
    victim = stack.add_bridge()
    survivor = stack.add_bridge()
    workload = Workload(stack, ORDERS)
    workload.start(rate=RATE)

    workload.wait_published(len(workload.publications) // 3)
    wait_bridge_in_flight(victim, 2)
    stack.kill(victim)
    assert ready_status(victim) is None
    assert ready_status(survivor) == 200
    # The survivor alone takes the new orders and, after ACK_WAIT, the victim's.
    acked = stack.pipeline.consumer_info().ack_floor.stream_seq
    wait_until(
        lambda: stack.pipeline.consumer_info().ack_floor.stream_seq > acked + 100,
        30,
        0.5,
        "the surviving bridge to ack orders",
    )
    workload.wait_published(2 * len(workload.publications) // 3)
    stack.restart(victim)

    report = check_invariants(stack, workload)
    print(report.summary())
    assert report.ok, report.summary()
    assert report.redeliveries > 0, "the bridge was killed holding no message"
    wait_ready(stack)


def test_only_bridge_sigkilled_and_restarted(stack: FaultStack) -> None:
    stack.add_worker(SLOW_GATEWAY)
    stack.add_worker(SLOW_GATEWAY)
    bridge = stack.add_bridge()
    workload = Workload(stack, ORDERS)
    workload.start(rate=RATE)

    workload.wait_published(len(workload.publications) // 3)
    wait_bridge_in_flight(bridge, 3)
    stack.kill(bridge)
    time.sleep(3)  # orders keep arriving with nobody to take them
    stack.restart(bridge)

    report = check_invariants(stack, workload)
    print(report.summary())
    assert report.ok, report.summary()
    assert report.redeliveries > 0, "the bridge was killed holding no message"
    wait_ready(stack)
