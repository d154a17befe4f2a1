"""The Celery canvas for one order, built from task names alone.

    validate ─┬─ reserve ─┬─ settle ──(compensation chain when needed)
              └─ charge  ─┘

``chain(validate, chord([reserve, charge], settle))``. Task ids are derived
from the order id, epoch and run, so every send of a workflow is recognisable
in Flower and logs, and two runs never share a chord counter.
"""

from __future__ import annotations

from celery import Celery, chain, chord, group
from celery.canvas import Signature

from orders import names
from orders.domain.model import Order, RawOrder


def workflow_id(order_id: str, epoch: int, run: int) -> str:
    return f"{order_id}:{epoch}:{run}"


def order_workflow(app: Celery, raw: RawOrder, epoch: int, run: int) -> Signature:
    wid = workflow_id(raw.order_id, epoch, run)
    kw = {"order_id": raw.order_id, "epoch": epoch}

    def step(name: str, suffix: str, **kwargs: object) -> Signature:
        return app.signature(name, kwargs={**kw, **kwargs}).set(
            task_id=f"{wid}:{suffix}", ignore_result=True
        )

    header = group(step(names.TASK_RESERVE, "reserve"), step(names.TASK_CHARGE, "charge"))
    body = step(names.TASK_SETTLE, "settle", raw=raw.model_dump(mode="json"))
    return chain(
        app.signature(names.TASK_VALIDATE, args=(raw.model_dump(mode="json"),), kwargs=kw).set(
            task_id=f"{wid}:validate", ignore_result=True
        ),
        chord(header, body),
    )


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
