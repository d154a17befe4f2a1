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
import redis
import redis.asyncio
from nats.aio.client import Client as NATS
from opentelemetry.instrumentation.celery import CeleryInstrumentor

from bridge.app import NAMES, OrderApplication, relay_limits
from bridge.nats_connect import NatsRefused
from bridge.nats_connect import connect as nats_connect
from bridge.settings import BridgeSettings
from orders import telemetry
from orders.adapters.redis_client import RedisRefused, async_client, redis_refusal, tls_options
from orders.bootstrap import limits
from orders.celery_app import create_app as create_celery
from orders.logs import configure_logging
from orders.settings import ConfigError, load_settings, redact_url
from relay.http import create_app, serve
from relay.runner import Relay
from relay.topology import ensure_topology

log = logging.getLogger("bridge")

SERVICE_NAME = "orders-bridge"

# Half-open connections are noticed within PING_INTERVAL * MAX_OUTSTANDING_PINGS.
NATS_PING_INTERVAL_S = 5
NATS_MAX_OUTSTANDING_PINGS = 3
REDIS_START_CHECK_S = 5


async def connect_nats(settings: BridgeSettings) -> NATS:
    async def on_disconnect() -> None:
        log.warning("disconnected from NATS")

    async def on_reconnect() -> None:
        log.info("reconnected to NATS")

    async def on_error(exc: Exception) -> None:
        log.warning("NATS error: %s", exc)

    # Credentials the server refuses stop the start (NatsRefused); a server
    # that does not answer yet is waited for.
    return await nats_connect(
        settings,
        name="orders-bridge",
        ping_interval=NATS_PING_INTERVAL_S,
        max_outstanding_pings=NATS_MAX_OUTSTANDING_PINGS,
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        error_cb=on_error,
    )


async def run(settings: BridgeSettings) -> None:
    log.info("connecting to NATS at %s", redact_url(settings.nats_url))
    nc = await connect_nats(settings)
    relay_config = relay_limits(settings)
    await ensure_topology(nc.jetstream(timeout=5), NAMES, relay_config)

    redis_client = async_client(settings.redis_url, tls_options(settings))
    await _check_redis(redis_client, settings)
    app = OrderApplication(create_celery(settings), limits(settings), settings.max_message_bytes)
    relay = Relay(app, NAMES, relay_config, nc, redis_client)
    runner = await serve(
        create_app(
            alive=lambda: nc.is_connected,
            readiness_checks=relay.readiness_checks(),
            metrics=relay.metrics,
        ),
        settings.port,
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, relay.stop)
    log.info("bridge ready: consuming %s, HTTP on port %d", NAMES.input_subject, settings.port)
    try:
        await relay.run()
    finally:
        log.info("shutting down")
        await runner.cleanup()
        await nc.drain()
        await redis_client.aclose()
    log.info("bridge stopped")


async def _check_redis(client: redis.asyncio.Redis, settings: BridgeSettings) -> None:
    """Stop the start on credentials or a certificate Redis refuses; an unreachable
    Redis is only logged (``/ready`` says 503 until it answers)."""
    try:
        # Bounded: a black-holed Redis must not hold the start up for a socket timeout.
        await asyncio.wait_for(client.ping(), REDIS_START_CHECK_S)
    except TimeoutError:
        log.warning("Redis does not answer yet (no reply within %ss)", REDIS_START_CHECK_S)
    except redis.RedisError as exc:
        what = redis_refusal(exc)
        if what is not None:
            await client.aclose()
            raise RedisRefused(f"Redis {what} at {redact_url(settings.redis_url)}") from None
        log.warning("Redis does not answer yet: %s", exc)


def main() -> None:
    try:
        settings = load_settings(BridgeSettings)
        telemetry.setup_tracing(SERVICE_NAME)
    except ConfigError as exc:
        sys.exit(f"orders-bridge: {exc}")
    configure_logging(settings.log_format, settings.log_level)
    # Celery sends from the bridge carry the order's trace into the workflow.
    CeleryInstrumentor().instrument()
    try:
        asyncio.run(run(settings))
    except (NatsRefused, RedisRefused) as exc:
        sys.exit(f"orders-bridge: cannot start: {exc}")
    except (OSError, nats.errors.NoServersError, TimeoutError) as exc:
        sys.exit(f"orders-bridge: cannot start: {type(exc).__name__}: {exc}")
    finally:
        telemetry.shutdown_tracing()


if __name__ == "__main__":
    main()
