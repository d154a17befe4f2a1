"""Celery tasks: thin edges over :mod:`orders.services`.

Each task decodes its JSON arguments, calls one step and encodes the result.
All of them take ``order_id`` and ``epoch`` as keyword arguments, which is how
the shared base class reports progress and failures for the order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis
from celery import chain, shared_task
from celery.worker.request import Request

from orders import bootstrap, names, services
from orders.domain.errors import TransientError
from orders.domain.model import Order, Outcome, StepResult
from orders.logs import remember_task
from relay.ledger import Ledger
from relay.worker import LedgerTask

# Faults worth retrying: the gateway did not answer, Redis was unreachable.
TRANSIENT = (TransientError, redis.ConnectionError, redis.TimeoutError)


class OrderRequest(Request):
    """A task message as the worker's main process receives it: its order and trace
    are remembered, so the main process's lines about it name them too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        remember_task(self.id, self.request_dict)


class StepTask(LedgerTask):
    """Base of every pipeline task: idempotent steps, retried on transient faults
    with exponential backoff and full jitter, capped by ``max_retries``
    (``TASK_MAX_RETRIES``, applied as a task annotation, see ``celery_app``).
    Starts and final failures are kept in the order's ledger (``relay.worker``)."""

    Request = OrderRequest  # type: ignore[assignment]  # stub: str; Celery takes a class too

    key_kwarg = "order_id"
    autoretry_for = TRANSIENT
    retry_backoff = 1
    retry_backoff_max = 30
    retry_jitter = True
    ignore_result = True

    def ledger(self) -> Ledger:
        return bootstrap.pipeline().state.ledger

    def max_worker_losses(self) -> int:
        return bootstrap.pipeline().max_worker_losses


def _task(name: str) -> Callable[[Callable[..., Any]], StepTask]:
    return shared_task(name=name, base=StepTask, bind=False)


@_task(names.TASK_RESERVE)
def reserve_stock(*, order_id: str, epoch: int, order: dict[str, Any]) -> dict[str, Any]:
    step = services.reserve_step(bootstrap.pipeline(), Order.model_validate(order), epoch)
    return step.model_dump(mode="json")


@_task(names.TASK_CHARGE)
def charge_payment(*, order_id: str, epoch: int, order: dict[str, Any]) -> dict[str, Any]:
    step = services.charge_step(bootstrap.pipeline(), Order.model_validate(order), epoch)
    return step.model_dump(mode="json")


@shared_task(name=names.TASK_SETTLE, base=StepTask, bind=True)
def settle_order(
    self: StepTask,
    results: list[dict[str, Any]],
    *,
    order_id: str,
    epoch: int,
    order: dict[str, Any],
) -> None:
    """The chord callback: decide the outcome and start any compensation."""
    p = bootstrap.pipeline()
    placed = Order.model_validate(order)
    reservation, payment = (StepResult.model_validate(r) for r in results)
    settlement = services.settle_step(p, placed, epoch, reservation, payment)
    if not (settlement.release_stock or settlement.refund_payment):
        return
    steps = []
    kw = {"order_id": order_id, "epoch": epoch}
    if settlement.release_stock:
        steps.append(
            self.app.signature(names.TASK_RELEASE, kwargs={**kw, "quantities": placed.quantities()})
        )
    if settlement.refund_payment:
        steps.append(self.app.signature(names.TASK_REFUND, kwargs=kw))
    steps.append(
        self.app.signature(
            names.TASK_FINALIZE,
            kwargs={**kw, "outcome": settlement.outcome.model_dump(mode="json")},
        )
    )
    # Fire and forget (a task never waits on another); the ids are deterministic
    # so a settle that runs twice sends the same compensation, which is idempotent.
    chain(
        *(s.set(task_id=f"{self.request.id}:{i}", immutable=True) for i, s in enumerate(steps))
    ).apply_async()


class CompensationTask(StepTask):
    """Compensations must eventually happen: a refund owed is retried (backoff capped
    at ``retry_backoff_max``) until the gateway answers, never given up on."""

    max_retries = None


@shared_task(name=names.TASK_RELEASE, base=CompensationTask)
def release_stock(*, order_id: str, epoch: int, quantities: dict[str, int]) -> None:
    services.release_step(bootstrap.pipeline(), order_id, epoch, quantities)


@shared_task(name=names.TASK_REFUND, base=CompensationTask)
def refund_payment(*, order_id: str, epoch: int) -> None:
    services.refund_step(bootstrap.pipeline(), order_id, epoch)


@_task(names.TASK_FINALIZE)
def finalize_order(*, order_id: str, epoch: int, outcome: dict[str, Any]) -> None:
    services.finalize_step(bootstrap.pipeline(), epoch, Outcome.model_validate(outcome))
