"""Hostile input at the bridge's door: whatever the bytes, the bridge's verdict is
exactly one of poison (dead-lettered, with a reason), ``INVALID_ORDER`` (with a
detail naming the problem) or a valid :class:`Order` whose every invariant holds.

:func:`classify` is the bridge's decode-and-classify path
(``OrderProcessor._decode`` then the verdict of ``_process``) as one pure
function, built from the same functions the processor calls, so the rules are
exercised, not restated. Messages are built with the generated protobuf code
(any value, int32 extremes included) or by hand from the wire format when the
generated code cannot express the damage (wrong wire types, truncation).
"""

from __future__ import annotations

import math
import struct
import unicodedata
from dataclasses import dataclass
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from protowire import field, varint

from bridge import codec
from bridge.pb.orders.v1 import orders_pb2
from bridge.settings import BridgeSettings
from orders.bootstrap import limits as limits_from_settings
from orders.domain import money
from orders.domain.model import Invalid, Order, RawOrder
from orders.domain.validation import Limits, unusable_order_id, validate_order

pytestmark = pytest.mark.unit

# The defaults, without reading this shell's environment.
DEFAULTS = BridgeSettings.model_construct()
LIMITS = limits_from_settings(DEFAULTS)
MAX_BYTES = DEFAULTS.max_message_bytes
# Small limits so that the boundaries are reached by cheap examples too.
TIGHT = Limits(max_items=5, max_id_length=12, max_quantity=100)

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
# NATS's default max_payload: an outcome event must fit in it to be published.
NATS_MAX_PAYLOAD = 1_048_576
# Reasons and details travel in headers, events and logs: sentences, not echoes.
MAX_TEXT = 1024

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --- the bridge's classification ---------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    kind: str  # "poison" | "invalid" | "valid"
    text: str = ""  # the dead-letter reason or the INVALID_ORDER detail
    raw: RawOrder | None = None
    order: Order | None = None


def classify(data: bytes, limits: Limits = LIMITS, max_bytes: int = MAX_BYTES) -> Verdict:
    """What the bridge decides for one delivery, before any Redis or NATS effect."""
    try:
        raw = codec.decode_order_created(data, max_bytes=max_bytes)
        if problem := unusable_order_id(raw.order_id, limits):
            raise codec.PoisonMessage(problem)
    except codec.PoisonMessage as exc:
        return Verdict("poison", exc.reason)
    verdict = validate_order(raw, limits)
    if isinstance(verdict, Invalid):
        return Verdict("invalid", verdict.detail, raw=raw)
    return Verdict("valid", raw=raw, order=verdict)


def _usable_id(value: str, limits: Limits) -> bool:
    return (
        bool(value.strip())
        and len(value) <= limits.max_id_length
        and not any(unicodedata.category(ch).startswith("C") for ch in value)
    )


def _within_tolerance(amount: float, minor: int, currency: str) -> bool:
    scaled = Fraction(amount) * 10 ** money.exponent(currency)
    return abs(scaled - minor) <= money.TOLERANCE_MINOR


def assert_well_classified(
    data: bytes, limits: Limits = LIMITS, max_bytes: int = MAX_BYTES
) -> Verdict:
    """The property: one of the three verdicts, each with what it promises."""
    verdict = classify(data, limits, max_bytes)  # any other exception fails the test
    if verdict.kind == "poison":
        assert isinstance(verdict.text, str) and verdict.text.strip(), verdict
        assert len(verdict.text) <= MAX_TEXT, "a reason is a sentence, not an echo of the input"
        # It becomes the Orders-Dlq-Reason header: one line.
        assert "\r" not in verdict.text and "\n" not in verdict.text, verdict
        return verdict
    assert verdict.raw is not None
    assert _usable_id(verdict.raw.order_id, limits), "an unusable order_id got past decoding"
    if verdict.kind == "invalid":
        assert isinstance(verdict.text, str) and verdict.text.strip(), verdict
        assert len(verdict.text) <= MAX_TEXT, "a detail is a sentence, not an echo of the input"
        return verdict
    assert verdict.kind == "valid"
    assert_valid_order(verdict.raw, verdict.order, limits)
    return verdict


