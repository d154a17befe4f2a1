"""The payment gateway fails transiently most of the time (and, half of those times,
after it charged), then the failing workers are replaced by healthy ones.

Charges are retried with their idempotency key, refunds until they succeed. An
order may outlast every retry and delivery: it is then dead-lettered, which this
test alone accepts as an end for an order that reached the workers, provided its
compensation left no money charged and no stock held.
"""

from __future__ import annotations

import pytest
from harness import FaultStack, wait_ready
from invariants import check_invariants
from workload import Workload

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ORDERS = 1000
RATE = 30.0
HEALTHY_GATEWAY = {"PAYMENT_TRANSIENT_FAILURE_RATE": "0"}


# At 0.6 an order rarely outlasts five deliveries of three attempts each; at 0.9,
# for the whole time orders are published, many do, so dead-lettering and its
# compensation (refunds failing too, until the healthy workers come) run under load.
@pytest.mark.parametrize(("failure_rate", "failing_share"), [("0.6", 0.5), ("0.9", 1.0)])
def test_transient_gateway_failures_then_recovery(
    stack: FaultStack, failure_rate: str, failing_share: float
) -> None:
    failing_gateway = {
        "PAYMENT_TRANSIENT_FAILURE_RATE": failure_rate,
        "PAYMENT_LATENCY_MS": "50",
    }
    failing = [stack.add_worker(failing_gateway), stack.add_worker(failing_gateway)]
    stack.add_bridge()
    workload = Workload(stack, ORDERS)
    workload.start(rate=RATE)

    workload.wait_published(int(len(workload.publications) * failing_share))
    stack.add_worker(HEALTHY_GATEWAY)
    stack.add_worker(HEALTHY_GATEWAY)
    for worker in failing:
        stack.stop(worker)
    timeouts = sum(w.log.read_text().count("payment gateway timed out") for w in failing)

    report = check_invariants(stack, workload, dead_letter_ok=True)
    print(report.summary())
    assert report.ok, report.summary()
    assert timeouts > 0, "the failing gateway never failed"
    wait_ready(stack)
