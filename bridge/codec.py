"""The protobuf boundary: wire bytes <-> the domain's typed models.

The only module that imports generated protobuf code, so a schema change or a
protobuf upgrade touches one file, and everything past the bridge's entry
point works with :class:`~orders.domain.model.RawOrder` and
:class:`~orders.domain.model.Outcome`. Messages are those of
``proto/orders/v1/orders.proto`` (the external contract).
"""

from __future__ import annotations

from google.protobuf.message import DecodeError

from bridge.pb.orders.v1 import orders_pb2
from orders.domain import money
from orders.domain.model import Outcome, OutcomeKind, RawItem, RawOrder
from relay.application import Poison


class PoisonMessage(Poison):
    """A message that can never be processed, whatever the number of retries.

    The bridge dead-letters it instead of producing an outcome. ``reason``
    names the problem in a sentence an operator can act on; it is sent as the
    ``Orders-Dlq-Reason`` header.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def decode_order_created(data: bytes, *, max_bytes: int) -> RawOrder:
    """Decode an ``OrderCreated`` into a :class:`RawOrder`, with every field copied.

    No business rule is applied here: an empty ``currency`` stays ``""`` (the
    domain decides it means USD), amounts stay the producer's doubles, and
    unknown fields are ignored so newer producers stay compatible.

    Guarantees that the only exception raised is :class:`PoisonMessage`, for:
    a message above ``max_bytes`` (checked before parsing, so a huge message
    costs no parsing), bytes protobuf cannot parse (including invalid UTF-8 in
    a string field), or an empty ``order_id`` (no order to report an outcome for).
    """
    if len(data) > max_bytes:
        raise PoisonMessage(f"message is {len(data)} bytes, above the {max_bytes}-byte limit")
    message = orders_pb2.OrderCreated()
    try:
        message.ParseFromString(data)
    except DecodeError as error:
        raise PoisonMessage(f"undecodable OrderCreated: {error}") from error
    if not message.order_id:
        raise PoisonMessage("missing order_id")
    return RawOrder(
        order_id=message.order_id,
        customer_id=message.customer_id,
        items=tuple(
            RawItem(product_id=item.product_id, quantity=item.quantity, unit_price=item.unit_price)
            for item in message.items
        ),
        total_amount=message.total_amount,
        currency=message.currency,
    )


def encode_order_created(order: RawOrder) -> bytes:
    """Encode ``order`` as an ``OrderCreated`` (for producers, the CLI and tests).

    ``decode_order_created(encode_order_created(o), ...) == o`` for any order with a
    non-empty ``order_id`` and quantities in int32 range.

    Raises:
        ValueError: a quantity does not fit the wire's int32.
    """
    message = orders_pb2.OrderCreated(
        order_id=order.order_id,
        customer_id=order.customer_id,
        items=[
            orders_pb2.OrderItem(
                product_id=item.product_id, quantity=item.quantity, unit_price=item.unit_price
            )
            for item in order.items
        ],
        total_amount=order.total_amount,
        currency=order.currency,
    )
    return message.SerializeToString()


def encode_outcome(outcome: Outcome) -> bytes:
    """Encode ``outcome`` as the contract's outcome event.

    ``OrderCompleted`` for :attr:`OutcomeKind.COMPLETED`, its total converted back
    to the double major units the contract carries; ``OrderFailed`` otherwise,
    with the reason's contract name (``OUT_OF_STOCK``, ...).

    Raises:
        ValueError: a failed outcome without a reason (a bug upstream; publishing
            it would break the contract's reason enumeration).
        money.InvalidMoney: a completed outcome in an unknown currency.
    """
    if outcome.kind is OutcomeKind.COMPLETED:
        return orders_pb2.OrderCompleted(
            order_id=outcome.order_id,
            payment_id=outcome.payment_id,
            total_amount=money.to_major_units(outcome.total_minor, outcome.currency),
            currency=outcome.currency,
        ).SerializeToString()
    if outcome.reason is None:
        raise ValueError(f"failed outcome for order {outcome.order_id!r} has no reason")
    return orders_pb2.OrderFailed(
        order_id=outcome.order_id,
        reason=outcome.reason.value,
        detail=outcome.detail,
    ).SerializeToString()


def decode_outcome(subject_kind: OutcomeKind, data: bytes) -> dict[str, str | float]:
    """Decode an outcome event into its plain fields, for display (CLI, tests).

    ``subject_kind`` says which message the bytes are (the subject's suffix):
    ``OrderCompleted`` gives ``order_id``, ``payment_id``, ``total_amount`` and
    ``currency``; ``OrderFailed`` gives ``order_id``, ``reason`` and ``detail``.

    Raises:
        PoisonMessage: the bytes cannot be parsed as that message.
    """
    if subject_kind is OutcomeKind.COMPLETED:
        completed = orders_pb2.OrderCompleted()
        _parse(completed, data, "OrderCompleted")
        return {
            "order_id": completed.order_id,
            "payment_id": completed.payment_id,
            "total_amount": completed.total_amount,
            "currency": completed.currency,
        }
    failed = orders_pb2.OrderFailed()
    _parse(failed, data, "OrderFailed")
    return {"order_id": failed.order_id, "reason": failed.reason, "detail": failed.detail}


def _parse(
    message: orders_pb2.OrderCompleted | orders_pb2.OrderFailed, data: bytes, name: str
) -> None:
    try:
        message.ParseFromString(data)
    except DecodeError as error:
        raise PoisonMessage(f"undecodable {name}: {error}") from error
