"""The chord callback's rule: from the reservation and the charge to one outcome.

Pure. Stock is checked first, so an order that is both out of stock and
declined fails as ``OUT_OF_STOCK``; whichever side succeeded is compensated.
"""

from __future__ import annotations

from orders.domain.model import (
    FailureReason,
    Order,
    Outcome,
    OutcomeKind,
    Settlement,
    StepResult,
)


def settle(order: Order, reservation: StepResult, payment: StepResult) -> Settlement:
    if reservation.ok and payment.ok:
        return Settlement(
            outcome=Outcome(
                order_id=order.order_id,
                kind=OutcomeKind.COMPLETED,
                payment_id=payment.payment_id or "",
                total_minor=order.total_minor,
                currency=order.currency,
            ),
            release_stock=False,
            refund_payment=False,
        )
    failed = reservation if not reservation.ok else payment
    return Settlement(
        outcome=failed_outcome(
            order.order_id, failed.reason or FailureReason.INVALID_ORDER, failed.detail
        ),
        release_stock=reservation.ok,
        refund_payment=payment.ok,
    )


def failed_outcome(order_id: str, reason: FailureReason, detail: str) -> Outcome:
    return Outcome(order_id=order_id, kind=OutcomeKind.FAILED, reason=reason, detail=detail)