def assert_valid_order(raw: RawOrder, order: Order | None, limits: Limits) -> None:
    """A valid Order never carries bad data: every field within limits, money exact."""
    assert isinstance(order, Order)
    assert order.order_id == raw.order_id and order.customer_id == raw.customer_id
    assert _usable_id(order.order_id, limits), order.order_id
    assert _usable_id(order.customer_id, limits), order.customer_id
    assert order.currency in money.MINOR_UNIT_EXPONENTS
    assert order.currency == (raw.currency or money.DEFAULT_CURRENCY)
    assert 1 <= len(order.lines) <= limits.max_items
    assert len(order.lines) == len(raw.items)
    for line, item in zip(order.lines, raw.items, strict=True):
        assert line.product_id == item.product_id and _usable_id(line.product_id, limits)
        assert line.quantity == item.quantity
        assert 1 <= line.quantity <= limits.max_quantity
        assert 0 <= line.unit_price_minor <= money.MAX_MINOR
        assert math.isfinite(item.unit_price)
        assert _within_tolerance(item.unit_price, line.unit_price_minor, order.currency)
    assert order.total_minor == sum(line.quantity * line.unit_price_minor for line in order.lines)
    assert 0 <= order.total_minor <= money.MAX_MINOR
    assert math.isfinite(raw.total_amount)
    assert _within_tolerance(raw.total_amount, order.total_minor, order.currency)


def assert_invalid(data: bytes, *words: str, limits: Limits = LIMITS) -> str:
    verdict = assert_well_classified(data, limits)
    assert verdict.kind == "invalid", verdict
    for word in words:
        assert word in verdict.text, (word, verdict.text)
    return verdict.text


def assert_poison(data: bytes, *words: str, limits: Limits = LIMITS, **kw: int) -> str:
    verdict = assert_well_classified(data, limits, **kw)
    assert verdict.kind == "poison", verdict
    for word in words:
        assert word in verdict.text, (word, verdict.text)
    return verdict.text


# --- building messages ---------------------------------------------------------------


def message(
    order_id: str = "order-1",
    customer_id: str = "customer-1",
    items: list[tuple[str, int, float]] | None = None,
    total: float | None = None,
    currency: str = "USD",
) -> orders_pb2.OrderCreated:
    """An ``OrderCreated``; ``total`` defaults to the exact sum of the items."""
    if items is None:
        items = [("sku-1", 2, 9.99), ("sku-2", 1, 0.02)]
    if total is None:
        exp = money.exponent(currency or money.DEFAULT_CURRENCY)
        minor = sum(q * round(Fraction(p) * 10**exp) for _, q, p in items)
        total = minor / 10**exp
    return orders_pb2.OrderCreated(
        order_id=order_id,
        customer_id=customer_id,
        items=[orders_pb2.OrderItem(product_id=p, quantity=q, unit_price=u) for p, q, u in items],
        total_amount=total,
        currency=currency,
    )


def wire(msg: orders_pb2.OrderCreated) -> bytes:
    return msg.SerializeToString()


CURRENCIES = sorted(money.MINOR_UNIT_EXPONENTS)


# Minor amounts a producer would send, as the doubles they become.
def _major(minor: int, currency: str) -> float:
    return minor / 10 ** money.exponent(currency)


good_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,11}", fullmatch=True)
nasty_ids = st.one_of(
    good_ids,
    st.text(max_size=20),
    st.text(st.characters(categories=["Cc", "Cf", "Co", "Cn", "Zs", "Zl", "Zp"]), max_size=6),
    st.builds(
        lambda a, c, b: a + c + b,
        good_ids,
        st.sampled_from(["\x00", "\n", "\r", "\x1b", "\x7f", "\x85", "\u200b", "\u2028", "\ufeff"]),
        good_ids,
    ),
    st.sampled_from(["", " ", "\t", "\u3000", "x" * 129, "é" * 128, "😀" * 64]),
)
nasty_quantities = st.one_of(
    st.integers(INT32_MIN, INT32_MAX),
    st.sampled_from(
        [INT32_MIN, -1, 0, 1, 100, 101, 1_000_000, 1_000_001, INT32_MAX, INT32_MAX - 1]
    ),
)
nasty_prices = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(
        [
            math.nan,
            -math.nan,
            math.inf,
            -math.inf,
            0.0,
            -0.0,
            -0.01,
            5e-324,
            1e-7,
            0.005,
            19.995,
            2.0**53,
            2.0**53 / 100,
            1e15,
            1e300,
            1.7976931348623157e308,
        ]
    ),
    st.integers(0, 10**9).map(lambda minor: minor / 100),
)
nasty_currencies = st.one_of(
    st.sampled_from([*CURRENCIES, "", "usd", "XAU", "BGN", "ZZZ", "US", "USDD", " USD"]),
    st.text(max_size=5),
)


