"""The canvas of a batch of orders, and what each order carries in it."""

from __future__ import annotations

import contextvars
from typing import Any

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from bridge.app import DecodedOrder, OrderApplication
from bridge.settings import BridgeSettings
from orders import names
from orders.bootstrap import limits
from orders.celery_app import create_app
from orders.domain.model import Order, RawItem, RawOrder
from orders.domain.validation import validate_order
from orders.settings import load_settings
from orders.workflow import batch_id, order_workflow
from relay.application import Run

pytestmark = pytest.mark.unit

SETTINGS = load_settings(BridgeSettings, redis_url="redis://127.0.0.1:1/0")
CELERY = create_app(SETTINGS)
APP = OrderApplication(CELERY, limits(SETTINGS), SETTINGS.max_message_bytes)


def decoded(order_id: str) -> DecodedOrder:
    raw = RawOrder(
        order_id=order_id,
        customer_id="c-1",
        items=(RawItem(product_id="sku-1", quantity=1, unit_price=5.0),),
        total_amount=5.0,
        currency="USD",
    )
    return DecodedOrder(raw, validate_order(raw, limits(SETTINGS)))


def traced(trace_id: int) -> contextvars.Context:
    """A context whose current span belongs to trace ``trace_id`` (as a delivery's is)."""
    span = NonRecordingSpan(SpanContext(trace_id, 1, is_remote=False, trace_flags=TraceFlags(1)))
    context = contextvars.copy_context()
    context.run(otel_context.attach, trace.set_span_in_context(span))
    return context


def test_a_batch_is_one_chord_of_batch_steps_naming_every_order() -> None:
    runs = [Run(f"o-{n}", decoded(f"o-{n}"), 1, 1, traced(n + 1)) for n in range(3)]
    canvas: Any = APP.workflow_batch(runs)
    header = [step for step in canvas.tasks]
    assert [s.task for s in header] == [names.TASK_RESERVE_BATCH, names.TASK_CHARGE_BATCH]
    assert canvas.body.task == names.TASK_SETTLE_BATCH
    ids = [s.options["task_id"] for s in [*header, canvas.body]]
    bid = batch_id(canvas.body.kwargs["members"])
    assert ids == [f"{bid}:reserve", f"{bid}:charge", f"{bid}:settle"]
    # The same runs, the same id; another run of one order, another batch.
    again: Any = APP.workflow_batch(runs)
    assert again.body.options["task_id"] == f"{bid}:settle"
    other: Any = APP.workflow_batch([*runs[:2], Run("o-2", decoded("o-2"), 1, 2, traced(3))])
    assert other.body.options["task_id"] != f"{bid}:settle"
    assert bid.endswith(":3") and not any(f"o-{n}" in bid for n in range(3))
    kwargs = canvas.body.kwargs
    # order_ids first: Flower shows (and searches) the start of the arguments.
    assert list(kwargs) == ["order_ids", "members"]
    assert kwargs["order_ids"] == ["o-0", "o-1", "o-2"]
    for n, member in enumerate(kwargs["members"]):
        assert (member["order_id"], member["epoch"], member["run"]) == (f"o-{n}", 1, 1)
        Order.model_validate(member["order"])
        # Each order's own trace, taken in its own context.
        assert member["trace"]["traceparent"].split("-")[1] == f"{n + 1:032x}"


def test_an_invalid_order_is_never_part_of_a_batch() -> None:
    invalid = DecodedOrder(
        decoded("bad").raw.model_copy(update={"items": ()}),
        validate_order(decoded("bad").raw.model_copy(update={"items": ()}), limits(SETTINGS)),
    )
    runs = [Run("ok", decoded("ok"), 1, 1, traced(1)), Run("bad", invalid, 1, 1, traced(2))]
    with pytest.raises(TypeError, match="order bad is invalid"):
        APP.workflow_batch(runs)


def test_an_order_split_out_of_its_batch_waits_only_in_its_header_steps() -> None:
    order = decoded("o-1").verdict
    assert isinstance(order, Order)
    canvas: Any = order_workflow(CELERY, order, 2, 1, countdown=1.5)
    assert [s.options.get("countdown") for s in canvas.tasks] == [1.5, 1.5]
    assert "countdown" not in canvas.body.options
    assert [s.options["task_id"] for s in canvas.tasks] == ["o-1:2:1:reserve", "o-1:2:1:charge"]
