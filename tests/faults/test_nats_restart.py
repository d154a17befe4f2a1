"""NATS goes away under load, and the bridges' durable consumer with it.

- The server is stopped (SIGTERM) or killed (SIGKILL) mid-flow and started again on
  the same port and file store. Nobody restarts the bridges: while the server is
  gone every bridge's ``/ready`` (and ``/health``) says 503; once it is back they
  reconnect, their pull subscriptions fetch again (nats.py pull subscriptions can
  stall after a server restart, nats-io/nats.py#504: the consumer watchdog replaces
  a stalled one), ``/ready`` returns to 200 by itself and every order still ends
  exactly once. The producer retries its publishes through the outage.
- The durable consumer ``order-bridge`` is deleted while the bridges use it. A
  bridge's watchdog re-creates it; ``/ready`` says 503 while it is missing. The new
  consumer starts from the beginning of the stream (``DeliverPolicy.ALL``), so every
  order already published is delivered again and must be acked without a second
  outcome.
"""

from __future__ import annotations

import contextlib
import time
import urllib.request
from typing import Any

import pytest
from harness import FaultStack, ready_status, wait_in_flight, wait_ready
from invariants import check_invariants
from nats.js.errors import NotFoundError
from partition import Probe, fmt, healthy, not_ready, print_timings, ready
from workload import Workload

