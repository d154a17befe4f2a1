"""The order's side of tracing at the edge: the order id on spans and in baggage.

Message spans themselves are the relay's (:mod:`relay.tracing`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import context, trace
from opentelemetry.context import Context
from opentelemetry.trace import Span

from orders.telemetry import ORDER_ID, with_order_id
from relay.tracing import publish_span


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
def new_order_trace(subject: str, order_id: str, headers: dict[str, str]) -> Iterator[Span]:
    """A producer's span for publishing one order: the root of the order's trace
    (whatever span is current), with the order id in its baggage."""
    token = context.attach(with_order_id(order_id, Context()))
    try:
        with publish_span(subject, headers) as span:
            yield span
    finally:
        context.detach(token)
