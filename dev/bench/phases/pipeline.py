"""The pipeline end to end: orders published to ``ORDER.created`` by a producer,
processed by the real bridge and workers, each ending with its outcome event.

- :func:`throughput`: a burst, timed from the first publish until the last
  outcome event is stored and every input acked (the consumer has nothing
  pending or unacked).
- :func:`latency`: orders offered at a fixed rate; an order's latency is its
  outcome event's JetStream timestamp minus its input's, both stamped by the
  server when it stored the message.
"""

from __future__ import annotations

import statistics
import time

from nats.js import JetStreamContext

from dev import outcomes, publisher
from dev.bench import load
from dev.bench.stack import BenchStack
from orders import names


async def throughput(
    js: JetStreamContext,
    stack: BenchStack,
    batch: load.Batch,
    progress: load.Progress,
    timeout: float,
) -> dict[str, object]:
    """Orders per second for ``batch`` published at once, and CPU seconds per order
    of each kind of process over the same interval."""
    base = await outcomes.count_stored_outcomes(js)
    cpu_before = stack.cpu_s()
    started = time.perf_counter()
    await publisher.publish_pipelined(js, batch.messages())
    finished = await load.wait_finished(
        js,
        base + len(batch),
        timeout=timeout,
        on_outcome=lambda stored: progress(stored - base),
        check=stack.check_alive,
    )
    cpu_after = stack.cpu_s()
    elapsed = finished - started
    return {
        "orders": len(batch),
        "elapsed_s": round(elapsed, 3),
        "orders_per_s": round(len(batch) / elapsed, 1),
        "cpu_s_per_order": per_order(cpu_before, cpu_after, len(batch)),
    }


async def latency(
    js: JetStreamContext,
    stack: BenchStack,
    batch: load.Batch,
    rate: float,
    progress: load.Progress,
    timeout: float,
) -> dict[str, object]:
    """Per-order latency percentiles (ms) with ``batch`` offered at ``rate`` per second."""
    base = await outcomes.count_stored_outcomes(js)
    seqs = await publisher.publish_pipelined(js, batch.messages(), rate=rate, on_ack=progress)
    await load.wait_finished(js, base + len(batch), timeout=timeout, check=stack.check_alive)
    keys = set(batch.order_ids)
    first = min(seqs)
    created = await outcomes.stored_at(js, (names.SUBJECT_CREATED,), first, keys)
    ended = await outcomes.stored_at(js, outcomes.OUTCOME_SUBJECTS, first, keys)
    samples = sorted((ended[key] - created[key]) * 1000 for key in keys)
    offered_over = max(created.values()) - min(created.values())
    return {
        **percentiles(samples),
        "offered_rate": round(rate, 1),
        "achieved_rate": round((len(batch) - 1) / offered_over, 1) if offered_over else None,
        "orders": len(batch),
        "duration_s": round(offered_over, 1),
        "samples_ms": [round(sample, 2) for sample in samples],
    }


def percentiles(samples: list[float]) -> dict[str, float]:
    """p50/p95/p99 (linear interpolation between ranks, as numpy's default), mean, max."""
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return {
        "p50": round(cuts[49], 1),
        "p95": round(cuts[94], 1),
        "p99": round(cuts[98], 1),
        "mean": round(statistics.fmean(samples), 1),
        "max": round(max(samples), 1),
    }


def per_order(before: dict[str, float], after: dict[str, float], orders: int) -> dict[str, float]:
    return {
        role: round((after[role] - before.get(role, 0.0)) / orders, 5) for role in after if orders
    }
