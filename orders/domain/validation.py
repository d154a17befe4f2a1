"""Turning a decoded order into a valid :class:`Order`, or saying why it is not one.

Every rule of the contract's ``INVALID_ORDER`` row lives here. The bridge applies
them before it sends a workflow, so an invalid order never reaches a worker, and
the steps receive orders that passed them (there is no validate task).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

from orders.domain import money
from orders.domain.model import Invalid, Order, OrderLine, RawOrder


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on what one order may contain; defaults match the settings' defaults."""

    max_items: int = 1000
    max_id_length: int = 128
    max_quantity: int = 1_000_000


def validate_order(raw: RawOrder, limits: Limits = Limits()) -> Order | Invalid:
    """Apply the contract's rules; the first broken rule is named in ``Invalid.detail``."""
    problem = _check_ids(raw, limits) or _check_items(raw, limits)
    if problem:
        return _invalid(problem)
    try:
        currency = money.normalize_currency(raw.currency)
        lines = tuple(
            OrderLine(
                product_id=item.product_id,
                quantity=item.quantity,
                unit_price_minor=money.to_minor_units(item.unit_price, currency),
            )
            for item in raw.items
        )
        total_minor = money.to_minor_units(raw.total_amount, currency)
    except money.InvalidMoney as exc:
        return _invalid(str(exc))
    expected = sum(line.quantity * line.unit_price_minor for line in lines)
    if expected != total_minor:
        return _invalid(
            f"total_amount {money.format_money(total_minor, currency)} does not match "
            f"the items' sum {money.format_money(expected, currency)}"
        )
    return Order(
        order_id=raw.order_id,
        customer_id=raw.customer_id,
        currency=currency,
        lines=lines,
        total_minor=total_minor,
    )


# A detail travels in an OrderFailed event and in logs: a sentence, never an echo
# of a huge input.
MAX_DETAIL_LENGTH = 300


def _invalid(detail: str) -> Invalid:
    if len(detail) > MAX_DETAIL_LENGTH:
        detail = detail[: MAX_DETAIL_LENGTH - 3] + "..."
    return Invalid(detail=detail)


def unusable_order_id(order_id: str, limits: Limits = Limits()) -> str | None:
    """Why ``order_id`` cannot identify an order, or ``None``.

    Such a message cannot get an outcome event (the id goes into the
    ``Nats-Msg-Id`` header and into storage keys), so it is dead-lettered
    rather than failed: the contract's "no ``order_id``" case, widened to ids
    that are blank, overlong or carry control characters.
    """
    return _check_identifier("order_id", order_id, limits)


def _check_ids(raw: RawOrder, limits: Limits) -> str | None:
    return unusable_order_id(raw.order_id, limits) or _check_identifier(
        "customer_id", raw.customer_id, limits
    )


def _check_items(raw: RawOrder, limits: Limits) -> str | None:
    if not raw.items:
        return "order has no items"
    if len(raw.items) > limits.max_items:
        return f"order has {len(raw.items)} items, above the limit of {limits.max_items}"
    for index, item in enumerate(raw.items):
        if problem := _check_identifier(f"items[{index}].product_id", item.product_id, limits):
            return problem
        if item.quantity < 1:
            return f"items[{index}].quantity is {item.quantity}, must be at least 1"
        if item.quantity > limits.max_quantity:
            return (
                f"items[{index}].quantity is {item.quantity}, "
                f"above the limit of {limits.max_quantity}"
            )
    return None


def _check_identifier(name: str, value: str, limits: Limits) -> str | None:
    if not value.strip():
        return f"{name} is empty"
    if len(value) > limits.max_id_length:
        return f"{name} is {len(value)} characters, above the limit of {limits.max_id_length}"
    # Control and format characters in ids break logs, keys and terminals downstream.
    if any(unicodedata.category(ch)[0] == "C" for ch in value):
        return f"{name} contains control characters"
    return None
