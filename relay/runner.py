"""One relay process's parts, wired: the completion reader, the Redis watch, the
ledger and its barrier, the processor and the consumer, and their lifecycle.

The process around it (settings, connecting to NATS and Redis, HTTP, signals)
is the application's: see ``bridge/main.py`` for one.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Generic

import redis
import redis.asyncio
from nats.aio.client import Client as NATS

from relay.application import Application, BatchingApplication, ItemT, Run
from relay.batching import Batcher
from relay.completions import CompletionWatcher
from relay.config import Limits, Names
from relay.consumer import Consumer
from relay.dispatch import Dispatcher
from relay.http import Check
from relay.keys import LedgerKeys
from relay.ledger import AsyncLedger
from relay.metrics import RelayMetrics
from relay.processor import Deps, Processor
from relay.redis_watch import OutcomeBarrier, RedisWatch

# How long the start waits for Redis to say who it is (it may be down: then later).
REDIS_START_CHECK_S = 5


class Relay(Generic[ItemT]):
    """``await relay.run()`` consumes until :meth:`stop`, then drains and returns."""

    def __init__(
        self,
        app: Application[ItemT],
        names: Names,
        limits: Limits,
        nc: NATS,
        redis_client: redis.asyncio.Redis,
        metrics: RelayMetrics | None = None,
    ) -> None:
        self.metrics = metrics or RelayMetrics(names.metrics_prefix)
        self._nc = nc
        self._names = names
        self._redis = redis_client
        js = nc.jetstream(timeout=5)
        self.ledger = AsyncLedger(redis_client, LedgerKeys(names.redis_prefix, names.entry_word))
        self.watcher = CompletionWatcher(redis_client, self.ledger.keys.completions)
        self.watch = RedisWatch(
            redis_client, limits, self.metrics, on_change=self.watcher.server_changed
        )
        self.barrier = OutcomeBarrier(self.ledger, self.watch, limits, self.metrics)
        self.dispatcher = Dispatcher()
        processor: Processor[Any] = Processor(
            Deps(
                app=app,
                names=names,
                limits=limits,
                js=js,
                ledger=self.ledger,
                watch=self.watch,
                barrier=self.barrier,
                watcher=self.watcher,
                dispatcher=self.dispatcher,
                metrics=self.metrics,
                batcher=self._batcher(app, names, limits),
            )
        )
        self.consumer = Consumer(
            js, processor, names, limits, self.metrics, connected=self._can_finish
        )
        # As /ready: lagging replicas pause fetching but are no readiness failure.
        self.metrics.ready.set_function(lambda: float(self.ready()))
        self._js = js

    def _batcher(self, app: Application[Any], names: Names, limits: Limits) -> Batcher[Any] | None:
        """Group commit of new workflows, when the application batches and the limits
        allow batches of two or more."""
        if limits.workflow_batch_max < 2 or not isinstance(app, BatchingApplication):
            return None

        def single(run: Run[Any]) -> Any:
            return app.workflow(run.item, run.epoch, run.run)

        return Batcher(
            self.dispatcher,
            single,
            app.workflow_batch,
            max_size=limits.workflow_batch_max,
            linger_s=limits.workflow_batch_linger_s,
            span_prefix=names.span_prefix,
            max_in_flight=limits.workflow_batches_in_flight,
            hold_s=limits.workflow_batch_hold_s,
            on_sent=self.metrics.workflow_batch_size.observe,
        )

    def _can_finish(self) -> bool:
        # Not while Redis is unreachable or its replicas lag: every input fetched
        # would fail and spend a delivery for nothing.
        return self._nc.is_connected and self.watcher.healthy and not self.barrier.behind

    def ready(self) -> bool:
        return self._nc.is_connected and self.watcher.healthy and self.consumer.problem() is None

    def readiness_checks(self) -> dict[str, Check]:
        """For ``/ready``: NATS connected, the consumer answers, Redis answers a ping,
        and the fetch loop consumes."""

        async def nats_connected() -> None:
            if not self._nc.is_connected:
                raise ConnectionError("not connected to NATS")

        async def consumer_answers() -> None:
            await self._js.consumer_info(self._names.stream, self._names.consumer)

        async def redis_answers() -> None:
            await self._redis.ping()

        async def consuming() -> None:
            if problem := self.consumer.problem():
                raise RuntimeError(problem)

        return {
            "nats": nats_connected,
            "consumer": consumer_answers,
            "redis": redis_answers,
            "consuming": consuming,
        }

    def stop(self) -> None:
        """Stop fetching; :meth:`run` then drains and returns."""
        self.consumer.stop()

    async def run(self) -> None:
        with contextlib.suppress(redis.RedisError, OSError, TimeoutError):
            await asyncio.wait_for(self.watch.refresh(), REDIS_START_CHECK_S)
        background = [
            asyncio.create_task(self.watcher.run(), name="completions"),
            asyncio.create_task(self.watch.run(), name="redis-watch"),
        ]
        try:
            await self.consumer.run()
        finally:
            for task in background:
                task.cancel()
            self.dispatcher.close()