@st.composite
def nasty_messages(draw: st.DrawFn) -> orders_pb2.OrderCreated:
    """Decodable messages with any value in any field."""
    currency = draw(nasty_currencies)
    items = draw(
        st.lists(st.tuples(nasty_ids, nasty_quantities, nasty_prices), min_size=0, max_size=8)
    )
    consistent = currency in ("", *CURRENCIES) and all(
        math.isfinite(p) and 0 <= p < 1e12 for _, _, p in items
    )
    total = None if consistent and draw(st.booleans()) else draw(nasty_prices)
    return message(draw(nasty_ids), draw(nasty_ids), items, total, currency)


# A double names every whole number of minor units up to here within the contract's
# 1e-6 tolerance in every currency (CLF's 4 decimals are the tightest), so orders up
# to it are valid when on the grid. Larger amounts are checked by the other tests.
EXACT_TOTAL_MINOR = 10**9


@st.composite
def valid_messages(draw: st.DrawFn, limits: Limits = LIMITS) -> orders_pb2.OrderCreated:
    """Messages that must be valid: on-grid prices, consistent total, ids in limits."""
    currency = draw(st.sampled_from(["", *CURRENCIES]))
    code = currency or money.DEFAULT_CURRENCY
    count = draw(st.integers(1, min(limits.max_items, 6)))
    items = []
    for _ in range(count):
        quantity = draw(st.integers(1, limits.max_quantity))
        price_minor = draw(st.integers(0, EXACT_TOTAL_MINOR // (count * quantity)))
        items.append((draw(good_ids), quantity, _major(price_minor, code)))
    return message(draw(good_ids), draw(good_ids), items, None, currency)


# --- the property, over every kind of input ---------------------------------------------


@FUZZ
@given(st.binary(max_size=512))
def test_random_bytes_are_classified(data: bytes) -> None:
    assert_well_classified(data)
    assert_well_classified(data, TIGHT)


@FUZZ
@given(nasty_messages())
def test_decodable_messages_with_any_values_are_classified(msg: orders_pb2.OrderCreated) -> None:
    data = wire(msg)
    assert_well_classified(data)
    verdict = assert_well_classified(data, TIGHT)
    if not _usable_id(msg.order_id, TIGHT):
        assert verdict.kind == "poison" and "order_id" in verdict.text, verdict


@FUZZ
@given(valid_messages(), st.data())
def test_truncated_messages_are_classified(
    msg: orders_pb2.OrderCreated, data: st.DataObject
) -> None:
    whole = wire(msg)
    assert assert_well_classified(whole).kind == "valid"
    cut = data.draw(st.integers(0, len(whole) - 1), label="cut")
    assert_well_classified(whole[:cut])


@FUZZ
@given(valid_messages(), st.data())
def test_mutated_messages_are_classified(msg: orders_pb2.OrderCreated, data: st.DataObject) -> None:
    damaged = bytearray(wire(msg))
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        position = data.draw(st.integers(0, len(damaged) - 1), label="position")
        damaged[position] = data.draw(st.integers(0, 255), label="byte")
    assert_well_classified(bytes(damaged))


@FUZZ
@given(valid_messages(TIGHT))
def test_valid_messages_are_valid(msg: orders_pb2.OrderCreated) -> None:
    assert assert_well_classified(wire(msg), TIGHT).kind == "valid"


# --- wrong wire types ----------------------------------------------------------------------


def _payload(wire_type: int, value: int) -> bytes:
    if wire_type == 0:
        return varint(value)
    if wire_type == 1:
        return struct.pack("<Q", value & (2**64 - 1))
    if wire_type == 5:
        return struct.pack("<I", value & (2**32 - 1))
    return varint(value)[:3]  # length-delimited, or a group start/end with junk after it


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.integers(1, 6),  # field number (6 is unknown: must be skipped)
            st.sampled_from([0, 1, 2, 3, 4, 5]),
            st.integers(0, 2**64 - 1),
            st.lists(  # for field 3, an OrderItem with its own wrong types
                st.tuples(
                    st.integers(1, 4), st.sampled_from([0, 1, 2, 5]), st.integers(0, 2**64 - 1)
                ),
                max_size=4,
            ),
        ),
        max_size=8,
    ),
    st.booleans(),
)
def test_fields_with_wrong_wire_types_are_classified(
    fields: list[tuple[int, int, int, list[tuple[int, int, int]]]], with_order_id: bool
) -> None:
    data = wire(message()) if with_order_id else b""
    for number, wire_type, value, item_fields in fields:
        if number == 3 and wire_type == 2:
            item = b"".join(field(n, t, _payload(t, v)) for n, t, v in item_fields)
            data += field(number, 2, item)
        else:
            data += field(number, wire_type, _payload(wire_type, value))
    assert_well_classified(data)


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        pytest.param(field(1, 0, varint(7)), "poison", id="order_id-as-varint"),
        pytest.param(field(1, 1, b"\0" * 8), "poison", id="order_id-as-fixed64"),
        pytest.param(field(1, 5, b"\0" * 4), "poison", id="order_id-as-fixed32"),
        pytest.param(field(1, 2, b"\xff\xfe"), "poison", id="order_id-bad-utf8"),
        pytest.param(field(1, 3, b""), "poison", id="order_id-as-open-group"),
        pytest.param(b"\x0b" * 200 + b"\x0c" * 200, "poison", id="deeply-nested-groups"),
        pytest.param(field(1, 2, b"o") + field(3, 0, varint(5)), "invalid", id="items-varint"),
        pytest.param(
            field(1, 2, b"o") + field(3, 2, field(2, 1, b"\0" * 8)), "invalid", id="qty-double"
        ),
        pytest.param(field(1, 2, b"o") + field(3, 2, b"\x0a\x05ab"), "poison", id="item-cut-short"),
        pytest.param(field(1, 2, b"o") + b"\x80" * 11, "poison", id="overlong-varint"),
    ],
)
def test_known_wire_damage(data: bytes, kind: str) -> None:
    assert assert_well_classified(data).kind == kind


