"""The fetch loop: pull batches from the durable consumer, process each message
concurrently up to ``max_in_flight``, settle each with its disposition, keep long
workflows alive with ``in_progress()``, notice a stalled or deleted consumer, and
drain on shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from relay import tracing
from relay.backoff import Backoff
from relay.config import Limits, Names
from relay.metrics import RelayMetrics
from relay.processor import Processor
from relay.settle import Settler
from relay.topology import ensure_topology

log = logging.getLogger(__name__)

FETCH_TIMEOUT_S = 1.0
# After shutdown, messages not finished are handed back quickly to another bridge.
SHUTDOWN_NAK_DELAY_S = 1.0
CONSUMER_CHECK_INTERVAL_S = 5.0


class Consumer:
    def __init__(
        self,
        js: JetStreamContext,
        processor: Processor[Any],
        names: Names,
        limits: Limits,
        metrics: RelayMetrics,
        connected: Callable[[], bool],
    ) -> None:
        self._js = js
        self._connected = connected
        self._processor = processor
        self._settler = Settler(js, names, limits, metrics)
        self._names = names
        self._limits = limits
        self._metrics = metrics
        self._in_flight: dict[asyncio.Task[None], Msg] = {}
        self._slot_free = asyncio.Event()
        self._stopping = asyncio.Event()
        self._resubscribe = asyncio.Event()
        self._last_progress = time.monotonic()  # a fetch returned messages, or none were due
        self._fetch_failing_since: float | None = None  # fetches raise errors since then
        self._fetch_error = ""
        self._problem: str | None = "not subscribed yet"
        # A full consumer is refilled a fetch at a time, not a slot at a time: the
        # inputs of one fetch share their ledger calls and their Celery canvas, so
        # fetches of one or two (each slot refilled as it frees) would cost nearly
        # what unbatched inputs cost, exactly when the pipeline is behind.
        self._refill_at = max(1, min(limits.fetch_batch, limits.max_in_flight // 2))

    def problem(self) -> str | None:
        """Why the bridge cannot consume right now, or ``None`` while it can (``/ready``)."""
        return self._problem

    def stop(self) -> None:
        """Stop fetching; :meth:`run` then drains and returns."""
        self._stopping.set()
        self._slot_free.set()

    def resubscribe(self) -> None:
        """Replace the pull subscription (it stalled, or its consumer was re-created)."""
        self._resubscribe.set()

    async def run(self) -> None:
        background = [
            asyncio.create_task(self._heartbeat(), name="in-progress"),
            asyncio.create_task(self._watchdog(), name="consumer-watchdog"),
        ]
        try:
            await self._fetch_loop()
        finally:
            for task in background:
                task.cancel()
            await self._drain()

    async def _fetch_loop(self) -> None:
        max_in_flight = self._limits.max_in_flight
        sub: JetStreamContext.PullSubscription | None = None
        backoff = Backoff(0.1, 5.0)
        try:
            while not self._stopping.is_set():
                if sub is None or self._resubscribe.is_set():
                    sub = await self._subscribe(sub)
                    if sub is None:
                        await asyncio.sleep(backoff.pause())
                        continue
                if not self._connected():
                    # NATS: a fetch sent now would wait in the client's reconnect
                    # buffer and reach the server late, pulling messages into a request
                    # nobody reads any more (back only after ack_wait). Redis: every
                    # message fetched would fail and spend a delivery for nothing.
                    await asyncio.sleep(0.2)
                    continue
                free = max_in_flight - len(self._in_flight)
                if free < self._refill_at:
                    self._slot_free.clear()
                    await self._slot_free.wait()
                    continue
                try:
                    msgs = await sub.fetch(
                        min(free, self._limits.fetch_batch), timeout=FETCH_TIMEOUT_S
                    )
                except (nats.errors.TimeoutError, TimeoutError):
                    # Nothing to fetch (nats-py raises either class for an empty batch).
                    backoff.reset()
                    self._fetch_failing_since = None
                    continue
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    pause = backoff.pause()
                    log.warning("fetch failed (%r); retrying in %.1fs", exc, pause)
                    if self._fetch_failing_since is None:
                        self._fetch_failing_since = time.monotonic()
                    self._fetch_error = f"{type(exc).__name__}: {exc}"
                    await asyncio.sleep(pause)
                    continue
                backoff.reset()
                self._fetch_failing_since = None
                self._last_progress = time.monotonic()
                for msg in msgs:
                    if self._stopping.is_set():
                        # Fetched while being told to stop: hand it straight back.
                        await self._hand_back(msg)
                    else:
                        self._start(msg)
        finally:
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()

    async def _subscribe(
        self, old: JetStreamContext.PullSubscription | None
    ) -> JetStreamContext.PullSubscription | None:
        self._resubscribe.clear()
        if old is not None:
            log.info("re-subscribing to consumer %s", self._names.consumer)
            with contextlib.suppress(Exception):
                await old.unsubscribe()
        try:
            sub = await self._js.pull_subscribe_bind(self._names.consumer, self._names.stream)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._problem = f"cannot subscribe: {type(exc).__name__}: {exc}"
            log.warning("%s", self._problem)
            return None
        self._last_progress = time.monotonic()
        if old is None:
            self._problem = None  # a re-subscription stays suspect until it fetches
        return sub

    async def _watchdog(self) -> None:
        """Every few seconds, ask the server how the consumer is doing.

        A deleted consumer is re-created; a subscription that fetches nothing while
        the server holds messages for it (nats-io/nats.py#504, after a server
        restart) is replaced. Until it consumes again, :meth:`problem` says why.
        """
        stall_s = self._limits.consumer_stall_timeout_s
        while True:
            await asyncio.sleep(CONSUMER_CHECK_INTERVAL_S)
            try:
                info = await self._js.consumer_info(self._names.stream, self._names.consumer)
            except NotFoundError:
                self._problem = f"consumer {self._names.consumer} is missing"
                log.warning("%s: re-creating it", self._problem)
                with contextlib.suppress(Exception):
                    await ensure_topology(self._js, self._names, self._limits)
                self.resubscribe()
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._problem = f"consumer does not answer: {type(exc).__name__}: {exc}"
                continue
            self._metrics.consumer_pending.set(info.num_pending or 0)
            self._metrics.consumer_ack_pending.set(info.num_ack_pending or 0)
            self._metrics.consumer_redelivered.set(info.num_redelivered or 0)
            now = time.monotonic()
            failing_since = self._fetch_failing_since
            if failing_since is not None and now - failing_since > stall_s:
                self._problem = f"cannot fetch for {now - failing_since:.0f}s: {self._fetch_error}"[
                    :300
                ]
                log.warning("%s; re-subscribing", self._problem)
                self._fetch_failing_since = now
                self.resubscribe()
                continue
            starved = self._limits.max_in_flight - len(self._in_flight) >= self._refill_at
            if info.num_pending == 0 or not starved:
                self._last_progress = now  # nothing due to us: idle is healthy
            idle_for = now - self._last_progress
            if idle_for > stall_s:
                self._problem = (
                    f"stalled: {info.num_pending} messages pending, none fetched "
                    f"for {idle_for:.0f}s"
                )
                log.warning("%s; re-subscribing", self._problem)
                self._last_progress = now
                self.resubscribe()
            elif idle_for <= CONSUMER_CHECK_INTERVAL_S * 2:
                self._problem = None

    def _start(self, msg: Msg) -> None:
        self._metrics.received.inc()
        task = asyncio.create_task(self.deliver(msg))
        self._in_flight[task] = msg
        self._metrics.in_flight.set(len(self._in_flight))
        task.add_done_callback(self._finished)

    async def deliver(self, msg: Msg) -> None:
        """One delivery, processed and settled inside its span: the only place a
        message is acked, nak'd or terminated (:class:`~relay.settle.Settler`)."""
        started = time.monotonic()
        try:
            with tracing.process_span(msg, self._names.consumer):
                disposition = await self._processor.handle(msg)
                await self._settler.settle(msg, disposition)
        finally:
            self._metrics.latency.observe(time.monotonic() - started)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.pop(task, None)
        self._metrics.in_flight.set(len(self._in_flight))
        self._slot_free.set()
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("message handler crashed", exc_info=exc)

    async def _heartbeat(self) -> None:
        # Tell JetStream we are still working well before ack_wait runs out, so a
        # slow workflow is not redelivered to another bridge meanwhile.
        interval = self._limits.ack_wait_s / 3
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
        timeout = self._limits.drain_timeout_s
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
