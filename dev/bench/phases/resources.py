"""Memory and CPU with a large burst in flight.

The whole burst is published at once and the pipeline works it off. Every
``interval`` the resident size of the bridge and of each worker's process tree
is sampled, to show whether memory stays flat while thousands of orders wait
(the bridge itself holds at most ``BRIDGE_MAX_IN_FLIGHT`` of them: the rest
wait in JetStream). Peaks are ``VmHWM``, summed over a worker's pool children.
"""

from __future__ import annotations

import asyncio
import time

from nats.js import JetStreamContext

from dev import outcomes, publisher
from dev.bench import load, procfs
from dev.bench.phases.pipeline import per_order
from dev.bench.stack import BenchStack


async def run(
    js: JetStreamContext,
    stack: BenchStack,
    batch: load.Batch,
    interval: float,
    progress: load.Progress,
    timeout: float,
) -> dict[str, object]:
    base = await outcomes.count_stored_outcomes(js)
    cpu_before = stack.cpu_s()
    published = 0

    def acked(count: int) -> None:
        nonlocal published
        published = count

    started = time.perf_counter()
    publishing = asyncio.create_task(
        publisher.publish_pipelined(js, batch.messages(), on_ack=acked)
    )
    deadline = time.monotonic() + timeout
    samples: list[dict[str, float]] = []
    while True:
        done = await outcomes.count_stored_outcomes(js) - base
        progress(done)
        samples.append(_sample(stack, time.perf_counter() - started, published, done))
        if publishing.done() and done >= len(batch) and await load.consumer_idle(js):
            break
        stack.check_alive()
        if time.monotonic() > deadline:
            publishing.cancel()
            raise TimeoutError(f"after {timeout:g}s only {done} of {len(batch)} orders ended")
        await asyncio.sleep(interval)
    elapsed = time.perf_counter() - started
    await publishing  # its errors, if any
    cpu_after = stack.cpu_s()
    bridges = [procfs.usage(bridge.pid) for bridge in stack.bridges]
    workers = [procfs.usage(worker.pid) for worker in stack.workers]
    return {
        "orders": len(batch),
        "elapsed_s": round(elapsed, 1),
        "orders_per_s": round(len(batch) / elapsed, 1),
        "max_in_flight": max(int(s["published"] - s["done"]) for s in samples),
        "bridge_peak_rss_mb": round(max(b.hwm_mb for b in bridges), 1),
        "worker_peak_rss_mb": [round(w.hwm_mb, 1) for w in workers],
        "worker_processes": [w.processes for w in workers],
        "cpu_s_per_order": per_order(cpu_before, cpu_after, len(batch)),
        "samples": samples,
    }


def _sample(stack: BenchStack, t: float, published: int, done: int) -> dict[str, float]:
    bridge = procfs.usage(stack.bridges[0].pid)
    workers = [procfs.usage(worker.pid) for worker in stack.workers]
    return {
        "t_s": round(t, 2),
        "published": published,
        "done": done,
        "bridge_rss_mb": round(bridge.rss_mb, 1),
        "workers_rss_mb": round(sum(w.rss_mb for w in workers), 1),
    }