# --- oversized messages ---------------------------------------------------------------------


@FUZZ
@given(st.integers(64, 4096), st.binary(min_size=1, max_size=64))
def test_a_message_above_the_limit_is_poison_whatever_it_holds(limit: int, tail: bytes) -> None:
    data = wire(message(customer_id="c" * limit)) + tail
    assume(len(data) > limit)
    assert_poison(data, "bytes", str(limit), max_bytes=limit)


def _padded(size: int) -> bytes:
    """A valid message padded to exactly ``size`` bytes with an unknown field."""
    base = wire(message())
    pad = size - len(base) - 4  # tag (1 byte) + length varint (3 bytes)
    data = base + field(6, 2, b"p" * pad)
    assert len(data) == size
    return data


def test_a_valid_message_at_the_default_limit_is_valid_and_one_byte_more_is_poison() -> None:
    assert assert_well_classified(_padded(MAX_BYTES)).kind == "valid"
    assert_poison(_padded(MAX_BYTES + 1), "bytes", str(MAX_BYTES))


# --- ids with unicode and control characters ----------------------------------------------

CONTROL = st.characters(categories=["Cc", "Cf", "Co", "Cn"])


@FUZZ
@given(good_ids, CONTROL, good_ids, st.sampled_from(["order_id", "customer_id", "product_id"]))
def test_control_characters_in_ids_never_pass(
    head: str, bad: str, tail: str, field_name: str
) -> None:
    value = (head + bad + tail)[: LIMITS.max_id_length]
    assume(bad in value)
    if field_name == "order_id":
        assert_poison(wire(message(order_id=value)), "order_id", "control")
    elif field_name == "customer_id":
        assert_invalid(wire(message(customer_id=value)), "customer_id", "control")
    else:
        data = wire(message(items=[("sku-1", 1, 1.0), (value, 1, 1.0)]))
        assert_invalid(data, "items[1].product_id", "control")


