"""The ``bridge`` process: wiring, start-up and signal-driven shutdown.

``orders-bridge`` (Procfile). Start-up: settings -> NATS (streams and consumer
ensured) -> Redis -> HTTP -> fetch loop. SIGTERM/SIGINT: stop fetching, let
in-flight orders finish up to ``DRAIN_TIMEOUT``, nak the rest, drain NATS, exit 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import nats
from nats.aio.client import Client as NATS

from bridge.completions import CompletionWatcher
from bridge.consumer import Consumer
from bridge.dispatch import Dispatcher
from bridge.http import create_app, serve
from bridge.metrics import BridgeMetrics
from bridge.processor import Deps, OrderProcessor
from bridge.topology import ensure_topology
from orders import names
from orders.adapters.order_state import AsyncOrderState
from orders.adapters.redis_client import async_client
from orders.bootstrap import limits
from orders.celery_app import create_app as create_celery
from orders.settings import ConfigError, Settings, load_settings, redact_url

log = logging.getLogger("bridge")

# Half-open connections are noticed within PING_INTERVAL * MAX_OUTSTANDING_PINGS.
NATS_PING_INTERVAL_S = 5
NATS_MAX_OUTSTANDING_PINGS = 3


async def connect_nats(settings: Settings) -> NATS:
    async def on_disconnect() -> None:
        log.warning("disconnected from NATS")

    async def on_reconnect() -> None:
        log.info("reconnected to NATS")

    async def on_error(exc: Exception) -> None:
        log.warning("NATS error: %s", exc)

    return await nats.connect(
        servers=[s.strip() for s in settings.nats_url.split(",")],
        name="orders-bridge",
        connect_timeout=settings.nats_connect_timeout.total_seconds(),
        ping_interval=NATS_PING_INTERVAL_S,
        max_outstanding_pings=NATS_MAX_OUTSTANDING_PINGS,
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        error_cb=on_error,
    )


async def run(settings: Settings) -> None:
    log.info("connecting to NATS at %s", redact_url(settings.nats_url))
    nc = await connect_nats(settings)
    js = nc.jetstream(timeout=5)
    await ensure_topology(js, settings)

    redis_client = async_client(settings.redis_url)
    metrics = BridgeMetrics()
    watcher = CompletionWatcher(redis_client)
    dispatcher = Dispatcher()
    processor = OrderProcessor(
        Deps(
            js=js,
            state=AsyncOrderState(redis_client),
            watcher=watcher,
            dispatcher=dispatcher,
            celery=create_celery(settings),
            settings=settings,
            limits=limits(settings),
            metrics=metrics,
        )
    )
    consumer = Consumer(
        js, processor, settings, metrics, connected=lambda: nc.is_connected and watcher.healthy
    )

    async def consumer_answers() -> None:
        await js.consumer_info(names.ORDERS_STREAM, names.DURABLE_CONSUMER)

    async def redis_answers() -> None:
        await redis_client.ping()

    async def nats_connected() -> None:
        if not nc.is_connected:
            raise ConnectionError("not connected to NATS")

    async def consuming() -> None:
        if problem := consumer.problem():
            raise RuntimeError(problem)

    runner = await serve(
        create_app(
            alive=lambda: nc.is_connected,
            readiness_checks={
                "nats": nats_connected,
                "consumer": consumer_answers,
                "redis": redis_answers,
                "consuming": consuming,
            },
            metrics=metrics,
        ),
        settings.port,
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, consumer.stop)
    watcher_task = asyncio.create_task(watcher.run(), name="completions")
    log.info("bridge ready: consuming %s, HTTP on port %d", names.SUBJECT_CREATED, settings.port)
    try:
        await consumer.run()
    finally:
        log.info("shutting down")
        watcher_task.cancel()
        await runner.cleanup()
        dispatcher.close()
        await nc.drain()
        await redis_client.aclose()
    log.info("bridge stopped")


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = load_settings()
    except ConfigError as exc:
        sys.exit(f"orders-bridge: {exc}")
    try:
        asyncio.run(run(settings))
    except (OSError, nats.errors.NoServersError, TimeoutError) as exc:
        sys.exit(f"orders-bridge: cannot start: {type(exc).__name__}: {exc}")


if __name__ == "__main__":
    main()
