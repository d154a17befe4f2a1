"""A producer of ``ORDER.created`` for the benchmark and the fault tests: messages
published at a set rate (or as fast as acks come back), each with its
``Nats-Msg-Id``, and each JetStream ack handed back.

One pacing, two ways to wait for acks, because the two callers need different
things from a lost ack:

- :func:`publish_pipelined`: up to a window of publishes awaiting their ack, no
  retry: the benchmark measures the pipeline, and a failure ends the run;
- :func:`publish_retrying`: each publish on its own, retried until acked through
  a server's restart or a partition (a retry is harmless: the server drops a
  second copy under the same ``Nats-Msg-Id``), as a real producer would.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Protocol, TypeVar

from nats.js import JetStreamContext
from nats.js.api import PubAck

from orders import names

# (Nats-Msg-Id, payload)
Message = tuple[str, bytes]
T = TypeVar("T")

# Publishes awaiting their PubAck, as ``orders publish`` keeps.
PIPELINE_WINDOW = 512
ACK_TIMEOUT_S = 10.0
RETRY_WINDOW = 64
RETRY_PAUSE_S = 0.25


async def paced(items: Iterable[T], rate: float | None) -> AsyncIterator[T]:
    """``items`` at ``rate`` per second (all at once if ``None``)."""
    start = time.monotonic()
    for n, item in enumerate(items):
        if rate:
            # Each send is due at start + n/rate, so a late one does not delay the rest.
            delay = start + n / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        yield item


async def publish_pipelined(
    js: JetStreamContext,
    messages: Iterable[Message],
    *,
    subject: str = names.SUBJECT_CREATED,
    stream: str = names.ORDERS_STREAM,
    rate: float | None = None,
    on_ack: Callable[[int], None] | None = None,
) -> list[int]:
    """Publish every message, up to :data:`PIPELINE_WINDOW` awaiting their ack;
    returns the stream sequence of each. ``on_ack`` gets the count acked so far."""
    pending: deque[asyncio.Future[PubAck]] = deque()
    seqs: list[int] = []

    async def settle() -> None:
        ack = await asyncio.wait_for(pending.popleft(), ACK_TIMEOUT_S)
        seqs.append(ack.seq)
        if on_ack is not None:
            on_ack(len(seqs))

    async for msg_id, payload in paced(messages, rate):
        future = await js.publish_async(
            subject, payload, headers={names.HDR_MSG_ID: msg_id}, stream=stream
        )
        pending.append(future)
        # At a set rate, acks are settled as they come, so on_ack follows the flow.
        while len(pending) >= PIPELINE_WINDOW or (rate and pending and pending[0].done()):
            await settle()
    while pending:
        await settle()
    return seqs


class Receipts(Protocol):
    """What :func:`publish_retrying`'s caller records of each message, by index."""

    def attempted(self, n: int) -> None: ...
    def acked(self, n: int, ack: PubAck) -> None: ...
    def failed(self, n: int, error: Exception) -> None: ...


async def publish_retrying(
    js: JetStreamContext,
    messages: Sequence[Message],
    receipts: Receipts,
    *,
    rate: float,
    retry_for: float,
    stopped: Callable[[], bool],
) -> None:
    """Publish ``messages`` at ``rate``, up to :data:`RETRY_WINDOW` at a time, each
    until acked or ``retry_for`` seconds have passed (then its last error is its
    receipt). Starts no new one, and retries none, once ``stopped()``."""
    slots = asyncio.Semaphore(RETRY_WINDOW)
    tasks = []

    async def one(n: int, message: Message) -> None:
        try:
            ack = await _until_acked(js, message, retry_for, stopped, lambda: receipts.attempted(n))
        except Exception as exc:
            receipts.failed(n, exc)
        else:
            if ack is not None:
                receipts.acked(n, ack)
        finally:
            slots.release()

    async for n, message in paced(enumerate(messages), rate):
        if stopped():
            break
        await slots.acquire()
        tasks.append(asyncio.create_task(one(n, message)))
    await asyncio.gather(*tasks)


async def _until_acked(
    js: JetStreamContext,
    message: Message,
    retry_for: float,
    stopped: Callable[[], bool],
    attempted: Callable[[], None],
) -> PubAck | None:
    """The ack; ``None`` if stopped first; the last error once ``retry_for`` is over."""
    msg_id, payload = message
    deadline = time.monotonic() + retry_for
    while not stopped():
        attempted()
        try:
            return await js.publish(
                names.SUBJECT_CREATED,
                payload,
                headers={names.HDR_MSG_ID: msg_id},
                stream=names.ORDERS_STREAM,
            )
        except Exception:  # timeouts, no responders, reconnecting
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(RETRY_PAUSE_S)
    return None
