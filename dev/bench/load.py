"""Load for the pipeline and what JetStream says about it: synthetic orders, and
waiting until every order has its outcome and every input is acked. Publishing is
:mod:`dev.publisher`'s, reading outcomes back :mod:`dev.outcomes`'."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import nats
from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo

from bridge.cli.publish import synthetic_order
from bridge.codec import encode_order_created
from dev.outcomes import count_stored_outcomes
from dev.publisher import Message
from orders import names
from orders.domain.model import RawOrder

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

    def messages(self) -> Iterator[Message]:
        """(``Nats-Msg-Id`` = order id, payload), as :mod:`dev.publisher` sends them."""
        return zip(self.order_ids, self.payloads, strict=True)


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
        stored = await count_stored_outcomes(js)
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
