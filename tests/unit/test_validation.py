"""The contract's INVALID_ORDER rules, one by one."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orders.domain.model import Invalid, Order, RawItem, RawOrder
from orders.domain.validation import Limits, unusable_order_id, validate_order

pytestmark = pytest.mark.unit


def raw(**overrides: object) -> RawOrder:
    fields: dict[str, object] = {
        "order_id": "o-1",
        "customer_id": "c-1",
        "items": (
            RawItem(product_id="sku-a", quantity=2, unit_price=9.99),
            RawItem(product_id="sku-b", quantity=1, unit_price=0.02),
        ),
        "total_amount": 20.0,
        "currency": "USD",
    }
    fields.update(overrides)
    return RawOrder(**fields)  # type: ignore[arg-type]


def test_a_valid_order_is_converted_to_minor_units() -> None:
    order = validate_order(raw())
    assert isinstance(order, Order)
    assert order.total_minor == 2000
    assert [line.unit_price_minor for line in order.lines] == [999, 2]


def test_empty_currency_means_usd() -> None:
    order = validate_order(raw(currency=""))
    assert isinstance(order, Order) and order.currency == "USD"


def test_zero_decimal_currency() -> None:
    order = validate_order(
        raw(
            items=(RawItem(product_id="x", quantity=3, unit_price=500.0),),
            total_amount=1500.0,
            currency="JPY",
        )
    )
    assert isinstance(order, Order) and order.total_minor == 1500


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"items": ()}, "no items"),
        ({"items": (RawItem(product_id="a", quantity=0, unit_price=1.0),)}, "quantity is 0"),
        ({"items": (RawItem(product_id="a", quantity=-3, unit_price=1.0),)}, "quantity is -3"),
        ({"items": (RawItem(product_id="", quantity=1, unit_price=1.0),)}, "product_id is empty"),
        ({"customer_id": ""}, "customer_id is empty"),
        ({"customer_id": "bad\x00id"}, "control characters"),
        ({"total_amount": 20.01}, "does not match"),
        ({"currency": "ZZZ"}, "ZZZ"),
        ({"total_amount": math.nan}, "NaN"),
        ({"total_amount": math.inf}, "inf"),
        ({"items": (RawItem(product_id="a", quantity=1, unit_price=1.005),)}, "1.005"),
    ],
)
def test_invalid_orders_name_their_problem(overrides: dict[str, object], words: str) -> None:
    verdict = validate_order(raw(**overrides))
    assert isinstance(verdict, Invalid)
    assert words.lower() in verdict.detail.lower(), verdict.detail


def test_limits_bound_items_and_quantities() -> None:
    many = tuple(RawItem(product_id=f"s{i}", quantity=1, unit_price=1.0) for i in range(5))
    verdict = validate_order(raw(items=many, total_amount=5.0), Limits(max_items=4))
    assert isinstance(verdict, Invalid) and "5 items" in verdict.detail
    huge = (RawItem(product_id="a", quantity=2_000_000, unit_price=0.0),)
    verdict = validate_order(raw(items=huge, total_amount=0.0))
    assert isinstance(verdict, Invalid) and "above the limit" in verdict.detail


@pytest.mark.parametrize("order_id", ["", "   ", "a\nb", "x" * 129])
def test_unusable_order_ids_are_named(order_id: str) -> None:
    assert unusable_order_id(order_id) is not None


def test_repeated_products_are_summed_for_stock() -> None:
    items = (
        RawItem(product_id="a", quantity=1, unit_price=1.0),
        RawItem(product_id="a", quantity=2, unit_price=1.0),
    )
    order = validate_order(raw(items=items, total_amount=3.0))
    assert isinstance(order, Order) and order.quantities() == {"a": 3}


@given(
    quantities=st.lists(st.integers(min_value=1, max_value=1000), min_size=1, max_size=20),
    cents=st.integers(min_value=0, max_value=10_000_00),
)
def test_any_exact_total_is_accepted(quantities: list[int], cents: int) -> None:
    items = tuple(
        RawItem(product_id=f"s{i}", quantity=q, unit_price=cents / 100)
        for i, q in enumerate(quantities)
    )
    total_cents = sum(q * cents for q in quantities)
    order = validate_order(raw(items=items, total_amount=total_cents / 100))
    assert isinstance(order, Order), order
    assert order.total_minor == total_cents


@pytest.mark.parametrize("amount", [math.nan, math.inf, -math.inf])
def test_a_raw_order_keeps_non_finite_amounts_through_json(amount: float) -> None:
    order = raw(total_amount=amount)
    again = RawOrder.model_validate_json(order.model_dump_json())
    assert isinstance(validate_order(again), Invalid)
    assert repr(again.total_amount) == repr(amount)