@FUZZ
@given(st.text(st.characters(categories=["L", "M", "N", "P", "S"]), min_size=1, max_size=40))
def test_printable_unicode_ids_are_accepted_when_short_enough(value: str) -> None:
    data = wire(message(order_id=value, customer_id=value, items=[(value, 1, 2.5)]))
    verdict = assert_well_classified(data)
    if len(value) <= LIMITS.max_id_length:
        assert verdict.kind == "valid", verdict


@pytest.mark.parametrize("blank", ["", " ", "\t", "\u3000", "\u2028"])
def test_blank_ids(blank: str) -> None:
    assert_poison(wire(message(order_id=blank)), "order_id")
    assert_invalid(wire(message(customer_id=blank)), "customer_id", "empty")
    assert_invalid(wire(message(items=[(blank, 1, 1.0)])), "product_id", "empty")


def test_overlong_ids() -> None:
    long_id = "x" * (LIMITS.max_id_length + 1)
    assert_poison(wire(message(order_id=long_id)), "order_id", str(LIMITS.max_id_length))
    assert_invalid(wire(message(customer_id=long_id)), "customer_id", str(LIMITS.max_id_length))
    just = "é" * LIMITS.max_id_length  # the limit counts characters, not bytes
    assert assert_well_classified(wire(message(order_id=just, customer_id=just))).kind == "valid"


# --- quantities and prices -----------------------------------------------------------------


@FUZZ
@given(valid_messages(), st.data(), nasty_quantities)
def test_a_quantity_out_of_range_is_invalid(
    msg: orders_pb2.OrderCreated, data: st.DataObject, quantity: int
) -> None:
    index = data.draw(st.integers(0, len(msg.items) - 1), label="index")
    msg.items[index].quantity = quantity
    payload = wire(msg)
    if quantity < 1:
        assert_invalid(payload, f"items[{index}].quantity", "at least 1")
    elif quantity > LIMITS.max_quantity:
        assert_invalid(payload, f"items[{index}].quantity", str(LIMITS.max_quantity))
    else:
        assert_well_classified(payload)  # only the total may now be wrong


NON_FINITE = {"nan": "NaN", "inf": "infinite", "-inf": "infinite"}


@FUZZ
@given(
    valid_messages(),
    st.data(),
    st.sampled_from(["nan", "inf", "-inf", "negative", "huge", "off-grid"]),
    st.booleans(),
)
def test_a_bad_amount_is_invalid_and_named(
    msg: orders_pb2.OrderCreated, data: st.DataObject, kind: str, in_total: bool
) -> None:
    code = msg.currency or money.DEFAULT_CURRENCY
    exp = money.exponent(code)
    if kind in NON_FINITE:
        value, words = float(kind), [NON_FINITE[kind]]
    elif kind == "negative":
        value = -data.draw(st.floats(min_value=5e-324, max_value=1e300), label="magnitude")
        words = ["negative"]
    elif kind == "huge":
        value = data.draw(st.floats(min_value=2.0**53 / 10**exp * 1.01, max_value=1e308))
        words = ["too large"]
    else:
        minor = data.draw(st.integers(0, 10**6), label="minor")
        value = (minor + 0.5) / 10**exp
        words = ["not a whole number of minor units"]
    if in_total:
        msg.total_amount = value
    else:
        msg.items[data.draw(st.integers(0, len(msg.items) - 1), label="index")].unit_price = value
    detail = assert_invalid(wire(msg), *words)
    assert code in detail


@FUZZ
@given(valid_messages(), st.integers(-(10**6), 10**6).filter(bool))
def test_a_total_that_does_not_match_is_invalid(msg: orders_pb2.OrderCreated, delta: int) -> None:
    code = msg.currency or money.DEFAULT_CURRENCY
    exp = money.exponent(code)
    total_minor = round(Fraction(msg.total_amount) * 10**exp)
    assume(total_minor + delta >= 0)
    msg.total_amount = (total_minor + delta) / 10**exp
    assert_invalid(wire(msg), "does not match", code)


