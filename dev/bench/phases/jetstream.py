"""The JetStream ceiling: consume and ack with nats-py and do nothing else.

Messages are the pipeline's own ``OrderCreated`` payloads on a stream of the
phase's own (file storage, like ``ORDERS``), read through a durable pull
consumer in batches of the bridge's ``BRIDGE_FETCH_BATCH``, each acked on its own.
No pipeline can consume faster than this from one Python process.
"""

from __future__ import annotations

import asyncio
import time

from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType, StreamConfig

from dev import publisher
from dev.bench import load

STREAM = "BENCH_CEILING"
SUBJECT = "bench.ceiling"
CONSUMER = "bench-ceiling"
FETCH_TIMEOUT_S = 5.0
IDLE_TIMEOUT_S = 30.0


async def run(
    nats_url: str, batch: load.Batch, fetch_batch: int, progress: load.Progress
) -> dict[str, object]:
    async with load.jetstream(nats_url) as js:
        await js.add_stream(
            StreamConfig(
                name=STREAM,
                subjects=[SUBJECT],
                retention=RetentionPolicy.LIMITS,
                storage=StorageType.FILE,
            )
        )
        started = time.perf_counter()
        await publisher.publish_pipelined(js, batch.messages(), subject=SUBJECT, stream=STREAM)
        published_s = time.perf_counter() - started
        await js.add_consumer(
            STREAM,
            ConsumerConfig(
                durable_name=CONSUMER,
                ack_policy=AckPolicy.EXPLICIT,
                max_ack_pending=max(1000, fetch_batch * 4),
            ),
        )
        sub = await js.pull_subscribe_bind(CONSUMER, STREAM)
        received = 0
        started = time.perf_counter()
        while received < len(batch):
            for msg in await sub.fetch(fetch_batch, timeout=FETCH_TIMEOUT_S):
                await msg.ack()
                received += 1
            progress(received)
        # Acks are fire-and-forget: timed until the server has applied every one.
        deadline = time.monotonic() + IDLE_TIMEOUT_S
        while True:
            info = await js.consumer_info(STREAM, CONSUMER)
            if info.num_pending == 0 and info.num_ack_pending == 0:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{info.num_ack_pending} acks never reached the server")
            await asyncio.sleep(load.POLL_INTERVAL_S)
        elapsed = time.perf_counter() - started
        await sub.unsubscribe()
        await js.delete_stream(STREAM)
    return {
        "messages": len(batch),
        "fetch_batch": fetch_batch,
        "elapsed_s": round(elapsed, 3),
        "msgs_per_s": round(len(batch) / elapsed, 1),
        "publish_msgs_per_s": round(len(batch) / published_s, 1),
    }
