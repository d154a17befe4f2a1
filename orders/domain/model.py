"""The order domain: typed values with money as integer minor units.

Pure: imports nothing but the standard library and pydantic, so every rule
here is testable without a broker, a database or a wire format.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict


class FailureReason(StrEnum):
    """Business failures: outcomes of the order, never retried."""

    OUT_OF_STOCK = "OUT_OF_STOCK"
    PAYMENT_DECLINED = "PAYMENT_DECLINED"
    INVALID_ORDER = "INVALID_ORDER"


class OrderStatus(StrEnum):
    RECEIVED = "RECEIVED"
    PROCESSING = "PROCESSING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


class OutcomeKind(StrEnum):
    """The two outcome events; the value is the suffix of subject and message id."""

    COMPLETED = "completed"
    FAILED = "failed"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class _Raw(_Frozen):
    # A raw order is stored as JSON (the first version of an order id is kept) and
    # may hold NaN or infinity, which must survive the round trip to be rejected
    # for what they are.
    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="constants")


class RawItem(_Raw):
    """An item as decoded from the wire, before any rule is applied."""

    product_id: str
    quantity: int
    unit_price: float


class RawOrder(_Raw):
    """An ``OrderCreated`` as decoded from the wire, before validation.

    Amounts are still the producer's floating-point major units; only
    :func:`orders.domain.validation.validate_order` turns this into an :class:`Order`.
    """

    order_id: str
    customer_id: str
    items: tuple[RawItem, ...]
    total_amount: float
    currency: str


class OrderLine(_Frozen):
    product_id: str
    quantity: int
    unit_price_minor: int


class Order(_Frozen):
    """A valid order: every invariant of the contract holds.

    ``total_minor`` equals the sum of ``quantity * unit_price_minor``.
    """

    order_id: str
    customer_id: str
    currency: str
    lines: tuple[OrderLine, ...]
    total_minor: int

    def quantities(self) -> dict[str, int]:
        """Quantity per product, summed over lines that repeat a product."""
        wanted: dict[str, int] = {}
        for line in self.lines:
            wanted[line.product_id] = wanted.get(line.product_id, 0) + line.quantity
        return wanted


class Invalid(_Frozen):
    """Why a decoded order cannot be processed (an ``INVALID_ORDER`` outcome)."""

    detail: str


class StepResult(_Frozen):
    """What a workflow step returns. Business failures are values, not exceptions,
    so the chord callback always runs and can compensate."""

    ok: bool
    reason: FailureReason | None = None
    detail: str = ""
    payment_id: str | None = None

    @classmethod
    def success(cls, payment_id: str | None = None) -> StepResult:
        return cls(ok=True, payment_id=payment_id)

    @classmethod
    def failure(cls, reason: FailureReason, detail: str) -> StepResult:
        return cls(ok=False, reason=reason, detail=detail)


class Outcome(_Frozen):
    """How an order ended; becomes ``OrderCompleted`` or ``OrderFailed``."""

    order_id: str
    kind: OutcomeKind
    reason: FailureReason | None = None
    detail: str = ""
    payment_id: str = ""
    total_minor: int = 0
    currency: str = ""

    @property
    def status(self) -> OrderStatus:
        return OrderStatus.COMPLETED if self.kind is OutcomeKind.COMPLETED else OrderStatus.FAILED


class Settlement(_Frozen):
    """The chord callback's decision: the outcome and the compensations it needs."""

    outcome: Outcome
    release_stock: bool
    refund_payment: bool
