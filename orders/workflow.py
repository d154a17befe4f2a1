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

from celery import Celery, chord, group
from celery.canvas import Signature

from orders import names
from orders.domain.model import Order


def workflow_id(order_id: str, epoch: int, run: int) -> str:
    return f"{order_id}:{epoch}:{run}"


def order_workflow(app: Celery, order: Order, epoch: int, run: int) -> Signature:
    wid = workflow_id(order.order_id, epoch, run)
    kw = {"order_id": order.order_id, "epoch": epoch, "order": order.model_dump(mode="json")}

    def step(name: str, suffix: str) -> Signature:
        return app.signature(name, kwargs=kw).set(task_id=f"{wid}:{suffix}")

    header = group(step(names.TASK_RESERVE, "reserve"), step(names.TASK_CHARGE, "charge"))
    return chord(header, step(names.TASK_SETTLE, "settle"))


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
