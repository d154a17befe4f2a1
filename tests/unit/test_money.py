"""Money conversion at the boundary: the contract's 1e-6 rule, exponents, exact comparison."""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orders.domain.money import (
    DEFAULT_CURRENCY,
    MAX_MINOR,
    MINOR_UNIT_EXPONENTS,
    TOLERANCE_MINOR,
    InvalidMoney,
    amount_above,
    exponent,
    format_money,
    normalize_currency,
    to_major_units,
    to_minor_units,
)

pytestmark = pytest.mark.unit

currencies = st.sampled_from(sorted(MINOR_UNIT_EXPONENTS))


@pytest.mark.parametrize(
    ("currency", "expected"),
    [
        ("USD", 2),
        ("EUR", 2),
        ("JPY", 0),
        ("KRW", 0),
        ("XOF", 0),
        ("BHD", 3),
        ("KWD", 3),
        ("CLF", 4),
        ("UYW", 4),
    ],
)
def test_exponent(currency: str, expected: int) -> None:
    assert exponent(currency) == expected


def test_table_covers_the_unusual_exponents() -> None:
    zero = {"BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX"}
    zero |= {"UYI", "VND", "VUV", "XAF", "XOF", "XPF"}
    three = {"BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"}
    four = {"CLF", "UYW"}
    not_two = {code for code, exp in MINOR_UNIT_EXPONENTS.items() if exp != 2}
    assert not_two == zero | three | four
    assert {MINOR_UNIT_EXPONENTS[code] for code in zero} == {0}
    assert {MINOR_UNIT_EXPONENTS[code] for code in three} == {3}
    assert {MINOR_UNIT_EXPONENTS[code] for code in four} == {4}
    assert all(len(c) == 3 and c.isascii() and c.isupper() for c in MINOR_UNIT_EXPONENTS)
    assert len(MINOR_UNIT_EXPONENTS) > 150


@pytest.mark.parametrize("code", ["XXX", "ABC", "usd", "Usd", "", "US", "USDX", "XAU", "HRK"])
def test_exponent_rejects_unknown_codes(code: str) -> None:
    with pytest.raises(InvalidMoney, match="currency code"):
        exponent(code)


def test_normalize_currency() -> None:
    assert normalize_currency("") == DEFAULT_CURRENCY == "USD"
    assert normalize_currency("JPY") == "JPY"
    with pytest.raises(InvalidMoney, match="upper case"):
        normalize_currency("usd")
    with pytest.raises(InvalidMoney, match="'ZZZ'"):
        normalize_currency("ZZZ")


@pytest.mark.parametrize(
    ("amount", "currency", "minor"),
    [
        (19.99, "USD", 1999),
        (0.1 + 0.2, "USD", 30),
        (0.0, "USD", 0),
        (-0.0, "USD", 0),
        (1e-9, "USD", 0),
        (100.0, "USD", 10000),
        (1500.0, "JPY", 1500),
        (1.234, "BHD", 1234),
        (0.0001, "CLF", 1),
        (10000.00, "USD", 1_000_000),
        (float(2**53), "JPY", 2**53),
    ],
)
def test_to_minor_units(amount: float, currency: str, minor: int) -> None:
    assert to_minor_units(amount, currency) == minor


@pytest.mark.parametrize(
    ("amount", "currency", "reason"),
    [
        (19.995, "USD", "not a whole number of minor units"),
        (0.5, "JPY", "not a whole number of minor units"),
        (1.2345, "BHD", "not a whole number of minor units"),
        (19.99 + 2e-8, "USD", "not a whole number of minor units"),
        (math.nan, "USD", "NaN"),
        (math.inf, "USD", "infinite"),
        (-math.inf, "USD", "infinite"),
        (-0.01, "USD", "negative"),
        (-1e-9, "USD", "negative"),
        (float(2**53 + 2), "JPY", "too large"),
        (1e14, "USD", "too large"),
        (1e300, "USD", "too large"),
        (1.0, "usd", "currency code"),
    ],
)
def test_to_minor_units_rejects(amount: float, currency: str, reason: str) -> None:
    with pytest.raises(InvalidMoney, match=reason):
        to_minor_units(amount, currency)


def test_tolerance_is_one_millionth_of_a_minor_unit() -> None:
    assert to_minor_units(19.99 + 5e-9, "USD") == 1999  # 5e-7 cents off
    with pytest.raises(InvalidMoney):
        to_minor_units(19.99 + 2e-8, "USD")  # 2e-6 cents off


@given(currency=currencies, minor=st.integers(min_value=0, max_value=10**10))
def test_round_trip_through_major_units(currency: str, minor: int) -> None:
    assert to_minor_units(to_major_units(minor, currency), currency) == minor


