"""Wiring for worker processes: settings -> clients -> adapters -> :class:`Pipeline`.

Built lazily on first use in each process (after the prefork pool forked), never
at import time, so importing a task module connects to nothing.
"""

from __future__ import annotations

import os

import redis

from orders.adapters.order_state import OrderState
from orders.adapters.redis_client import sync_client, tls_options
from orders.adapters.redis_inventory import RedisInventory
from orders.adapters.simulated_gateway import SimulatedGateway
from orders.domain.validation import Limits
from orders.services import Pipeline
from orders.settings import OrderLimits, RedisConnection, WorkerSettings, load_settings

_pipeline: Pipeline | None = None


def redis_client(settings: RedisConnection) -> redis.Redis:
    return sync_client(settings.redis_url, tls_options(settings))


def limits(settings: OrderLimits) -> Limits:
    return Limits(
        max_items=settings.max_items,
        max_id_length=settings.max_id_length,
        max_quantity=settings.max_quantity,
    )


def build_pipeline(settings: WorkerSettings) -> Pipeline:
    client = redis_client(settings)
    return Pipeline(
        state=OrderState(client),
        inventory=RedisInventory(client, settings.inventory_default_stock),
        gateway=SimulatedGateway(
            client,
            decline_above=settings.payment_decline_above,
            transient_failure_rate=settings.payment_transient_failure_rate,
            latency_ms=settings.payment_latency_ms,
        ),
        limits=limits(settings),
        max_worker_losses=settings.task_max_worker_losses,
    )


def pipeline() -> Pipeline:
    """This process's pipeline, built on first use."""
    global _pipeline
    if _pipeline is None:
        _pipeline = build_pipeline(load_settings(WorkerSettings))
    return _pipeline


def _forget_after_fork() -> None:
    # A forked child must not share its parent's sockets.
    global _pipeline
    _pipeline = None


os.register_at_fork(after_in_child=_forget_after_fork)
