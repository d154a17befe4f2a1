"""The naive baseline: the pipeline's workflow shape with trivial task bodies.

``chain(validate, chord([reserve, charge], complete))`` on plain Celery with its
defaults (results stored in the backend and awaited by the caller, early acks,
default prefetch), JSON serialization, on the benchmark's Redis. No NATS, no
order state, no idempotency: what Celery alone costs per order on this machine.
Queue and task names are the benchmark's own, so its worker never takes a
pipeline task or the other way round.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, chain, chord
from celery.canvas import Signature

QUEUE_ORDERS = "bench-naive-orders"
QUEUE_INVENTORY = "bench-naive-inventory"
QUEUE_PAYMENTS = "bench-naive-payments"
QUEUES = (QUEUE_ORDERS, QUEUE_INVENTORY, QUEUE_PAYMENTS)

TASK_VALIDATE = "bench_naive.validate"
TASK_RESERVE = "bench_naive.reserve"
TASK_CHARGE = "bench_naive.charge"
TASK_COMPLETE = "bench_naive.complete"
# The floor: a task that does nothing, acked late as the pipeline's tasks are.
TASK_NOOP = "bench_naive.noop"

_ROUTES = {
    TASK_VALIDATE: {"queue": QUEUE_ORDERS},
    TASK_COMPLETE: {"queue": QUEUE_ORDERS},
    TASK_RESERVE: {"queue": QUEUE_INVENTORY},
    TASK_CHARGE: {"queue": QUEUE_PAYMENTS},
    TASK_NOOP: {"queue": QUEUE_ORDERS},
}


def create_app(redis_url: str) -> Celery:
    """The baseline's app with its four tasks; connects to nothing until used."""
    app = Celery("bench_naive", broker=redis_url, backend=redis_url)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_routes=_ROUTES,
        task_default_queue=QUEUE_ORDERS,
        broker_connection_retry_on_startup=True,
    )
    for name, body in (
        (TASK_VALIDATE, _validate),
        (TASK_RESERVE, _reserve),
        (TASK_CHARGE, _charge),
        (TASK_COMPLETE, _complete),
    ):
        app.task(name=name, shared=False)(body)
    app.task(name=TASK_NOOP, shared=False, acks_late=True)(_noop)
    return app


def workflow(app: Celery, order: dict[str, Any]) -> Signature:
    """One order's canvas; the result of the whole is ``complete``'s."""
    return chain(
        app.signature(TASK_VALIDATE, args=(order,)),
        chord(
            [app.signature(TASK_RESERVE), app.signature(TASK_CHARGE)],
            app.signature(TASK_COMPLETE),
        ),
    )


def noop(app: Celery) -> Signature:
    """One no-op task; its result is ``"completed"``, like a workflow's."""
    return app.signature(TASK_NOOP)


def _noop() -> str:
    return "completed"


def _validate(order: dict[str, Any]) -> dict[str, Any]:
    return order


def _reserve(order: dict[str, Any]) -> bool:
    return True


def _charge(order: dict[str, Any]) -> bool:
    return True


def _complete(results: list[bool]) -> str:
    return "completed" if all(results) else "failed"
