"""Celery tasks: thin edges over :mod:`orders.services`.

Each task decodes its JSON arguments, calls one step and encodes the result.
All of them take ``order_id`` and ``epoch`` as keyword arguments, which is how
the shared base class reports progress and failures for the order.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery import Task, chain, shared_task

from orders import bootstrap, names, services
from orders.domain.errors import TransientError
from orders.domain.model import FailureReason, Invalid, Order, Outcome, RawOrder, StepResult
from orders.domain.settlement import failed_outcome

log = logging.getLogger(__name__)

# Faults worth retrying: the gateway did not answer, Redis was unreachable.
TRANSIENT = (TransientError, redis.ConnectionError, redis.TimeoutError)


class WorkerLostTooOften(Exception):
    """Not transient: the task took its worker process down every time it ran."""


class StepTask(Task):  # type: ignore[misc]
    """Base of every pipeline task: idempotent steps, retried on transient faults
    with exponential backoff and full jitter, capped by ``max_retries``
    (``TASK_MAX_RETRIES``, applied as a task annotation, see ``celery_app``)."""

    autoretry_for = TRANSIENT
    retry_backoff = 1
    retry_backoff_max = 30
    retry_jitter = True
    acks_late = True
    ignore_result = True

    def before_start(self, task_id: str, args: Any, kwargs: Any) -> None:
        p = bootstrap.pipeline()
        try:
            starts = p.task_starts.record(task_id)
        except redis.RedisError:
            return  # cannot count now; the task's own Redis calls will retry it
        lost = starts - 1 - (self.request.retries or 0)
        if lost >= p.max_worker_losses:
            raise WorkerLostTooOften(
                f"{self.name} lost its worker process {lost} times (out of memory? crash?); "
                "not running it again"
            )

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        # Retries are exhausted (or the fault was not transient): tell the bridge
        # now rather than let it wait for the stall timeout. It naks the message,
        # and the next delivery sends the workflow again.
        order_id, epoch = kwargs.get("order_id"), kwargs.get("epoch")
        if order_id is None or epoch is None:
            return
        detail = f"{self.name} failed: {type(exc).__name__}: {exc}"
        try:
            bootstrap.pipeline().state.record_error(order_id, epoch, detail[:500])
        except redis.RedisError:
            log.warning("could not record failure of order %s: Redis unavailable", order_id)


def _task(name: str) -> Any:
    return shared_task(name=name, base=StepTask, bind=False)


@_task(names.TASK_VALIDATE)
def validate_order(raw: dict[str, Any], *, order_id: str, epoch: int) -> dict[str, Any]:
    verdict = services.validate_step(bootstrap.pipeline(), RawOrder.model_validate(raw), epoch)
    return _encode_verdict(verdict)


@_task(names.TASK_RESERVE)
def reserve_stock(verdict: dict[str, Any], *, order_id: str, epoch: int) -> dict[str, Any]:
    order = _decode_verdict(verdict)
    if isinstance(order, Invalid):
        return _invalid(order).model_dump(mode="json")
    return services.reserve_step(bootstrap.pipeline(), order, epoch).model_dump(mode="json")


@_task(names.TASK_CHARGE)
def charge_payment(verdict: dict[str, Any], *, order_id: str, epoch: int) -> dict[str, Any]:
    order = _decode_verdict(verdict)
    if isinstance(order, Invalid):
        return _invalid(order).model_dump(mode="json")
    return services.charge_step(bootstrap.pipeline(), order, epoch).model_dump(mode="json")


@shared_task(name=names.TASK_SETTLE, base=StepTask, bind=True)
def settle_order(
    self: Task, results: list[dict[str, Any]], *, order_id: str, epoch: int, raw: dict[str, Any]
) -> None:
    """The chord callback: decide the outcome and start any compensation."""
    p = bootstrap.pipeline()
    order = services.validate_step(p, RawOrder.model_validate(raw), epoch)
    if isinstance(order, Invalid):
        services.finalize_step(
            p, epoch, failed_outcome(order_id, FailureReason.INVALID_ORDER, order.detail)
        )
        return
    reservation, payment = (StepResult.model_validate(r) for r in results)
    settlement = services.settle_step(p, order, epoch, reservation, payment)
    if not (settlement.release_stock or settlement.refund_payment):
        return
    steps = []
    kw = {"order_id": order_id, "epoch": epoch}
    if settlement.release_stock:
        steps.append(
            self.app.signature(names.TASK_RELEASE, kwargs={**kw, "quantities": order.quantities()})
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


def _encode_verdict(verdict: Order | Invalid) -> dict[str, Any]:
    if isinstance(verdict, Invalid):
        return {"invalid": verdict.detail}
    return {"order": verdict.model_dump(mode="json")}


def _decode_verdict(verdict: dict[str, Any]) -> Order | Invalid:
    if "invalid" in verdict:
        return Invalid(detail=verdict["invalid"])
    return Order.model_validate(verdict["order"])


def _invalid(invalid: Invalid) -> StepResult:
    return StepResult.failure(FailureReason.INVALID_ORDER, invalid.detail)
