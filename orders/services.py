"""The workflow's steps as plain functions over the ports.

Celery tasks (``orders.tasks``) only decode arguments, call one function here
and encode the result. The order they get is already validated: the bridge
validates every order before it sends a workflow, and finalizes an invalid one
itself. Every step is idempotent per order and epoch: a task
run twice (redelivery after a worker died, a workflow sent again) has the
effect of running once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from orders.adapters.order_state import OrderState
from orders.domain.errors import TransientError
from orders.domain.model import (
    FailureReason,
    Order,
    Outcome,
    Settlement,
    StepResult,
)
from orders.domain.settlement import settle
from orders.domain.validation import Limits
from orders.ports import (
    ChargeRequest,
    ChargeResult,
    Inventory,
    PaymentGateway,
    ReservationRequest,
)

# An order and its epoch, as a batch step takes them.
Placed = tuple[Order, int]


@dataclass(frozen=True, slots=True)
class Pipeline:
    """Everything the steps need, wired once per process by ``orders.bootstrap``."""

    state: OrderState
    inventory: Inventory
    gateway: PaymentGateway
    limits: Limits
    max_worker_losses: int


def charge_key(order_id: str, epoch: int) -> str:
    """The gateway idempotency key: one charge per order and processing epoch."""
    return f"{order_id}:{epoch}"


def reserve_step(p: Pipeline, order: Order, epoch: int) -> StepResult:
    [result] = reserve_steps(p, [(order, epoch)])
    return result


def reserve_steps(p: Pipeline, placed: Sequence[Placed]) -> list[StepResult]:
    """Reserve for every order of a batch in one atomic call, each all or nothing."""
    return p.inventory.reserve_many(
        [ReservationRequest(o.order_id, epoch, o.quantities()) for o, epoch in placed]
    )


def charge_step(p: Pipeline, order: Order, epoch: int) -> StepResult:
    [result] = charge_steps(p, [(order, epoch)])
    if isinstance(result, TransientError):
        raise result
    return result


def charge_steps(p: Pipeline, placed: Sequence[Placed]) -> list[StepResult | TransientError]:
    """Charge every order of a batch (one gateway call where it has a batch API) and
    count the approved charges once each: per order its result, or the transient
    fault that order met (retried on its own)."""
    answers = p.gateway.charge_many(
        [ChargeRequest(charge_key(o.order_id, e), o.total_minor, o.currency) for o, e in placed]
    )
    p.state.count_charges(
        [
            (order.order_id, answer.payment_id)
            for (order, _), answer in zip(placed, answers, strict=True)
            if isinstance(answer, ChargeResult) and answer.approved
        ]
    )
    return [_charge_result(answer) for answer in answers]


def _charge_result(answer: ChargeResult | TransientError) -> StepResult | TransientError:
    if isinstance(answer, TransientError):
        return answer
    if not answer.approved:
        return StepResult.failure(FailureReason.PAYMENT_DECLINED, answer.detail)
    return StepResult.success(payment_id=answer.payment_id)


def settle_step(
    p: Pipeline, order: Order, epoch: int, reservation: StepResult, payment: StepResult
) -> Settlement:
    """Decide the outcome; record it now when nothing needs compensating."""
    [settlement] = settle_steps(p, [(order, epoch, reservation, payment)])
    return settlement


def settle_steps(
    p: Pipeline, steps: Sequence[tuple[Order, int, StepResult, StepResult]]
) -> list[Settlement]:
    """Decide each order's outcome; those that need no compensation are recorded now,
    in one call for the batch."""
    settlements = [settle(order, reservation, payment) for order, _, reservation, payment in steps]
    p.state.finalize_many(
        [
            (epoch, settlement.outcome)
            for (_, epoch, _, _), settlement in zip(steps, settlements, strict=True)
            if not (settlement.release_stock or settlement.refund_payment)
        ]
    )
    return settlements


def release_step(p: Pipeline, order_id: str, epoch: int, quantities: dict[str, int]) -> None:
    p.inventory.release(order_id, epoch, quantities)


def refund_step(p: Pipeline, order_id: str, epoch: int) -> None:
    refunded = p.gateway.refund(charge_key(order_id, epoch))
    if refunded.payment_id:
        # The charge may have gone through with its response lost (never counted):
        # a refund proves it happened, so count both, each once.
        p.state.count_charge(order_id, refunded.payment_id)
        p.state.count_refund(order_id, refunded.payment_id)


def finalize_step(p: Pipeline, epoch: int, outcome: Outcome) -> None:
    p.state.finalize(epoch, outcome)
