"""The chord callback's decision table."""

import pytest

from orders.domain.model import FailureReason, Order, OrderLine, OutcomeKind, StepResult
from orders.domain.settlement import settle

pytestmark = pytest.mark.unit

ORDER = Order(
    order_id="o-1",
    customer_id="c-1",
    currency="USD",
    lines=(OrderLine(product_id="a", quantity=1, unit_price_minor=500),),
    total_minor=500,
)
RESERVED = StepResult.success()
CHARGED = StepResult.success(payment_id="pay_1")
NO_STOCK = StepResult.failure(FailureReason.OUT_OF_STOCK, "a: requested 1, available 0")
DECLINED = StepResult.failure(FailureReason.PAYMENT_DECLINED, "above limit")


def test_both_succeed_completes_without_compensation() -> None:
    s = settle(ORDER, RESERVED, CHARGED)
    assert s.outcome.kind is OutcomeKind.COMPLETED
    assert (s.outcome.payment_id, s.outcome.total_minor, s.outcome.currency) == (
        "pay_1",
        500,
        "USD",
    )
    assert not s.release_stock and not s.refund_payment


def test_out_of_stock_refunds_the_charge() -> None:
    s = settle(ORDER, NO_STOCK, CHARGED)
    assert s.outcome.reason is FailureReason.OUT_OF_STOCK
    assert s.refund_payment and not s.release_stock


def test_declined_releases_the_stock() -> None:
    s = settle(ORDER, RESERVED, DECLINED)
    assert s.outcome.reason is FailureReason.PAYMENT_DECLINED
    assert s.release_stock and not s.refund_payment


def test_both_failing_reports_stock_first_and_compensates_nothing() -> None:
    s = settle(ORDER, NO_STOCK, DECLINED)
    assert s.outcome.reason is FailureReason.OUT_OF_STOCK
    assert not s.release_stock and not s.refund_payment
