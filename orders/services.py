"""The workflow's steps as plain functions over the ports.

Celery tasks (``orders.tasks``) only decode arguments, call one function here
and encode the result. The order they get is already validated: the bridge
validates every order before it sends a workflow, and finalizes an invalid one
itself. Every step is idempotent per order and epoch: a task
run twice (redelivery after a worker died, a workflow sent again) has the
effect of running once.
"""

from __future__ import annotations

from dataclasses import dataclass

from orders.adapters.order_state import OrderState
from orders.domain.model import (
    FailureReason,
    Order,
    Outcome,
    Settlement,
    StepResult,
)
from orders.domain.settlement import settle
from orders.domain.validation import Limits
from orders.ports import Inventory, PaymentGateway


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
    return p.inventory.reserve(order.order_id, epoch, order.quantities())


def charge_step(p: Pipeline, order: Order, epoch: int) -> StepResult:
    result = p.gateway.charge(charge_key(order.order_id, epoch), order.total_minor, order.currency)
    if not result.approved:
        return StepResult.failure(FailureReason.PAYMENT_DECLINED, result.detail)
    p.state.count_charge(order.order_id, result.payment_id)
    return StepResult.success(payment_id=result.payment_id)


def settle_step(
    p: Pipeline, order: Order, epoch: int, reservation: StepResult, payment: StepResult
) -> Settlement:
    """Decide the outcome; record it now when nothing needs compensating."""
    settlement = settle(order, reservation, payment)
    if not (settlement.release_stock or settlement.refund_payment):
        p.state.finalize(epoch, settlement.outcome)
    return settlement


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
