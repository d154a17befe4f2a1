"""The network between the pipeline and its servers fails while orders flow.

Bridges and workers reach NATS and Redis through loopback proxies
(:class:`partition.PartitionStack`); the test's producer and checker use the
servers directly. Three kinds of partition:

- **black hole, then healed** (NATS; Redis): bytes stop flowing but every socket
  stays open, for longer than the NATS client's stale-connection detection
  (ping every 5 s, 3 outstanding) and than a request timeout. Processes only
  notice through their own pings and timeouts (half-open connections), and
  after the heal the same connections, or new ones, carry on.
- **black hole ending in resets** (NATS; Redis): the partition ends with every
  proxied connection reset, as when a peer's state is gone; clients reconnect.

After each, every order ends exactly once (no outcome lost or duplicated),
money and stock add up, poison is dead-lettered, and ``/ready`` said 503 while
the bridges could not work and says 200 again afterwards. Timings are printed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import wait_in_flight, wait_ready
from invariants import check_invariants
from partition import (
    PartitionStack,
    Probe,
    counts_in,
    first_log_time,
    healthy,
    not_ready,
    print_timings,
    ready,
    unhealthy,
)
from workload import Workload

from dev.servers import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ORDERS = 1500
RATE = 40.0  # orders/s: a steady flow with orders always in flight
LONG_S = 25.0  # past 5 s x 3 pings (+ one interval) and a 5 s request timeout
SHORT_S = 10.0  # before the NATS client's stale detection: only the resets end it
# The NATS client gives up on a connection after 3 unanswered pings sent every 5 s:
# it notices on the 4th tick, 15-20 s in. Generous, for a loaded machine.
NATS_NOTICE_WITHIN_S = 30.0
# A /ready check that hangs fails after 2 s: a blocked server shows at once.
READY_NOTICE_WITHIN_S = 15.0
RECOVER_WITHIN_S = 60.0
DONE = " succeeded in "  # a Celery task finished
# Two bridges share the harness's 100 orders in flight: with 100 each, the Celery
# queue alone holds a loaded two-core machine's work for longer than
# WORKFLOW_STALL_TIMEOUT (10 s), and healthy workflows are sent again and again.
BRIDGE_ENV = {"BRIDGE_MAX_IN_FLIGHT": "50"}


@pytest.fixture
def pstack(tmp_path: Path) -> Iterator[PartitionStack]:
    with PartitionStack(tmp_path) as stack:
        yield stack


@pytest.mark.parametrize(
    ("server", "hold_s", "ending"),
    [
        pytest.param("nats", LONG_S, "heal", id="nats-blackhole-healed"),
        pytest.param("redis", LONG_S, "heal", id="redis-blackhole-healed"),
        pytest.param("nats", SHORT_S, "reset", id="nats-blackhole-reset"),
        pytest.param("redis", SHORT_S, "reset", id="redis-blackhole-reset"),
    ],
)
def test_partition_then_recovery(
    pstack: PartitionStack, server: str, hold_s: float, ending: str
) -> None:
    workers = [pstack.add_worker(), pstack.add_worker()]
    bridges = [pstack.add_bridge(BRIDGE_ENV), pstack.add_bridge(BRIDGE_ENV)]
    proxy = pstack.proxy(server)
    workload = Workload(pstack, ORDERS)
    workload.start(rate=RATE)

    with Probe(pstack) as probe:
        workload.wait_published(len(workload.publications) // 3)
        wait_in_flight(pstack, 1)
        in_flight = pstack.pipeline.consumer_info().num_ack_pending
        connections = proxy.connections
        cut_at, cut_wall = time.monotonic(), time.time()
        proxy.blackhole()

        ready_503 = {
            b.name: probe.wait_for(b, cut_at, not_ready, READY_NOTICE_WITHIN_S) for b in bridges
        }
        time.sleep(max(0.0, cut_at + hold_s - time.monotonic()))
        if server == "nats" and ending == "heal":
            # The client itself must give up on the half-open connection (/health
            # follows nc.is_connected); the partition lasts until it has, or until
            # NATS_NOTICE_WITHIN_S.
            health_503 = {
                b.name: probe.wait_for(b, cut_at, unhealthy, NATS_NOTICE_WITHIN_S) for b in bridges
            }
        else:
            health_503 = {b.name: probe.first(b, cut_at, unhealthy) for b in bridges}

        ended_at, ended_wall = time.monotonic(), time.time()
        if ending == "heal":
            proxy.heal()
        else:
            proxy.reset_all()
        done_before = {w.name: counts_in(w.log, DONE) for w in workers}
        ready_again = {
            b.name: probe.wait_for(b, ended_at, ready, RECOVER_WITHIN_S) for b in bridges
        }
        health_again = {
            b.name: probe.wait_for(b, ended_at, healthy, RECOVER_WITHIN_S) for b in bridges
        }
        wait_ready(pstack, RECOVER_WITHIN_S)
        first_outcome = probe.first_outcome_after(ended_at, timeout=RECOVER_WITHIN_S)
        # The workers recover by themselves: each finishes tasks again.
        wait_until(
            lambda: all(counts_in(w.log, DONE) > done_before[w.name] for w in workers),
            RECOVER_WITHIN_S,
            0.5,
            "every worker to finish tasks after the partition",
        )
        workers_back = time.monotonic() - ended_at
        flapped = {
            b.name: sum(s.ready == 200 for s in probe.during(b, cut_at + t, ended_at))
            for b in bridges
            if (t := ready_503[b.name]) is not None
        }
        health_during_redis_cut = {
            b.name: sum(s.health != 200 for s in probe.during(b, cut_at, ended_at)) for b in bridges
        }

    bridge_logs, worker_logs = [b.log for b in bridges], [w.log for w in workers]
    timings: dict[str, object] = {
        "in flight": in_flight,
        "proxied connections": connections,
        "/ready 503 after": _worst(ready_503),
        "/health 503 after": _worst(health_503),
        "held": ended_at - cut_at,
        "ending": ending,
        "/ready 200 after end": _worst(ready_again),
        "/health 200 after end": _worst(health_again),
        "first outcome after end": first_outcome,
        "every worker done a task after end": workers_back,
    }
    if server == "nats":
        timings["bridge logged NATS disconnect"] = first_log_time(
            bridge_logs, "disconnected from NATS", cut_wall
        )
        timings["bridge logged NATS reconnect"] = first_log_time(
            bridge_logs, "reconnected to NATS", cut_wall
        )
    else:
        timings["worker logged broker lost"] = first_log_time(
            worker_logs, "Connection to broker lost", cut_wall
        )
        timings["worker logged reconnect"] = first_log_time(
            worker_logs, "Connected to redis", ended_wall
        )
        timings["bridge logged completions unavailable"] = first_log_time(
            bridge_logs, "completion stream unavailable", cut_wall
        )
    print_timings(f"{server} {hold_s:.0f}s black hole, then {ending}", timings)

    report = check_invariants(pstack, workload)
    print(report.summary())
    assert report.ok, report.summary()

    # /ready said 503 soon after the cut, and never 200 again until the partition ended.
    assert all(t is not None for t in ready_503.values()), f"/ready never 503: {ready_503}"
    assert not any(flapped.values()), f"/ready said 200 while partitioned: {flapped}"
    if server == "nats" and ending == "heal":
        assert all(t is not None for t in health_503.values()), (
            f"the NATS client did not notice the half-open connection within "
            f"{NATS_NOTICE_WITHIN_S:.0f}s: {health_503}"
        )
    if server == "redis":
        # /health is about NATS only: a Redis partition must not fail it.
        assert not any(health_during_redis_cut.values()), health_during_redis_cut
    for proc in [*workers, *bridges]:
        assert proc.alive and proc.spawned == 1, f"{proc} died or was restarted"
    assert first_outcome is not None, f"no outcome within {RECOVER_WITHIN_S:.0f}s of the end"
    wait_ready(pstack)


def _worst(times: dict[str, float | None]) -> float | None:
    """The slowest bridge's time, or ``None`` if one of them never got there."""
    values = list(times.values())
    return None if any(v is None for v in values) else max(values)  # type: ignore[type-var]