@given(minor=st.integers(min_value=0, max_value=MAX_MINOR))
def test_round_trip_is_exact_to_2_53_without_decimals(minor: int) -> None:
    assert to_minor_units(to_major_units(minor, "JPY"), "JPY") == minor


@given(
    currency=st.sampled_from(sorted(c for c, e in MINOR_UNIT_EXPONENTS.items() if e > 0)),
    minor=st.integers(min_value=0, max_value=10**8),
    offset=st.floats(min_value=0.01, max_value=0.99),
)
def test_off_grid_amounts_are_rejected(currency: str, minor: int, offset: float) -> None:
    amount = (minor + offset) / 10 ** exponent(currency)
    with pytest.raises(InvalidMoney, match="not a whole number"):
        to_minor_units(amount, currency)


@given(currency=currencies, amount=st.floats(allow_nan=True, allow_infinity=True))
def test_any_double_gives_minor_units_or_invalid_money(currency: str, amount: float) -> None:
    try:
        minor = to_minor_units(amount, currency)
    except InvalidMoney as error:
        assert str(error)
    else:
        assert 0 <= minor <= MAX_MINOR
        assert abs(amount * 10 ** exponent(currency) - minor) <= max(1e-6, minor * 1e-15)


def _by_definition(amount: float, currency: str) -> int | None:
    """The contract's rule in exact rationals: the whole number of minor units within
    1e-6 of the amount, if there is one (and no more than 2**53)."""
    scaled = Fraction(amount) * 10 ** exponent(currency)
    nearest = round(scaled)
    if scaled > MAX_MINOR or abs(scaled - nearest) > TOLERANCE_MINOR:
        return None
    return nearest


@given(
    currency=currencies,
    amount=st.floats(min_value=0, allow_nan=False, allow_infinity=False)
    | st.builds(
        lambda minor, nudge, exp: (minor + nudge) / 10**exp,
        st.integers(min_value=0, max_value=10**12),
        st.sampled_from([0.0, 1e-7, -1e-7, 9.99e-7, -1.01e-6, 0.5]),
        st.integers(min_value=0, max_value=4),
    ).filter(lambda a: a >= 0),
)
def test_minor_units_are_exactly_the_rule_in_rationals(currency: str, amount: float) -> None:
    expected = _by_definition(amount, currency)
    try:
        got: int | None = to_minor_units(amount, currency)
    except InvalidMoney:
        got = None
    assert got == expected


@given(amount=st.floats(max_value=-1e-300))
def test_negative_amounts_are_rejected(amount: float) -> None:
    with pytest.raises(InvalidMoney, match=r"negative|infinite"):
        to_minor_units(amount, "USD")


def test_to_major_units() -> None:
    assert to_major_units(1999, "USD") == 19.99
    assert to_major_units(1500, "JPY") == 1500.0
    assert to_major_units(1234, "BHD") == 1.234


@pytest.mark.parametrize(
    ("minor", "currency", "text"),
    [
        (1999, "USD", "19.99 USD"),
        (5, "USD", "0.05 USD"),
        (0, "USD", "0.00 USD"),
        (1500, "JPY", "1500 JPY"),
        (1234, "BHD", "1.234 BHD"),
        (1, "CLF", "0.0001 CLF"),
        (-5, "USD", "-0.05 USD"),
    ],
)
def test_format_money(minor: int, currency: str, text: str) -> None:
    assert format_money(minor, currency) == text


@pytest.mark.parametrize(
    ("minor", "currency", "limit", "above"),
    [
        (1_000_000, "USD", "10000.00", False),
        (1_000_001, "USD", "10000.00", True),
        (10_000, "JPY", "10000.00", False),
        (10_001, "JPY", "10000", True),
        (10_000_001, "BHD", "10000", True),
        # 1e16 + 1 cents: both sides would round to the same double.
        (10**16 + 1, "USD", "100000000000000.00", True),
        (10**30, "USD", "Infinity", False),
        (0, "USD", "-Infinity", True),
        (0, "USD", "-0.01", True),
    ],
)
def test_amount_above(minor: int, currency: str, limit: str, above: bool) -> None:
    assert amount_above(minor, currency, Decimal(limit)) is above


def test_amount_above_rejects_nan_limit() -> None:
    with pytest.raises(InvalidMoney, match="not a number"):
        amount_above(1, "USD", Decimal("NaN"))


@given(currency=currencies, minor=st.integers(min_value=0, max_value=10**12))
def test_amount_above_agrees_with_integer_comparison(currency: str, minor: int) -> None:
    limit_minor = 1_000_000
    limit = Decimal(limit_minor).scaleb(-exponent(currency))
    assert amount_above(minor, currency, limit) is (minor > limit_minor)
