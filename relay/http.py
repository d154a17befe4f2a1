"""A relay process's HTTP endpoints for orchestrators: ``/health``, ``/ready``, ``/metrics``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from relay.metrics import RelayMetrics

log = logging.getLogger(__name__)

CHECK_TIMEOUT_S = 2.0

Check = Callable[[], Awaitable[None]]


def create_app(
    *,
    alive: Callable[[], bool],
    readiness_checks: dict[str, Check],
    metrics: RelayMetrics,
) -> web.Application:
    """``alive``: the process is connected to NATS. ``readiness_checks``: each must
    return within :data:`CHECK_TIMEOUT_S` without raising for ``/ready`` to be 200."""

    async def health(_: web.Request) -> web.Response:
        ok = alive()
        return web.json_response(
            {"status": "ok" if ok else "nats disconnected"}, status=200 if ok else 503
        )

    async def ready(_: web.Request) -> web.Response:
        # Concurrently, so /ready answers within CHECK_TIMEOUT_S even when all hang.
        results = await asyncio.gather(
            *(asyncio.wait_for(check(), CHECK_TIMEOUT_S) for check in readiness_checks.values()),
            return_exceptions=True,
        )
        failures = {
            name: f"{type(result).__name__}: {result}"[:200]
            for name, result in zip(readiness_checks, results, strict=True)
            if isinstance(result, BaseException)
        }
        if failures:
            return web.json_response({"status": "not ready", "failures": failures}, status=503)
        return web.json_response({"status": "ready"})

    async def prometheus(_: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(metrics.registry))
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return response

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", prometheus)
    return app


async def serve(app: web.Application, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host="0.0.0.0", port=port).start()
    return runner
