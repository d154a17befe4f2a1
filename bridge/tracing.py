"""Spans for NATS messages, named and tagged by the OpenTelemetry messaging
semantic conventions (``process ORDER.created``, ``publish ORDER.completed``;
``messaging.system=nats``, destination, message id) plus the order id.

The W3C ``traceparent`` and ``baggage`` headers of a message carry its trace:
:func:`process_span` continues the producer's, :func:`publish_span` hands it on.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from nats.aio.msg import Msg
from opentelemetry import context, propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from orders import names
from orders.telemetry import ORDER_ID, with_order_id

_tracer = trace.get_tracer("orders.bridge")

DISPOSITION = "orders.disposition"  # ack, nak or term: how the delivery ended


@contextmanager
def process_span(msg: Msg) -> Iterator[Span]:
    """The span of one delivery, child of the producer's span when the message
    carries a ``traceparent``; current for everything the delivery does."""
    meta = msg.metadata
    headers = msg.headers or {}
    attributes: dict[str, str | int] = {
        "messaging.system": "nats",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": msg.subject,
        "messaging.consumer.group.name": names.DURABLE_CONSUMER,
        "messaging.message.body.size": len(msg.data),
        "messaging.nats.stream.sequence": meta.sequence.stream,
        "messaging.nats.delivery.count": meta.num_delivered,
    }
    if msg_id := headers.get(names.HDR_MSG_ID):
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
def order_context(order_id: str) -> Iterator[None]:
    """Everything inside (spans, Celery sends, log lines) names the order."""
    trace.get_current_span().set_attribute(ORDER_ID, order_id)
    token = context.attach(with_order_id(order_id))
    try:
        yield
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
    if msg_id := headers.get(names.HDR_MSG_ID):
        attributes["messaging.message.id"] = msg_id
    with _tracer.start_as_current_span(
        f"publish {subject}", kind=SpanKind.PRODUCER, attributes=attributes
    ) as span:
        if inject:
            propagate.inject(headers)
        yield span


def record_disposition(disposition: str, error: str | None = None) -> None:
    span = trace.get_current_span()
    span.set_attribute(DISPOSITION, disposition)
    if error is not None:
        span.set_status(Status(StatusCode.ERROR, error))


@contextmanager
def new_order_trace(subject: str, order_id: str, headers: dict[str, str]) -> Iterator[Span]:
    """A producer's span for publishing one order: the root of the order's trace
    (whatever span is current), with the order id in its baggage."""
    token = context.attach(with_order_id(order_id, Context()))
    try:
        with publish_span(subject, headers) as span:
            yield span
    finally:
        context.detach(token)
