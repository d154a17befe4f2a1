"""The fetch loop: pull batches from the durable consumer, process each message
concurrently up to ``BRIDGE_MAX_IN_FLIGHT``, keep long workflows alive with
``in_progress()``, and drain on shutdown."""

from __future__ import annotations

import asyncio
import logging
import time

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from bridge.metrics import BridgeMetrics
from bridge.processor import OrderProcessor
from orders import names
from orders.settings import Settings

log = logging.getLogger(__name__)

FETCH_TIMEOUT_S = 1.0
# After shutdown, messages not finished are handed back quickly to another bridge.
SHUTDOWN_NAK_DELAY_S = 1.0


class Consumer:
    def __init__(
        self,
        js: JetStreamContext,
        processor: OrderProcessor,
        settings: Settings,
        metrics: BridgeMetrics,
    ) -> None:
        self._js = js
        self._processor = processor
        self._settings = settings
        self._metrics = metrics
        self._in_flight: dict[asyncio.Task[None], Msg] = {}
        self._slot_free = asyncio.Event()
        self._stopping = asyncio.Event()
        self.last_fetch_ok = 0.0  # monotonic time of the last fetch that answered

    def stop(self) -> None:
        """Stop fetching; :meth:`run` then drains and returns."""
        self._stopping.set()
        self._slot_free.set()

    async def run(self) -> None:
        sub = await self._js.pull_subscribe_bind(names.DURABLE_CONSUMER, names.ORDERS_STREAM)
        heartbeat = asyncio.create_task(self._heartbeat(), name="in-progress")
        try:
            await self._fetch_loop(sub)
        finally:
            heartbeat.cancel()
            await self._drain()
            await sub.unsubscribe()

    async def _fetch_loop(self, sub: JetStreamContext.PullSubscription) -> None:
        max_in_flight = self._settings.bridge_max_in_flight
        backoff = 0.1
        while not self._stopping.is_set():
            free = max_in_flight - len(self._in_flight)
            if free <= 0:
                self._slot_free.clear()
                await self._slot_free.wait()
                continue
            try:
                msgs = await sub.fetch(
                    min(free, self._settings.bridge_fetch_batch), timeout=FETCH_TIMEOUT_S
                )
            except (nats.errors.TimeoutError, TimeoutError):
                # Nothing to fetch (nats-py raises either class for an empty batch).
                self.last_fetch_ok = time.monotonic()
                backoff = 0.1
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("fetch failed (%r); retrying in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            self.last_fetch_ok = time.monotonic()
            for msg in msgs:
                if self._stopping.is_set():
                    # Fetched while being told to stop: hand it straight back.
                    await self._hand_back(msg)
                else:
                    self._start(msg)

    def _start(self, msg: Msg) -> None:
        self._metrics.received.inc()
        task = asyncio.create_task(self._processor.handle(msg))
        self._in_flight[task] = msg
        self._metrics.in_flight.set(len(self._in_flight))
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.pop(task, None)
        self._metrics.in_flight.set(len(self._in_flight))
        self._slot_free.set()
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("message handler crashed", exc_info=exc)

    async def _heartbeat(self) -> None:
        # Tell JetStream we are still working well before ack_wait runs out, so a
        # slow workflow is not redelivered to another bridge meanwhile.
        interval = self._settings.ack_wait.total_seconds() / 3
        while True:
            await asyncio.sleep(interval)
            for msg in list(self._in_flight.values()):
                try:
                    await msg.in_progress()
                except Exception as exc:
                    log.debug("in_progress failed: %s", exc)

    async def _hand_back(self, msg: Msg) -> None:
        try:
            await msg.nak(delay=SHUTDOWN_NAK_DELAY_S)
        except Exception as exc:
            log.debug("nak on shutdown failed: %s", exc)

    async def _drain(self) -> None:
        if not self._in_flight:
            return
        timeout = self._settings.drain_timeout.total_seconds()
        log.info("draining %d in-flight messages (up to %.0fs)", len(self._in_flight), timeout)
        _done, pending = await asyncio.wait(list(self._in_flight), timeout=timeout)
        for task in pending:
            msg = self._in_flight.get(task)
            task.cancel()
            if msg is not None:
                await self._hand_back(msg)
        if pending:
            await asyncio.wait(pending, timeout=5)
            log.info("handed back %d unfinished messages", len(pending))
