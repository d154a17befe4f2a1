"""The Celery canvas for one order, built from task names alone.

    reserve ─┬─ settle ──(compensation chain when needed: release, refund, finalize)
    charge  ─┘

``chord([reserve, charge], settle)``, sent by the bridge once it has validated
the order (an invalid order never reaches a worker). The inventory and payment
steps run in parallel; the chord callback decides the outcome. Validation is
not a task of its own: it would repeat the bridge's, and a task is the costliest
thing in this pipeline (a publish, a receive, an ack and a Redis round trip).
Task ids are derived from the order id, epoch and run, so every send of a
workflow is recognisable in Flower and logs, and two runs never share a chord
counter.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, TypedDict

from celery import Celery, chord, group
from celery.canvas import Signature

from orders import names
from orders.domain.model import Order


def workflow_id(order_id: str, epoch: int, run: int) -> str:
    return f"{order_id}:{epoch}:{run}"


def order_workflow(
    app: Celery, order: Order, epoch: int, run: int, *, countdown: float | None = None
) -> Signature:
    """``countdown``: the header steps wait that long first (an order split out of its
    batch by a transient fault is retried with backoff, as a step's retry would be)."""
    wid = workflow_id(order.order_id, epoch, run)
    kw = {"order_id": order.order_id, "epoch": epoch, "order": order.model_dump(mode="json")}

    def step(name: str, suffix: str) -> Signature:
        options: dict[str, Any] = {"task_id": f"{wid}:{suffix}"}
        if countdown and name != names.TASK_SETTLE:
            options["countdown"] = countdown
        return app.signature(name, kwargs=kw).set(**options)

    header = group(step(names.TASK_RESERVE, "reserve"), step(names.TASK_CHARGE, "charge"))
    return chord(header, step(names.TASK_SETTLE, "settle"))


class BatchMember(TypedDict):
    """One order of a batch, as the batch tasks' ``members`` argument carries it."""

    order_id: str
    epoch: int
    run: int
    order: dict[str, Any]  # the validated order, as JSON
    trace: dict[str, str]  # the order's traceparent and baggage (W3C headers)


def batch_id(members: Sequence[BatchMember]) -> str:
    """The same for the same runs of the same orders (a repeated batch is
    recognisable), and naming no order: a batch task's log lines are about the
    batch, and Flower finds its orders by the ``order_ids`` argument."""
    runs = ",".join(f"{m['order_id']}/{m['epoch']}/{m['run']}" for m in members)
    return f"batch:{hashlib.sha256(runs.encode()).hexdigest()[:16]}:{len(members)}"


def batch_workflow(app: Celery, members: Sequence[BatchMember]) -> Signature:
    """``chord([reserve_batch, charge_batch], settle_batch)`` for several orders: the
    same steps, each run per order inside one task. ``order_ids`` comes first in the
    arguments, so that Flower's search (and its truncated argument column) finds
    every order of a batch."""
    bid = batch_id(members)
    kw = {"order_ids": [m["order_id"] for m in members], "members": list(members)}

    def step(name: str, suffix: str) -> Signature:
        return app.signature(name, kwargs=kw).set(task_id=f"{bid}:{suffix}")

    header = group(
        step(names.TASK_RESERVE_BATCH, "reserve"), step(names.TASK_CHARGE_BATCH, "charge")
    )
    return chord(header, step(names.TASK_SETTLE_BATCH, "settle"))


def compensation(app: Celery, order: Order, epoch: int) -> Signature:
    """Release the epoch's stock and refund its charge, in parallel; each is idempotent
    (and blocks a late reservation or charge of the epoch), and retried until done."""
    kw = {"order_id": order.order_id, "epoch": epoch}
    wid = f"{order.order_id}:{epoch}:compensate"
    return group(
        app.signature(
            names.TASK_RELEASE, kwargs={**kw, "quantities": order.quantities()}, immutable=True
        ).set(task_id=f"{wid}:release"),
        app.signature(names.TASK_REFUND, kwargs=kw, immutable=True).set(task_id=f"{wid}:refund"),
    )
