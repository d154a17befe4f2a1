"""The protobuf wire format by hand, for tests that must not trust generated code:
an outside producer knows only the ``.proto``, and so do these encoders."""

from __future__ import annotations

import struct

VARINT, FIXED64, LENGTH_DELIMITED, FIXED32 = 0, 1, 2, 5


def varint(value: int) -> bytes:
    # Negative int32 values are sign-extended to 64 bits on the wire (10 bytes).
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def tag(field: int, wire_type: int) -> bytes:
    return varint(field << 3 | wire_type)


def field(number: int, wire_type: int, payload: bytes) -> bytes:
    """A field whose payload is already encoded (a length prefix is added if needed)."""
    if wire_type == LENGTH_DELIMITED:
        return tag(number, wire_type) + varint(len(payload)) + payload
    return tag(number, wire_type) + payload


def length_delimited(number: int, payload: bytes) -> bytes:
    return field(number, LENGTH_DELIMITED, payload)


def string(number: int, text: str) -> bytes:
    return length_delimited(number, text.encode())


def fixed64_double(number: int, value: float) -> bytes:
    return field(number, FIXED64, struct.pack("<d", value))


def varint_field(number: int, value: int) -> bytes:
    return field(number, VARINT, varint(value))


def order_created(
    order_id: str,
    customer_id: str,
    items: list[tuple[str, int, float]],
    total_amount: float,
    currency: str = "",
) -> bytes:
    """``OrderCreated`` as a proto3 producer writes it: default values are omitted."""

    def item(product_id: str, quantity: int, unit_price: float) -> bytes:
        return (
            (string(1, product_id) if product_id else b"")
            + (varint_field(2, quantity) if quantity else b"")
            + (fixed64_double(3, unit_price) if unit_price else b"")
        )

    return (
        (string(1, order_id) if order_id else b"")
        + (string(2, customer_id) if customer_id else b"")
        + b"".join(length_delimited(3, item(*i)) for i in items)
        + (fixed64_double(4, total_amount) if total_amount else b"")
        + (string(5, currency) if currency else b"")
    )
