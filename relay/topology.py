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

from relay.config import Limits, Names

log = logging.getLogger(__name__)

# The relay dead-letters a message itself at ``max_deliveries``; the server's own
# limit sits a few deliveries higher so that a bridge dying while it dead-letters
# does not strand the message in a consumer that stopped delivering it.
SERVER_DELIVERY_GRACE = 3


def input_stream(names: Names, limits: Limits) -> StreamConfig:
    return StreamConfig(
        name=names.stream,
        subjects=list(names.subjects),
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=limits.max_age_s,
        duplicate_window=limits.duplicate_window_s,
        num_replicas=limits.stream_replicas,
    )


def dlq_stream(names: Names, limits: Limits) -> StreamConfig:
    return StreamConfig(
        name=names.dlq_stream,
        subjects=list(names.dlq_subjects),
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        duplicate_window=limits.duplicate_window_s,
        num_replicas=limits.stream_replicas,
    )


def durable_consumer(names: Names, limits: Limits) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=names.consumer,
        filter_subject=names.input_subject,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=limits.ack_wait_s,
        max_deliver=limits.max_deliveries + SERVER_DELIVERY_GRACE,
        # Enough for every bridge's in-flight window; beyond it the server holds back.
        max_ack_pending=max(10_000, limits.max_in_flight * 4),
    )


async def ensure_topology(js: JetStreamContext, names: Names, limits: Limits) -> None:
    """Create both streams and the consumer if missing. Idempotent and safe to run
    from several bridges at once."""
    for config in (input_stream(names, limits), dlq_stream(names, limits)):
        assert config.name is not None  # both functions name their stream
        try:
            await js.stream_info(config.name)
        except NotFoundError:
            log.info("creating stream %s", config.name)
            await js.add_stream(config)
    try:
        await js.consumer_info(names.stream, names.consumer)
    except NotFoundError:
        log.info("creating durable consumer %s", names.consumer)
        await js.add_consumer(names.stream, durable_consumer(names, limits))