from dev.outcomes import count_stored_outcomes
from dev.servers import wait_until
from dev.stack import Child
from orders import names

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ORDERS = 2000
RATE = 45.0  # orders/s: a steady flow with orders always in flight
SLOW_GATEWAY = {"PAYMENT_LATENCY_MS": "50"}  # orders stay in flight long enough to be caught
BRIDGE_ENV = {
    # A pull subscription that fetches nothing while messages wait is replaced after
    # this (default 30 s): short, so that a stall after a restart costs seconds.
    "CONSUMER_STALL_TIMEOUT": "10",
    # No worker dies here, so no workflow is lost: one only waits in the Celery queue,
    # and the harness's 10 s would send queued workflows again whenever the two cores
    # are busier than usual, a backlog that feeds itself.
    "WORKFLOW_STALL_TIMEOUT": "60",
}
DOWN_S = 6.0  # NATS stays away this long: several of the clients' reconnect attempts
NOTICE_WITHIN_S = 10.0  # a closed connection is noticed at once
RECOVER_WITHIN_S = 60.0  # reconnect + at most one stall timeout + a watchdog period
FLOWING = 100  # outcome events stored after the fault that show orders flow again
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# ---------------------------------------------------------------------------------
# The server stopped or killed, then started again


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGKILL"])
def test_nats_restarted_mid_flow(stack: FaultStack, signal_name: str) -> None:
    stack.add_worker(SLOW_GATEWAY)
    stack.add_worker(SLOW_GATEWAY)
    bridges = [stack.add_bridge(BRIDGE_ENV), stack.add_bridge(BRIDGE_ENV)]
    workload = Workload(stack, ORDERS)
    workload.start(rate=RATE)

    with Probe(stack) as probe:
        workload.wait_published(len(workload.publications) // 3)
        wait_in_flight(stack, 1)
        down_at, down_wall = time.monotonic(), time.time()
        if signal_name == "SIGKILL":
            stack.nats.kill()
        else:
            stack.nats.stop()

        noticed = {b.name: probe.wait_for(b, down_at, not_ready, NOTICE_WITHIN_S) for b in bridges}
        assert all(t is not None for t in noticed.values()), f"/ready still 200: {noticed}"
        time.sleep(max(0.0, down_at + DOWN_S - time.monotonic()))
        assert all(b.alive for b in bridges), "a bridge exited while NATS was down"

        restarted_at = time.monotonic()
        stack.nats.start()
        nats_up = time.monotonic() - restarted_at
        for bridge in bridges:
            # Never ready (nor healthy) while NATS was gone, from its first 503 on (a
            # /ready already answered when the server went may still say 200).
            down = probe.during(bridge, down_at + noticed[bridge.name], restarted_at)
            assert down, f"{bridge.name}: no /ready sample while NATS was down"
            assert not any(s.ready == 200 for s in down), f"{bridge.name} ready without NATS"
            assert not any(healthy(s) for s in down), f"{bridge.name} healthy without NATS"

        outcomes_at_restart = _outcomes_stored(stack)
        wait_until(
            lambda: _outcomes_stored(stack) >= outcomes_at_restart + FLOWING,
            RECOVER_WITHIN_S,
            0.5,
            f"{FLOWING} more outcomes after the NATS restart (orders stopped flowing?)",
        )
        flowing = time.monotonic() - restarted_at
        wait_ready(stack, RECOVER_WITHIN_S)
        back = {b.name: probe.wait_for(b, restarted_at, ready, NOTICE_WITHIN_S) for b in bridges}

    report = check_invariants(stack, workload)
    print(report.summary())
    print_timings(
        f"NATS {signal_name}",
        {
            "/ready 503 after": {k: fmt(v) for k, v in noticed.items()},
            "down": DOWN_S,
            "server up in": nats_up,
            f"{FLOWING} outcomes after": flowing,
            "/ready 200 after": {k: fmt(v) for k, v in back.items()},
            "re-subscriptions": _log_count(bridges, "re-subscribing"),
            "publish attempts": sum(p.attempts for p in workload.publications),
            "publishes": len(workload.publications),
            "since the fault": f"{time.time() - down_wall:.0f}s",
        },
    )
    assert report.ok, report.summary()
    assert all(b.alive for b in bridges), "a bridge exited"
    assert sum(p.attempts for p in workload.publications) > len(workload.publications), (
        "no publish was retried: the producer never saw the outage"
    )
    wait_ready(stack)


# ---------------------------------------------------------------------------------
# The durable consumer deleted


def test_deleted_consumer_is_recreated_and_the_replay_is_idempotent(stack: FaultStack) -> None:
    stack.add_worker(SLOW_GATEWAY)
    stack.add_worker(SLOW_GATEWAY)
    bridges = [stack.add_bridge(BRIDGE_ENV), stack.add_bridge(BRIDGE_ENV)]
    workload = Workload(stack, ORDERS)
    workload.start(rate=RATE)

    workload.wait_published(len(workload.publications) // 3)
    wait_in_flight(stack, 1)
    old = stack.pipeline.consumer_info()
    outcomes_before = _outcomes_stored(stack)
    deleted_at = time.monotonic()
    assert stack.pipeline._nats(
        lambda js: js.delete_consumer(names.ORDERS_STREAM, names.DURABLE_CONSUMER)
    )

    # Poll until the consumer is back and every bridge is ready again. A /ready answer
    # taken while the consumer was missing before and after it must be 503.
    seen_503 = dict.fromkeys((b.name for b in bridges), False)
    ready_while_missing: list[str] = []
    missing_for = 0.0
    deadline = deleted_at + RECOVER_WITHIN_S
    while True:
        missing_before = _consumer_missing(stack)
        statuses = {b.name: ready_status(b) for b in bridges}
        missing_after = _consumer_missing(stack)
        now = time.monotonic()
        for name, status in statuses.items():
            seen_503[name] |= status == 503
            if missing_before and missing_after and status != 503:
                ready_while_missing.append(f"{name}: {status} at +{now - deleted_at:.1f}s")
        if missing_after:
            missing_for = now - deleted_at
        elif all(s == 200 for s in statuses.values()) and any(seen_503.values()):
            break
        assert now < deadline, (
            f"consumer missing {missing_after}, /ready {statuses} "
            f"{now - deleted_at:.0f}s after the deletion"
        )
        time.sleep(0.05)
    recovered = time.monotonic() - deleted_at

    new = stack.pipeline.consumer_info()
    assert new.created > old.created, "the consumer was not re-created"
    assert not ready_while_missing, (
        f"/ready not 503 while the consumer was missing: {ready_while_missing}"
    )
    assert any(seen_503.values()), f"no bridge said 503 after the deletion: {seen_503}"
    recreated_by = [b.name for b in bridges if _log_count([b], "re-creating it")]
    assert recreated_by, "no bridge logged re-creating the consumer"

    report = check_invariants(stack, workload)
    print(report.summary())
    duplicates = sum(_metric(b, "orders_bridge_duplicates_total") for b in bridges)
    print_timings(
        "consumer deleted",
        {
            "missing for (at least)": missing_for,
            "/ready 200 again after": recovered,
            "re-created by": recreated_by,
            "/ready 503 seen": seen_503,
            "outcomes stored at deletion": outcomes_before,
            "deliveries found already done": int(duplicates),
        },
    )
    assert report.ok, report.summary()
    # The replay from the start of the stream reached the bridges: every order that
    # had its outcome before the deletion was delivered again and found done (the
    # workload's own duplicate publishes add to this count, never subtract).
    assert duplicates >= 0.9 * outcomes_before, (
        f"only {duplicates:.0f} deliveries found done, {outcomes_before} outcomes were "
        "stored before the deletion: was the stream replayed?"
    )
    wait_ready(stack)


# ---------------------------------------------------------------------------------
# Helpers


def _outcomes_stored(stack: FaultStack) -> int:
    """Outcome events (``ORDER.completed`` + ``ORDER.failed``) stored in ``ORDERS``."""

    found: list[int] = []

    def counted() -> bool:
        with contextlib.suppress(Exception):  # a server still recovering its streams
            found.append(stack.pipeline._nats(count_stored_outcomes))
        return bool(found)

    wait_until(counted, RECOVER_WITHIN_S, 0.5, "NATS to answer stream info")
    return found[0]


def _consumer_missing(stack: FaultStack) -> bool:
    async def missing(js: Any) -> bool:
        try:
            await js.consumer_info(names.ORDERS_STREAM, names.DURABLE_CONSUMER)
        except NotFoundError:
            return True
        return False

    return stack.pipeline._nats(missing)


def _log_count(procs: list[Child], text: str) -> int:
    return sum(p.log.read_text(errors="replace").count(text) for p in procs)


def _metric(bridge: Child, name: str) -> float:
    """One unlabelled sample of the bridge's ``GET /metrics``."""
    with _NO_PROXY.open(f"http://127.0.0.1:{bridge.port}/metrics", timeout=3) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{bridge.name}: no metric {name}")
