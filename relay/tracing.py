"""Spans for NATS messages, named and tagged by the OpenTelemetry messaging
semantic conventions (``process ORDER.created``, ``publish ORDER.completed``;
``messaging.system=nats``, destination, message id, consumer group).

The W3C ``traceparent`` and ``baggage`` headers of a message carry its trace:
:func:`process_span` continues the producer's, :func:`publish_span` hands it on.
The relay's own attributes are named ``<prefix>.disposition`` (``ack``, ``nak``
or ``term``), ``<prefix>.outcome`` and ``<prefix>.reason``, the prefix being the
application's (:attr:`relay.config.Names.span_prefix`).
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from nats.aio.msg import Msg
from opentelemetry import context, propagate, trace
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode

_tracer = trace.get_tracer("relay")

MSG_ID_HEADER = "Nats-Msg-Id"


@contextmanager
def process_span(msg: Msg, consumer: str) -> Iterator[Span]:
    """The span of one delivery, child of the producer's span when the message
    carries a ``traceparent``; current for everything the delivery does."""
    meta = msg.metadata
    headers = msg.headers or {}
    attributes: dict[str, str | int] = {
        "messaging.system": "nats",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": msg.subject,
        "messaging.consumer.group.name": consumer,
        "messaging.message.body.size": len(msg.data),
        "messaging.nats.stream.sequence": meta.sequence.stream,
        "messaging.nats.delivery.count": meta.num_delivered,
    }
    if msg_id := headers.get(MSG_ID_HEADER):
        attributes["messaging.message.id"] = msg_id
    token = context.attach(propagate.extract(headers))
    try:
        with _tracer.start_as_current_span(
            f"process {msg.subject}", kind=SpanKind.CONSUMER, attributes=attributes
        ) as span:
            yield span
    finally:
        context.detach(token)


@contextmanager
def publish_span(subject: str, headers: dict[str, str], *, inject: bool = True) -> Iterator[Span]:
    """A producer span for one publish; ``headers`` receive its ``traceparent`` and
    ``baggage`` unless ``inject`` is false."""
    attributes: dict[str, str] = {
        "messaging.system": "nats",
        "messaging.operation.type": "send",
        "messaging.operation.name": "publish",
        "messaging.destination.name": subject,
    }
    if msg_id := headers.get(MSG_ID_HEADER):
        attributes["messaging.message.id"] = msg_id
    with _tracer.start_as_current_span(
        f"publish {subject}", kind=SpanKind.PRODUCER, attributes=attributes
    ) as span:
        if inject:
            propagate.inject(headers)
        yield span


@contextmanager
def batch_span(prefix: str, members: Sequence[contextvars.Context]) -> Iterator[Span]:
    """The span of one batch send, a root of its own linked to each member's current
    span (the messaging conventions' batch shape: a batch has many parents); the
    Celery publish under it is its child."""
    links = []
    for member in members:
        span_context = member.run(trace.get_current_span).get_span_context()
        if span_context.is_valid:
            links.append(Link(span_context))
    attributes = {"messaging.batch.message_count": len(members)}
    with _tracer.start_as_current_span(
        f"{prefix} send batch", kind=SpanKind.PRODUCER, links=links, attributes=attributes
    ) as span:
        yield span


def record_disposition(prefix: str, disposition: str, error: str | None = None) -> None:
    """On the current (process) span: how the delivery ended, an error status with
    ``error`` for a nak or a dead letter."""
    span = trace.get_current_span()
    span.set_attribute(f"{prefix}.disposition", disposition)
    if error is not None:
        span.set_status(Status(StatusCode.ERROR, error))
