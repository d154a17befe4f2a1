"""``OrderCreated`` messages for the tests that drive the whole pipeline: an order
from a list of items, and its wire form encoded without the bridge's codec.

A module of its own (``tests`` is on the import path), not a test module: the e2e
tests and the fault harness both build their orders with it.
"""

from __future__ import annotations

import math

import protowire

from orders.domain.model import RawItem, RawOrder


def order(
    order_id: str,
    items: list[tuple[str, int, float]],
    *,
    total: float | None = None,
    customer_id: str = "customer-1",
    currency: str = "USD",
) -> RawOrder:
    """An ``OrderCreated``; ``total`` defaults to the items' sum (:func:`items_total`)."""
    return RawOrder(
        order_id=order_id,
        customer_id=customer_id,
        items=tuple(RawItem(product_id=p, quantity=q, unit_price=u) for p, q, u in items),
        total_amount=items_total(items) if total is None else total,
        currency=currency,
    )


def items_total(items: list[tuple[str, int, float]]) -> float:
    """What ``(product, quantity, unit price)`` items add up to, in cents (so 3 x 19.99
    is 59.97, not 59.970000000000006); a price that is not finite adds nothing."""
    cents = sum(qty * round(price * 100) for _, qty, price in items if math.isfinite(price))
    return cents / 100


def encode_order_created_by_hand(o: RawOrder) -> bytes:
    """The wire form written field by field (:mod:`protowire`), so that what the
    pipeline decodes was not produced by its own encoder; invalid orders too."""
    return protowire.order_created(
        o.order_id,
        o.customer_id,
        [(i.product_id, i.quantity, i.unit_price) for i in o.items],
        o.total_amount,
        o.currency,
    )
