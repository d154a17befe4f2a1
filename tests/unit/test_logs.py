"""``orders.logs``: lines about an order carry its id and trace id, in JSON or text."""

from __future__ import annotations

import json
import logging

import pytest
from opentelemetry import context, trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from orders.logs import TEXT_FORMAT, JsonFormatter, OrderContextFilter, remember_task
from orders.telemetry import with_order_id

pytestmark = pytest.mark.unit

TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("test", logging.INFO, __file__, 1, message, args, None)
    for key, value in extra.items():
        setattr(rec, key, value)
    assert OrderContextFilter().filter(rec)
    return rec


def in_order_context() -> object:
    span = NonRecordingSpan(SpanContext(TRACE_ID, 0x1234, False, TraceFlags(1)))
    ctx = trace.set_span_in_context(span, with_order_id("ord-7"))
    return context.attach(ctx)


def test_json_line_names_the_order_and_trace_of_the_current_context() -> None:
    token = in_order_context()
    try:
        line = JsonFormatter().format(record("charged %s", "10.00 USD"))
    finally:
        context.detach(token)  # type: ignore[arg-type]
    entry = json.loads(line)
    assert entry["message"] == "charged 10.00 USD"
    assert entry["order_id"] == "ord-7"
    assert entry["trace_id"] == format(TRACE_ID, "032x")


def test_a_line_about_no_order_has_no_order_fields() -> None:
    entry = json.loads(JsonFormatter().format(record("worker ready")))
    assert "order_id" not in entry and "trace_id" not in entry
    text = logging.Formatter(TEXT_FORMAT).format(record("worker ready"))
    assert "order=" not in text


def test_celery_main_process_lines_are_matched_by_task_id() -> None:
    remember_task(
        "ord-9:1:1:charge",
        {
            "traceparent": f"00-{TRACE_ID:032x}-00f067aa0ba902b7-01",
            "baggage": "order.id=ord-9",
        },
    )
    received = record(
        "Task %(name)s[%(id)s] received",
        {"name": "payments.charge_payment", "id": "ord-9:1:1:charge"},
        data={"id": "ord-9:1:1:charge"},
    )
    lost = record("Task %s[%s] lost its worker", "payments.charge_payment", "ord-9:1:1:charge")
    for rec in (received, lost):
        assert (rec.order_id, rec.trace_id) == ("ord-9", format(TRACE_ID, "032x"))
    text = logging.Formatter(TEXT_FORMAT).format(lost)
    assert f"[order=ord-9 trace={TRACE_ID:032x}]" in text
