"""The late-ack pitfall (nats-server issue 4786): JetStream accepts an ack that
arrives after ``ack_wait``, from a delivery that was meanwhile redelivered to
another consumer. Two bridges then hold the same order at once and both ack it.

The bridge acks only after the order's outcome event is stored, so whichever ack
lands, late or not, nothing is lost, and the Redis state makes the second holder
add no effect. This test makes it happen for real: two bridges share the durable
consumer, the one holding the order is frozen (SIGSTOP, so its ``in_progress()``
heartbeats stop) past ``ACK_WAIT``, the order is redelivered to the other, and the
frozen one is thawed while the workflow (slowed by ``PAYMENT_LATENCY_MS``) still
runs: both wait for the same workflow, both publish its outcome, both ack.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pipeline_stack as e2e
import pytest

from bridge import codec
from dev.servers import NatsServer, RedisServer, wait_until
from orders.domain.model import OutcomeKind, RawItem, RawOrder

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ACK_WAIT_S = 2
PAYMENT_LATENCY_MS = 8000  # the workflow outlives ack_wait several times over
ENV = {"ACK_WAIT": str(ACK_WAIT_S), "PAYMENT_LATENCY_MS": str(PAYMENT_LATENCY_MS)}
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture
def two_bridges(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Servers of their own (one bridge gets frozen), and two full stacks on them."""
    log_dir = tmp_path_factory.mktemp("e2e-late-ack")
    with NatsServer() as nats_server, RedisServer() as redis_server:
        stacks = [
            e2e.Stack(nats_server.url, redis_server.url, log_dir / name, dict(ENV))
            for name in ("a", "b")
        ]
        pipeline = e2e.Pipeline(stacks[0], nats_server.url, redis_server.url)
        try:
            for stack in stacks:
                stack.start()
            yield pipeline, stacks
        finally:
            for stack in stacks:  # never leave a frozen process behind
                if stack.bridge is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(stack.bridge.pid, signal.SIGCONT)
            codes = [stack.stop() for stack in stacks]
            pipeline.close()
        assert codes == [0, 0], "\n".join(s.logs() for s in stacks)


