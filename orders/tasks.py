"""Celery tasks: thin edges over :mod:`orders.services`.

Each task decodes its JSON arguments, calls one step and encodes the result.
All of them take ``order_id`` and ``epoch`` as keyword arguments, which is how
the shared base class reports progress and failures for the order.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import redis
from celery import Celery, chain, shared_task
from celery.utils.time import get_exponential_backoff_interval
from celery.worker.request import Request
from opentelemetry import context, propagate, trace

from orders import bootstrap, names, services
from orders.domain.errors import TransientError
from orders.domain.model import Order, Outcome, Settlement, StepResult
from orders.logs import remember_task
from orders.services import Pipeline, Placed
from orders.telemetry import ORDER_ID
from orders.workflow import BatchMember, order_workflow
from relay.ledger import Ledger
from relay.worker import LedgerTask

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("orders")

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
    _compensate(self.app, str(self.request.id), placed, epoch, settlement)


def _compensate(
    app: Celery, task_id: str, order: Order, epoch: int, settlement: Settlement
) -> None:
    """Release and refund what the settlement says, then finalize, as one chain."""
    if not (settlement.release_stock or settlement.refund_payment):
        return
    steps = []
    kw = {"order_id": order.order_id, "epoch": epoch}
    if settlement.release_stock:
        steps.append(
            app.signature(names.TASK_RELEASE, kwargs={**kw, "quantities": order.quantities()})
        )
    if settlement.refund_payment:
        steps.append(app.signature(names.TASK_REFUND, kwargs=kw))
    steps.append(
        app.signature(
            names.TASK_FINALIZE,
            kwargs={**kw, "outcome": settlement.outcome.model_dump(mode="json")},
        )
    )
    # Fire and forget (a task never waits on another); the ids are deterministic
    # so a settle that runs twice sends the same compensation, which is idempotent.
    chain(
        *(s.set(task_id=f"{task_id}:{i}", immutable=True) for i, s in enumerate(steps))
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


# --- batches: the same steps for several orders in one task (docs/design/batching.md) --

# What a header step returns for an order it handed to a workflow of its own.
SPLIT: dict[str, Any] = {"split": True}


class BatchStepTask(StepTask):
    """A header step over a batch: the step runs for every order in one call (one
    script, one gateway request), and each order's part gets a span of its own trace.
    A business failure is that order's result; a transient fault of one order hands
    that order alone to a single-order workflow, retried with backoff, and the batch
    goes on without it. A fault of the whole call (Redis unreachable) retries the
    batch task, as it would a single order's."""

    def each(
        self,
        members: list[BatchMember],
        step: Callable[[Pipeline, list[Placed]], Sequence[StepResult | TransientError]],
    ) -> list[dict[str, Any]]:
        p = bootstrap.pipeline()
        placed = [(Order.model_validate(m["order"]), m["epoch"]) for m in members]
        started = time.time_ns()
        answers = step(p, placed)
        results = []
        for member, (order, _), answer in zip(members, placed, answers, strict=True):
            with member_scope(member, self.name, started):
                if isinstance(answer, TransientError):
                    self.split(member, order, answer)
                    results.append(SPLIT)
                else:
                    results.append(answer.model_dump(mode="json"))
        return results

    def split(self, member: BatchMember, order: Order, exc: BaseException) -> None:
        order_id, epoch, run = member["order_id"], member["epoch"], member["run"]
        countdown = get_exponential_backoff_interval(
            factor=self.retry_backoff, retries=0, maximum=self.retry_backoff_max, full_jitter=True
        )
        log.warning("%s: %s; the order goes on alone in %ss", self.name, exc, countdown)
        # Sent before it is marked, never the other way round: a worker killed in
        # between re-runs the batch step and sends it again, which is harmless (the
        # steps are idempotent, and both header steps may split the same order),
        # whereas a mark without a send would leave the order to the stall timeout.
        order_workflow(self.app, order, epoch, run, countdown=countdown).apply_async()
        bootstrap.pipeline().state.mark_split(order_id, epoch, run)


@contextmanager
def member_scope(member: BatchMember, step: str, started_ns: int | None = None) -> Iterator[None]:
    """One order's part of a batch task: a span that is a child of the order's own
    trace (its baggage names the order in logs and in every span under it), linked
    from the batch task's span. ``started_ns``: when the batch's call that did this
    order's work began (its part started then, with everyone else's)."""
    batch_span = trace.get_current_span()
    token = context.attach(propagate.extract(member["trace"]))
    try:
        with _tracer.start_as_current_span(
            f"{step} {member['order_id']}",
            attributes={ORDER_ID: member["order_id"]},
            start_time=started_ns,
        ) as span:
            batch_span.add_link(span.get_span_context())
            yield
    finally:
        context.detach(token)


@shared_task(name=names.TASK_RESERVE_BATCH, base=BatchStepTask, bind=True)
def reserve_batch(
    self: BatchStepTask, *, order_ids: list[str], members: list[BatchMember]
) -> list[dict[str, Any]]:
    return self.each(members, services.reserve_steps)


@shared_task(name=names.TASK_CHARGE_BATCH, base=BatchStepTask, bind=True)
def charge_batch(
    self: BatchStepTask, *, order_ids: list[str], members: list[BatchMember]
) -> list[dict[str, Any]]:
    return self.each(members, services.charge_steps)


@shared_task(name=names.TASK_SETTLE_BATCH, base=StepTask, bind=True)
def settle_batch(
    self: StepTask,
    results: list[list[dict[str, Any]]],
    *,
    order_ids: list[str],
    members: list[BatchMember],
) -> None:
    """The batch's chord callback: each order settled (and compensated) on its own,
    the outcomes that need no compensation recorded in one call; orders split out of
    the batch are settled by their own workflow instead."""
    p = bootstrap.pipeline()
    reservations, payments = results
    settled = [
        (member, Order.model_validate(member["order"]), reservation, payment)
        for member, reservation, payment in zip(members, reservations, payments, strict=True)
        if not (reservation.get("split") or payment.get("split"))
    ]
    started = time.time_ns()
    settlements = services.settle_steps(
        p,
        [
            (order, member["epoch"], StepResult.model_validate(r), StepResult.model_validate(c))
            for member, order, r, c in settled
        ],
    )
    for (member, order, _, _), settlement in zip(settled, settlements, strict=True):
        with member_scope(member, self.name, started):
            task_id = f"{self.request.id}:{order.order_id}"
            _compensate(self.app, task_id, order, member["epoch"], settlement)
