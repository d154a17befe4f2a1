"""One node of a three-node NATS cluster dies under load (SIGKILL) and comes back.

``ORDERS`` and ``ORDERS_DLQ`` are replicated on all three nodes
(``STREAM_REPLICAS=3``); bridges, workers and the producer know every node's URL.
Killing the ``ORDERS`` stream's leader forces an election of a new one (and of the
consumer's leader, if it lived there too); clients connected to the dead node
reconnect to another. Killing a follower changes no leader. Either way orders keep
flowing on the two nodes left, the restarted node catches up, every bridge is ready
again and every order ends exactly once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster import ClusterStack
from harness import wait_in_flight, wait_ready
from invariants import check_invariants
from partition import print_timings
from workload import Workload

from dev.outcomes import count_stored_outcomes
from dev.servers import wait_until
from orders import names

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ORDERS = 2000
RATE = 40.0  # orders/s: a steady flow with orders always in flight
SLOW_GATEWAY = {"PAYMENT_LATENCY_MS": "50"}
BRIDGE_ENV = {
    # A pull subscription that fetches nothing while messages wait is replaced after
    # this (default 30 s): short, so that a stall after a restart costs seconds.
    "CONSUMER_STALL_TIMEOUT": "10",
    # No worker dies here, so no workflow is lost: one only waits in the Celery queue,
    # and the harness's 10 s would send queued workflows again whenever the two cores
    # are busier than usual, a backlog that feeds itself.
    "WORKFLOW_STALL_TIMEOUT": "60",
}
DOWN_S = 10.0  # the node stays dead this long while orders keep coming
RECOVER_WITHIN_S = 60.0
FLOWING = 100  # outcome events stored after the kill that show orders still flow


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ClusterStack]:
    with ClusterStack(tmp_path) as stack:
        yield stack


@pytest.mark.parametrize("victim_role", ["stream-leader", "follower"])
def test_cluster_node_sigkilled_mid_flow(cluster: ClusterStack, victim_role: str) -> None:
    cluster.add_worker(SLOW_GATEWAY)
    cluster.add_worker(SLOW_GATEWAY)
    bridges = [cluster.add_bridge(BRIDGE_ENV), cluster.add_bridge(BRIDGE_ENV)]
    replicas = cluster.nats.stream_cluster(names.ORDERS_STREAM)
    assert replicas is not None and len(replicas.replicas or []) == 2, (
        f"ORDERS is not replicated on three nodes: {replicas}"
    )
    workload = Workload(cluster, ORDERS)
    workload.start(rate=RATE)

    workload.wait_published(len(workload.publications) // 3)
    wait_in_flight(cluster, 1)
    leader = cluster.nats.stream_leader(names.ORDERS_STREAM)
    consumer_leader = cluster.nats.consumer_leader(names.ORDERS_STREAM, names.DURABLE_CONSUMER)
    if victim_role == "stream-leader":
        victim = leader
    else:  # a follower of the stream, and of the consumer where possible
        followers = [n for n in cluster.nats.nodes if n != leader]
        victim = next((n for n in followers if n != consumer_leader), followers[0])
    killed_at = time.monotonic()
    cluster.nats.kill(victim)

    new_leader = cluster.nats.stream_leader(
        names.ORDERS_STREAM, timeout=RECOVER_WITHIN_S, not_on=victim
    )
    elected = time.monotonic() - killed_at
    if victim_role == "follower":
        assert new_leader == leader, f"killing follower {victim} moved the leader"
    outcomes_at_kill = _outcomes_stored(cluster)
    wait_until(
        lambda: _outcomes_stored(cluster) >= outcomes_at_kill + FLOWING,
        RECOVER_WITHIN_S,
        0.5,
        f"{FLOWING} more outcomes with {victim} dead (orders stopped flowing?)",
    )
    flowing = time.monotonic() - killed_at
    time.sleep(max(0.0, killed_at + DOWN_S - time.monotonic()))

    restarted_at = time.monotonic()
    cluster.nats.restart(victim)
    caught_up = cluster.wait_node_current(names.ORDERS_STREAM, victim, RECOVER_WITHIN_S)
    wait_ready(cluster, RECOVER_WITHIN_S)
    ready_after = time.monotonic() - restarted_at

    report = check_invariants(cluster, workload)
    print(report.summary())
    print_timings(
        f"cluster, {victim_role} killed",
        {
            "victim": victim,
            "stream leader": f"{leader} -> {new_leader}",
            "consumer leader before": consumer_leader,
            "new stream leader after": elected,
            f"{FLOWING} outcomes after": flowing,
            "restarted node current after": caught_up,
            "/ready 200 after restart": ready_after,
            "publish retries": sum(p.attempts for p in workload.publications)
            - len(workload.publications),
            "bridge re-subscriptions": sum(
                b.log.read_text(errors="replace").count("re-subscribing") for b in bridges
            ),
        },
    )
    assert report.ok, report.summary()
    assert all(b.alive for b in bridges), "a bridge exited"
    wait_ready(cluster)


def _outcomes_stored(stack: ClusterStack) -> int:
    """Outcome events (``ORDER.completed`` + ``ORDER.failed``) stored in ``ORDERS``."""
    found: list[int] = []

    def counted() -> bool:
        stored = stack.nats._try(count_stored_outcomes)
        if stored is not None:
            found.append(stored)
        return bool(found)

    wait_until(counted, RECOVER_WITHIN_S, 0.5, "the cluster to answer stream info")
    return found[0]
