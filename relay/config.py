"""What the relay needs to know, given by the application that runs it.

A plain value, not read from the environment: the application owns its settings
(names, defaults, validation) and builds this from them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, slots=True)
class Names:
    """The JetStream names and Redis key prefix of one application."""

    stream: str  # holds the input subject and the outcome subjects
    subjects: tuple[str, ...]  # the stream's subjects
    input_subject: str  # what the durable consumer delivers
    consumer: str  # the durable pull consumer
    dlq_stream: str
    dlq_subjects: tuple[str, ...]
    dlq_subject: str  # where a dead letter of the input is stored
    # Dead-letter headers: the reason, the original subject, stream sequence and
    # deliveries (``Nats-Msg-Id`` is always ``dlq:<sequence>``).
    dlq_reason_header: str
    dlq_subject_header: str
    dlq_sequence_header: str
    dlq_deliveries_header: str
    redis_prefix: str  # every Redis key of the ledger starts with it
    entry_word: str = "entry"  # one input's ledger hash is <redis_prefix><entry_word>:<key>
    span_prefix: str = "relay"  # the relay's span attributes: <span_prefix>.disposition, ...
    metrics_prefix: str = "relay"  # the relay's Prometheus metrics: <metrics_prefix>_...


@dataclass(frozen=True, slots=True)
class Limits:
    """The consumer's and the ledger's timing. Defaults suit a workflow of seconds."""

    # Deliveries of one message before the relay gives up on it (the consumer's
    # own ``max_deliver`` is :data:`relay.topology.SERVER_DELIVERY_GRACE` higher).
    max_deliveries: int = 5
    ack_wait_s: float = 30.0
    max_in_flight: int = 256
    fetch_batch: int = 64
    # Larger inputs are dead-lettered unread (the application's decode never sees them).
    max_message_bytes: int = 1_048_576
    # A workflow that shows no progress for this long is sent again.
    stall_timeout_s: float = 90.0
    # Messages pending but none fetched for this long: re-subscribe.
    consumer_stall_timeout_s: float = 30.0
    drain_timeout_s: float = 20.0
    # How long a refused outcome or dead letter is retried in place before a nak.
    publish_retry_window_s: float = 60.0
    nak_delay_max_s: float = 30.0
    # Before an outcome is published, this many Redis replicas acknowledge what it
    # rests on ("auto": as many as the primary reports online).
    redis_wait_replicas: int | Literal["auto"] = "auto"
    redis_wait_timeout_ms: int = 1000
    redis_wait_aof: bool = False
    # New workflows sent to Celery together, for an application that batches
    # (relay.batching): at most this many, waiting at most the linger for company.
    # 1 sends each alone.
    workflow_batch_max: int = 1
    workflow_batch_linger_s: float = 0.001
    # Self-clocking (relay.batching): while this many canvases are at work, new
    # workflows wait for the next one, at most workflow_batch_hold_s.
    workflow_batches_in_flight: int = 2
    workflow_batch_hold_s: float = 0.05
    # JetStream stream settings used when the relay creates its streams.
    max_age_s: float = 7 * 24 * 3600.0
    duplicate_window_s: float = 120.0
    stream_replicas: int = 1
