"""The cost of ``REDIS_WAIT_REPLICAS``: the pipeline with a replica of the bench's
Redis attached, its bridges started once with ``0`` (outcomes do not wait) and once
with ``auto`` (each outcome waits for the one replica online).

Both runs have the replica attached, so they differ only by the ``WAIT``: the
replica's own cost (the primary streams every write to it) is in both. How the
bridge spends its ``WAIT``\\ s is read from its ``/metrics``, before and after each
measurement, so the warm-up's round trips are not counted:

- ``orders_bridge_redis_wait_seconds``: one sample per ``WAIT`` round trip, so its
  ``_count`` is the number of them and ``_sum / _count`` their mean; orders per
  ``WAIT`` is how well orders finishing together share one;
- ``orders_bridge_redis_wait_replicas``: how many replicas the bridge waits for.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import redis
from prometheus_client.parser import text_string_to_metric_families

from dev.bench.stack import BenchStack, PhaseFailed, metrics_text
from dev.servers import LOOPBACK, RedisServer, wait_until

# The runs, by name in the results: the setting the bridges are started with.
MODES = {"off": "0", "auto": "auto"}
REPLICAS = 1
SYNC_TIMEOUT_S = 30.0
# The bridge re-reads the replicas online every second (RedisWatch): a few rounds.
GAUGE_TIMEOUT_S = 10.0
WAIT_SECONDS = "orders_bridge_redis_wait_seconds"
WAIT_REPLICAS = "orders_bridge_redis_wait_replicas"


@dataclass(frozen=True)
class WaitMetrics:
    """The bridges' WAIT metrics at one moment: counts summed, gauges per bridge."""

    round_trips: float
    seconds: float
    replicas: tuple[float, ...]


@contextmanager
def attached(stack: BenchStack) -> Iterator[RedisServer]:
    """A replica of ``stack.redis``, online (in sync) on entry, stopped on exit."""
    primary = stack.redis
    with redis.Redis.from_url(primary.url, socket_timeout=5) as client:
        # Otherwise the primary holds the first full sync 5 s for more replicas to
        # share it: the bench's own server, nobody else replicates from it.
        client.config_set("repl-diskless-sync-delay", 0)
    replica = RedisServer(
        data_dir=stack.log_dir / "redis-replica",
        extra_args=("--replicaof", LOOPBACK, str(primary.port)),
    )
    replica.start()
    stack.replica = replica
    try:
        wait_until(
            lambda: _online(primary, replica.port), SYNC_TIMEOUT_S, 0.1, "the Redis replica to sync"
        )
        yield replica
    finally:
        stack.replica = None
        replica.stop()
        # A phase after this one would otherwise find the primary counting it online
        # (and its bridges, on auto, waiting for it). Cleanup: no error of its own.
        with contextlib.suppress(TimeoutError, redis.RedisError):
            wait_until(lambda: not _online(primary, replica.port), 10.0, 0.1, "it to detach")


def scrape(stack: BenchStack) -> WaitMetrics:
    round_trips = seconds = 0.0
    replicas: list[float] = []
    for bridge in stack.bridges:
        # Unlabelled samples only: the histogram's _count and _sum, not its buckets.
        samples = {
            sample.name: sample.value
            for family in text_string_to_metric_families(metrics_text(bridge))
            for sample in family.samples
            if not sample.labels
        }
        round_trips += samples.get(f"{WAIT_SECONDS}_count", 0.0)
        seconds += samples.get(f"{WAIT_SECONDS}_sum", 0.0)
        replicas.append(samples.get(WAIT_REPLICAS, 0.0))
    return WaitMetrics(round_trips, seconds, tuple(replicas))


async def await_replicas(stack: BenchStack, expected: int) -> None:
    """Return once every bridge says it waits for ``expected`` replicas: a bridge
    that has not yet seen the replica online would time a run without WAITs."""
    deadline = time.monotonic() + GAUGE_TIMEOUT_S
    while (seen := scrape(stack).replicas) != (float(expected),) * len(seen):
        if time.monotonic() > deadline:
            raise PhaseFailed(
                f"the bridges wait for {[int(n) for n in seen]} Redis replicas, not "
                f"{expected}, {GAUGE_TIMEOUT_S:g} s after they started: REDIS_WAIT_REPLICAS "
                "was not applied, or the replica is not seen online"
            )
        await asyncio.sleep(0.25)


async def counted(stack: BenchStack, measurement: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    """``measurement``'s result, with the WAITs the bridges made while it ran."""
    before = scrape(stack)
    result = await measurement
    after = scrape(stack)
    trips = round(after.round_trips - before.round_trips)
    seconds = after.seconds - before.seconds
    result["wait"] = {
        "round_trips": trips,
        "mean_ms": round(seconds / trips * 1000, 3) if trips else None,
        "orders_per_wait": round(result["orders"] / trips, 2) if trips else None,
    }
    return result


def summary(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    off, auto = runs["off"], runs["auto"]
    if not auto["wait"]["round_trips"] or off["wait"]["round_trips"]:
        raise PhaseFailed(
            f"WAIT round trips: {auto['wait']['round_trips']} with auto (expected some), "
            f"{off['wait']['round_trips']} with 0 (expected none)"
        )
    return {
        "replicas": REPLICAS,
        **runs,
        "ratio_auto_vs_off": round(auto["orders_per_s"] / off["orders_per_s"], 2),
    }


def describe(run: dict[str, Any]) -> str:
    """One line for the progress output."""
    wait = run["wait"]
    text = f"1 replica, REDIS_WAIT_REPLICAS={run['redis_wait_replicas']}: "
    text += f"{run['orders_per_s']:,} orders/s, "
    if wait["round_trips"]:
        text += (
            f"{wait['round_trips']} WAITs of {wait['mean_ms']} ms mean, "
            f"{wait['orders_per_wait']} orders each"
        )
    else:
        text += "no WAIT"
    if latency := run.get("latency"):
        text += (
            f"; at {latency['offered_rate']} orders/s p50 {latency['p50']} ms, "
            f"p99 {latency['p99']} ms"
        )
    return text


def _online(primary: RedisServer, port: int) -> bool:
    with redis.Redis.from_url(primary.url, socket_timeout=5) as client:
        info = client.info("replication")
    return any(
        key.startswith("slave")
        and isinstance(value, dict)
        and value.get("port") == port
        and value.get("state") == "online"
        for key, value in info.items()
    )
