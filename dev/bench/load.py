"""Load for the pipeline and what JetStream says about it: synthetic orders,
publishing (a burst or a fixed rate), waiting until every order has its outcome
and every input is acked, and the server's timestamps of stored messages."""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import nats
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, ConsumerInfo, DeliverPolicy, PubAck

from bridge.cli.publish import synthetic_order
from bridge.codec import encode_order_created
from orders import names
from orders.domain.model import RawOrder

OUTCOME_SUBJECTS = (names.SUBJECT_COMPLETED, names.SUBJECT_FAILED)
# Publishes awaiting their PubAck, as ``orders publish`` keeps.
PUBLISH_WINDOW = 512
# No outcome stored for this long means something is broken, not slow.
STALL_TIMEOUT_S = 60.0
POLL_INTERVAL_S = 0.05
READ_TIMEOUT_S = 10.0

Progress = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class Batch:
    """Orders to publish: ids, the orders, and their encoded ``OrderCreated``."""

    order_ids: list[str]
    orders: list[RawOrder]
    payloads: list[bytes]

    def __len__(self) -> int:
        return len(self.order_ids)


@asynccontextmanager
async def jetstream(nats_url: str) -> AsyncIterator[JetStreamContext]:
    """A JetStream context on a connection of its own, closed on the way out."""
    nc = await nats.connect(nats_url, name="orders-bench", allow_reconnect=False)
    try:
        yield nc.jetstream(timeout=READ_TIMEOUT_S)
    finally:
        await nc.close()


def make_batch(prefix: str, count: int, seed: int = 0) -> Batch:
    """Valid orders of 1-3 items (``orders publish``'s), all of which complete when
    stock is plentiful; encoded before any clock starts."""
    rng = random.Random(seed)
    ids = [f"{prefix}-{n}" for n in range(1, count + 1)]
    orders = [synthetic_order(order_id, rng, above_minor=None) for order_id in ids]
    return Batch(ids, orders, [encode_order_created(order) for order in orders])


async def publish(
    js: JetStreamContext,
    batch: Batch,
    *,
    subject: str = names.SUBJECT_CREATED,
    stream: str = names.ORDERS_STREAM,
    rate: float | None = None,
    on_ack: Progress | None = None,
) -> list[int]:
    """Publish the batch with ``Nats-Msg-Id`` = order id, as fast as the window allows
    or at ``rate`` per second; returns the stream sequence of each message."""
    pending: deque[asyncio.Future[PubAck]] = deque()
    seqs: list[int] = []
    start = time.monotonic()

    async def settle() -> None:
        ack = await asyncio.wait_for(pending.popleft(), READ_TIMEOUT_S)
        seqs.append(ack.seq)
        if on_ack is not None:
            on_ack(len(seqs))

    for n, (order_id, payload) in enumerate(zip(batch.order_ids, batch.payloads, strict=True)):
        if rate:
            # Each send is due at start + n/rate, so a late one does not delay the rest.
            delay = start + n / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        future = await js.publish_async(
            subject, payload, headers={names.HDR_MSG_ID: order_id}, stream=stream
        )
        pending.append(future)
        while len(pending) >= PUBLISH_WINDOW or (rate and pending and pending[0].done()):
            await settle()
    while pending:
        await settle()
    return seqs


async def outcomes_stored(js: JetStreamContext) -> int:
    """Outcome events in the ``ORDERS`` stream now."""
    info = await js.stream_info(names.ORDERS_STREAM, subjects_filter="ORDER.*")
    subjects = info.state.subjects or {}
    return sum(subjects.get(subject, 0) for subject in OUTCOME_SUBJECTS)


async def consumer_idle(js: JetStreamContext) -> bool:
    """The bridges' consumer has delivered everything and holds nothing unacked."""
    # Annotated: nats-py leaves consumer_info's return type out.
    info: ConsumerInfo = await js.consumer_info(names.ORDERS_STREAM, names.DURABLE_CONSUMER)
    return info.num_pending == 0 and info.num_ack_pending == 0


async def wait_finished(
    js: JetStreamContext,
    target: int,
    *,
    timeout: float,
    on_outcome: Progress | None = None,
    check: Callable[[], None] | None = None,
) -> float:
    """Poll until ``target`` outcome events are stored and the consumer is idle; returns
    ``time.perf_counter()`` at that moment (at most one poll interval late).

    Gives up after ``timeout``, or sooner when no outcome is stored for
    ``STALL_TIMEOUT_S``: a broken pipeline is reported, not waited out."""
    now = time.monotonic()
    deadline, last_progress, last_stored = now + timeout, now, -1
    while True:
        stored = await outcomes_stored(js)
        if on_outcome is not None:
            on_outcome(stored)
        if stored >= target and await consumer_idle(js):
            return time.perf_counter()
        if check is not None:
            check()
        now = time.monotonic()
        if stored != last_stored:
            last_stored, last_progress = stored, now
        if now > deadline or (stored < target and now - last_progress > STALL_TIMEOUT_S):
            raise TimeoutError(
                f"after {now - deadline + timeout:.0f}s only {stored} of {target} outcome "
                f"events are stored (the last {now - last_progress:.0f}s added none)"
            )
        await asyncio.sleep(POLL_INTERVAL_S)


async def stored_at(
    js: JetStreamContext, subjects: tuple[str, ...], first_seq: int, keys: set[str]
) -> dict[str, float]:
    """JetStream's own timestamps (Unix seconds) of the messages on ``subjects`` from
    stream sequence ``first_seq`` on, keyed by ``Nats-Msg-Id`` up to its first ``:``
    (the order id, for an input and for its outcome); returns once every key of
    ``keys`` is found."""
    sub = await js.subscribe(
        subjects[0],
        stream=names.ORDERS_STREAM,
        ordered_consumer=True,
        config=ConsumerConfig(
            filter_subjects=list(subjects),
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=first_seq,
            headers_only=True,
        ),
    )
    found: dict[str, float] = {}
    try:
        while len(found) < len(keys):
            msg = await sub.next_msg(timeout=READ_TIMEOUT_S)
            key = (msg.headers or {}).get(names.HDR_MSG_ID, "").split(":", 1)[0]
            if key in keys:
                found[key] = msg.metadata.timestamp.timestamp()
    finally:
        await sub.unsubscribe()
    return found
