"""Redis dies under load (SIGKILL: no shutdown, no final fsync) and comes back on the
same port from its append-only file (``appendfsync always``: every acknowledged
write survived). Nobody restarts the bridges or the workers: Celery reconnects
its broker and its state clients, the bridges their completion reader and state
client, ``/ready`` says 503 for as long as Redis is gone and 200 once it is back,
and every order still ends exactly once with its money and stock accounted for.
"""

from __future__ import annotations

import time

import pytest
from harness import FaultStack, restart_workers_kombu_crashed, wait_in_flight, wait_ready
from invariants import check_invariants
from partition import (
    Probe,
    counts_in,
    first_log_time,
    not_ready,
    print_timings,
    ready,
)
from workload import Workload

from dev.servers import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ORDERS = 2000
RATE = 45.0  # orders/s: a steady flow with orders always in flight
DOWN_S = 8.0  # Redis stays dead this long: past several of Celery's reconnect attempts
NOTICE_WITHIN_S = 10.0  # a refused connection fails a /ready check at once
RECOVER_WITHIN_S = 60.0
DONE = " succeeded in "  # a Celery task finished
# Two bridges share the harness's 100 orders in flight: with 100 each, the Celery
# queue alone holds a loaded two-core machine's work for longer than
# WORKFLOW_STALL_TIMEOUT (10 s), and healthy workflows are sent again and again.
BRIDGE_ENV = {"BRIDGE_MAX_IN_FLIGHT": "50"}


def test_redis_sigkilled_mid_flow_and_restarted_from_its_aof(stack: FaultStack) -> None:
    workers = [stack.add_worker(), stack.add_worker()]
    bridges = [stack.add_bridge(BRIDGE_ENV), stack.add_bridge(BRIDGE_ENV)]
    workload = Workload(stack, ORDERS)
    workload.start(rate=RATE)

    with Probe(stack) as probe:
        workload.wait_published(len(workload.publications) // 3)
        wait_in_flight(stack, 1)
        in_flight = stack.pipeline.consumer_info().num_ack_pending
        killed_at, killed_wall = time.monotonic(), time.time()
        stack.redis.kill()

        noticed = {
            b.name: probe.wait_for(b, killed_at, not_ready, NOTICE_WITHIN_S) for b in bridges
        }
        assert all(t is not None for t in noticed.values()), f"/ready still 200: {noticed}"
        time.sleep(max(0.0, killed_at + DOWN_S - time.monotonic()))

        log_before = len(stack.redis.log_path.read_text(errors="replace"))
        restarted_at, restarted_wall = time.monotonic(), time.time()
        stack.redis.start()
        redis_up = time.monotonic() - restarted_at
        back = {b.name: probe.wait_for(b, restarted_at, ready, RECOVER_WITHIN_S) for b in bridges}
        wait_ready(stack, RECOVER_WITHIN_S)
        for bridge in bridges:
            # Never ready while Redis was gone (after the first 503: a /ready already
            # answered when the kill landed may still say 200).
            down = probe.during(bridge, killed_at + noticed[bridge.name], restarted_at)
            assert down, f"{bridge.name}: no /ready sample while Redis was down"
            assert not any(s.ready == 200 for s in down), f"{bridge.name} ready without Redis"

        # A Celery worker can die on the lost connection itself (kombu#582); a
        # supervisor (systemd, Kubernetes) restarts it, so does this test, and the
        # orders must not notice.
        crashed = restart_workers_kombu_crashed(stack, workers)

        # The workers recover: each finishes tasks again.
        done_before = {w.name: counts_in(w.log, DONE) for w in workers}
        first_outcome = probe.first_outcome_after(restarted_at, timeout=RECOVER_WITHIN_S)
        wait_until(
            lambda: all(counts_in(w.log, DONE) > done_before[w.name] for w in workers),
            RECOVER_WITHIN_S,
            0.5,
            "every worker to finish tasks after the restart",
        )

    worker_logs = [w.log for w in workers]
    print_timings(
        "redis SIGKILL",
        {
            "in flight at kill": in_flight,
            "/ready 503 after kill": max(noticed.values()),  # type: ignore[type-var]
            "redis down": DOWN_S,
            "redis serving after": redis_up,
            "/ready 200 after restart": max(back.values()),  # type: ignore[type-var]
            "first outcome after restart": first_outcome,
            "worker saw broker lost": first_log_time(
                worker_logs, "Connection to broker lost", killed_wall
            ),
            "worker reconnected": first_log_time(worker_logs, "Connected to redis", restarted_wall),
        },
    )

    report = check_invariants(stack, workload)
    print(report.summary())
    assert report.ok, report.summary()
    restart_log = stack.redis.log_path.read_text(errors="replace")[log_before:]
    assert "loaded from append only file" in restart_log.lower(), restart_log[-2000:]
    for proc in bridges:
        assert proc.alive and proc.spawned == 1, f"{proc} was restarted or died"
    for proc in workers:
        assert proc.alive, f"{proc} died"
    print(f"workers restarted after kombu's connection-loss crash: {[w.name for w in crashed]}")
    assert first_outcome is not None, f"no outcome within {RECOVER_WITHIN_S:.0f}s of the restart"
    wait_ready(stack)
