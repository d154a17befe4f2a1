"""The ports the workflow steps talk through; adapters live in ``orders.adapters``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from orders.domain.errors import GatewayUnavailable
from orders.domain.model import StepResult


@dataclass(frozen=True, slots=True)
class ChargeResult:
    approved: bool
    payment_id: str = ""
    detail: str = ""


@dataclass(frozen=True, slots=True)
class ChargeRequest:
    idempotency_key: str
    amount_minor: int
    currency: str


@dataclass(frozen=True, slots=True)
class ReservationRequest:
    order_id: str
    epoch: int
    quantities: dict[str, int]


@dataclass(frozen=True, slots=True)
class RefundResult:
    """``payment_id`` is empty when there was nothing to refund (the charge was
    declined, never made, or voided by this refund)."""

    payment_id: str = ""


class PaymentGateway(Protocol):
    def charge(self, idempotency_key: str, amount_minor: int, currency: str) -> ChargeResult:
        """Charge at most once per idempotency key: a repeated call returns the first
        call's result. May raise :class:`~orders.domain.errors.GatewayUnavailable`
        whether or not the charge happened."""
        ...

    def charge_many(
        self, requests: Sequence[ChargeRequest]
    ) -> list[ChargeResult | GatewayUnavailable]:
        """:meth:`charge` for the orders of a batch, in one call where the gateway
        has a batch API: per request its result, or the transient fault that request
        met (the others are not held back by it)."""
        ...

    def refund(self, idempotency_key: str) -> RefundResult:
        """Refund the charge made under this key, at most once. With no charge yet,
        void the key so a late charge under it is refused. May raise
        :class:`~orders.domain.errors.GatewayUnavailable`."""
        ...


class Inventory(Protocol):
    def reserve(self, order_id: str, epoch: int, quantities: dict[str, int]) -> StepResult:
        """Reserve every product or none, atomically, once per order and epoch: a
        repeated call returns the first call's answer and takes no more stock."""
        ...

    def reserve_many(self, requests: Sequence[ReservationRequest]) -> list[StepResult]:
        """:meth:`reserve` for the orders of a batch, in one atomic step: each order
        still takes all of its stock or none, in the order given."""
        ...

    def release(self, order_id: str, epoch: int, quantities: dict[str, int]) -> bool:
        """Give reserved stock back once; with no reservation yet, block a late one in
        this epoch. Returns whether stock was given back now."""
        ...

    def set_stock(self, sku: str, quantity: int) -> None: ...

    def available(self, skus: list[str]) -> dict[str, int]: ...