@pytest.mark.parametrize(
    ("items", "total", "words"),
    [
        pytest.param([("a", INT32_MAX, 1.0)], float(INT32_MAX), ["quantity"], id="int32-max"),
        pytest.param([("a", INT32_MIN, 1.0)], 0.0, ["quantity", "at least 1"], id="int32-min"),
        pytest.param([("a", 0, 1.0)], 0.0, ["quantity is 0"], id="zero"),
        pytest.param([("a", 1, math.nan)], math.nan, ["NaN"], id="nan-everywhere"),
        pytest.param([("a", 1, -0.0)], -0.0, [], id="negative-zero-is-zero"),
        pytest.param([("a", 1, 2.0**53)], 2.0**53, ["too large"], id="price-beyond-2^53"),
        pytest.param([("a", 1, 1e308)], 1e308, ["too large"], id="dbl-max-ish"),
        pytest.param([("a", 1, 5e-324)], 0.0, [], id="subnormal-is-zero"),
        pytest.param([("a", 1, 1e-7)], 0.0, ["not a whole number"], id="tenth-of-a-millionth"),
    ],
)
def test_money_extremes(
    items: list[tuple[str, int, float]], total: float, words: list[str]
) -> None:
    verdict = assert_well_classified(wire(message(items=items, total=total)))
    if words:
        assert verdict.kind == "invalid", verdict
        assert all(w in verdict.text for w in words), verdict.text
    else:
        assert verdict.kind == "valid" and verdict.order.total_minor == 0, verdict


def test_a_sum_beyond_two_to_the_53_is_never_a_valid_order() -> None:
    # Each price and the total are fine on their own; the items' sum is not.
    data = wire(message(items=[("a", 1000, 2.0**52)], total=2.0**53, currency="JPY"))
    assert_invalid(data, "does not match")


@pytest.mark.parametrize("currency", ["usd", "XAU", "BGN", "ZZZ", " USD", "US", "\x00\x01"])
def test_unknown_currencies_are_invalid_and_named(currency: str) -> None:
    assert_invalid(wire(message(items=[("a", 1, 1.0)], total=1.0, currency=currency)), "currency")


# --- thousands of items ---------------------------------------------------------------------


@FEW
@given(st.integers(LIMITS.max_items + 1, 5000), st.booleans())
def test_thousands_of_items_are_invalid(count: int, consistent: bool) -> None:
    items = [(f"sku-{n}", 1, 0.01) for n in range(count)]
    total = None if consistent else 0.01
    assert_invalid(wire(message(items=items, total=total)), f"{count} items", "limit")


def test_exactly_the_item_limit_is_valid() -> None:
    items = [(f"sku-{n}", 1, 0.01) for n in range(LIMITS.max_items)]
    verdict = assert_well_classified(wire(message(items=items)))
    assert verdict.kind == "valid" and verdict.order.total_minor == LIMITS.max_items


def test_no_items_is_invalid() -> None:
    assert_invalid(wire(message(items=[], total=0.0)), "no items")


# --- the detail must be publishable ------------------------------------------------------------


@pytest.mark.parametrize("char", ["\x00", "\u0378", "a"], ids=["nul", "unassigned", "ascii"])
def test_an_invalid_orders_detail_fits_in_an_outcome_event(char: str) -> None:
    """The detail is published in an ``OrderFailed`` event, which must fit NATS's
    max_payload (1 MiB by default) or the order's outcome can never be published.

    Regression: the currency code used to be echoed into the detail unbounded, through
    ``repr`` (4-6 characters per control or unassigned character), so a message under
    MAX_MESSAGE_BYTES gave a 3-4 MiB detail (fixed in 123f393; the e2e consequence is
    ``test_an_invalid_order_whose_detail_outgrows_max_payload_still_ends``)."""
    currency = char * ((MAX_BYTES - 100) // len(char.encode()))
    data = wire(message(items=[("a", 1, 1.0)], total=1.0, currency=currency))
    assert len(data) <= MAX_BYTES
    detail = assert_invalid(data, "currency")
    event = orders_pb2.OrderFailed(order_id="order-1", reason="INVALID_ORDER", detail=detail)
    size = len(event.SerializeToString())
    assert size <= NATS_MAX_PAYLOAD, (
        f"a {len(data)}-byte message gives an INVALID_ORDER detail of {len(detail)} "
        f"characters: its OrderFailed event is {size} bytes, above NATS's default "
        f"max_payload of {NATS_MAX_PAYLOAD}"
    )