def _metric(stack: Any, name: str) -> float:
    """Sum of a bridge's Prometheus samples called ``name`` (all label sets)."""
    with _NO_PROXY.open(f"http://127.0.0.1:{stack.port}/metrics", timeout=3) as response:
        text = response.read().decode()
    pattern = re.compile(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? (\S+)$", re.M)
    return sum(float(value) for value in pattern.findall(text))


def _ready(stack: Any) -> bool:
    try:
        with _NO_PROXY.open(f"http://127.0.0.1:{stack.port}/ready", timeout=3) as response:
            return response.status == 200
    except OSError:
        return False


def _worker_logs(stacks: list[Any]) -> str:
    return "\n".join(
        s.worker_log(n).read_text(errors="replace")
        for s in stacks
        for n in range(1, s.workers_started + 1)
    )


RECEIVED = "orders_bridge_messages_received_total"
ACKED = "orders_bridge_messages_acked_total"
OUTCOMES = "orders_bridge_outcomes_total"
SENT = "orders_bridge_workflows_sent_total"


def test_two_bridges_holding_one_order_after_a_late_ack_give_one_outcome_and_one_charge(
    two_bridges: Any,
) -> None:
    pipeline, stacks = two_bridges
    order_id, sku = e2e.unique("late-ack"), e2e.unique("sku")
    pipeline.set_stock(sku, 10)
    created = RawOrder(
        order_id=order_id,
        customer_id="customer-1",
        items=(RawItem(product_id=sku, quantity=3, unit_price=2.5),),
        total_amount=7.5,
        currency="USD",
    )
    ack = pipeline.publish(codec.encode_order_created(created), msg_id=order_id)

    # 1. One bridge fetches it and sends the workflow: freeze that bridge.
    wait_until(
        lambda: sum(_metric(s, RECEIVED) for s in stacks) >= 1, 30, what="a bridge to fetch it"
    )
    first, second = sorted(stacks, key=lambda s: -_metric(s, RECEIVED))
    wait_until(
        lambda: (v := pipeline.status(order_id)) is not None and v.status == "PROCESSING",
        30,
        what="the workflow to start",
    )
    os.kill(first.bridge.pid, signal.SIGSTOP)
    try:
        # 2. Its heartbeats stop: after ack_wait the order goes to the other bridge.
        wait_until(lambda: _metric(second, RECEIVED) >= 1, 30, what="the redelivery")
        # A redelivery by the server (the frozen bridge can neither nak nor ack). Not a
        # time bound: ack_wait runs from the last heartbeat, sent before the freeze.
        assert pipeline.consumer_info().num_redelivered >= 1
        view = pipeline.status(order_id)
        assert view is not None and view.outcome is None, (
            "the workflow finished before both bridges held the order: raise PAYMENT_LATENCY_MS"
        )
    finally:
        # 3. Thaw the first: both now wait for the same workflow and both will ack,
        # the first with a delivery whose ack_wait is long gone.
        os.kill(first.bridge.pid, signal.SIGCONT)
    # 4. While the workflow still runs, nobody has acked: the thawed bridge's stale
    # delivery does not ack early (that ack would be accepted and could lose the order).
    time.sleep(ACK_WAIT_S / 2)
    view = pipeline.status(order_id)
    assert view is not None and view.outcome is None, "the order ended too soon after the thaw"
    assert (_metric(first, ACKED), _metric(second, ACKED)) == (0, 0)
    assert pipeline.consumer_info().num_ack_pending == 1

    event = pipeline.await_outcome(order_id, timeout=60)
    info = pipeline.await_idle(after_seq=ack.seq, timeout=30)
    # Nothing comes back later: a lost or misdirected ack would redeliver the order.
    time.sleep(3 * ACK_WAIT_S)
    later = pipeline.consumer_info()

    view = pipeline.status(order_id)
    assert view is not None
    worker_log = _worker_logs(stacks)
    steps = {
        step: len(re.findall(rf"{step}\[{re.escape(order_id)}:\S+\] succeeded", worker_log))
        for step in ("reserve_stock", "charge_payment", "settle_order")
    }
    facts = {
        "outcome events": [e.kind for e in pipeline.outcomes_for(order_id)],
        "status": (view.status, view.charges, view.refunds),
        "stock": pipeline.stock(sku),
        "gateway": pipeline.gateway_state(f"{order_id}:{view.epoch}"),
        "deliveries seen by each bridge": [_metric(s, RECEIVED) for s in (first, second)],
        "acks sent by each bridge": [_metric(s, ACKED) for s in (first, second)],
        "outcome events stored by the bridges": sum(_metric(s, OUTCOMES) for s in stacks),
        "left unacked": (later.num_ack_pending, later.num_pending),
        "ack floor past the order": later.ack_floor.stream_seq >= ack.seq,
        "deliveries after the outcome": later.delivered.consumer_seq - info.delivered.consumer_seq,
        "both bridges ready": [_ready(s) for s in stacks],
    }
    context = f"run {view.run}, epoch {view.epoch}, steps run {steps}"
    assert event.kind is OutcomeKind.COMPLETED, context
    assert facts == {
        "outcome events": [OutcomeKind.COMPLETED],
        "status": ("COMPLETED", 1, 0),
        "stock": 7,
        "gateway": "approved",
        "deliveries seen by each bridge": [1, 1],
        "acks sent by each bridge": [1, 1],
        "outcome events stored by the bridges": 1,
        "left unacked": (0, 0),
        "ack floor past the order": True,
        "deliveries after the outcome": 0,
        "both bridges ready": [True, True],
    }, context
    assert all(n >= 1 for n in steps.values()), context
