"""JetStream streams and the durable consumer: created when missing, never
deleted, purged or silently reconfigured."""

from __future__ import annotations

import logging

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import NotFoundError

from orders import names
from orders.settings import Settings

log = logging.getLogger(__name__)

# The bridge dead-letters a message itself at ``MAX_DELIVERIES``; the server's own
# limit sits a few deliveries higher so that a bridge dying while it
# dead-letters does not strand the message in a consumer that stopped
# delivering it.
SERVER_DELIVERY_GRACE = 3


def orders_stream(settings: Settings) -> StreamConfig:
    return StreamConfig(
        name=names.ORDERS_STREAM,
        subjects=list(names.ORDERS_SUBJECTS),
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=settings.orders_max_age.total_seconds(),
        duplicate_window=settings.orders_duplicate_window.total_seconds(),
        num_replicas=settings.stream_replicas,
    )


def dlq_stream(settings: Settings) -> StreamConfig:
    return StreamConfig(
        name=names.DLQ_STREAM,
        subjects=list(names.DLQ_SUBJECTS),
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        duplicate_window=settings.orders_duplicate_window.total_seconds(),
        num_replicas=settings.stream_replicas,
    )


def bridge_consumer(settings: Settings) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=names.DURABLE_CONSUMER,
        filter_subject=names.SUBJECT_CREATED,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=settings.ack_wait.total_seconds(),
        max_deliver=settings.max_deliveries + SERVER_DELIVERY_GRACE,
        # Enough for every bridge's in-flight window; beyond it the server holds back.
        max_ack_pending=max(10_000, settings.bridge_max_in_flight * 4),
    )


async def ensure_topology(js: JetStreamContext, settings: Settings) -> None:
    """Create both streams and the consumer if missing. Idempotent and safe to run
    from several bridges at once."""
    for config in (orders_stream(settings), dlq_stream(settings)):
        assert config.name is not None  # orders_stream and dlq_stream name theirs
        try:
            await js.stream_info(config.name)
        except NotFoundError:
            log.info("creating stream %s", config.name)
            await js.add_stream(config)
    try:
        await js.consumer_info(names.ORDERS_STREAM, names.DURABLE_CONSUMER)
    except NotFoundError:
        log.info("creating durable consumer %s", names.DURABLE_CONSUMER)
        await js.add_consumer(names.ORDERS_STREAM, bridge_consumer(settings))
