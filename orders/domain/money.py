"""Money at the boundary: producers' floating-point major units <-> integer minor units.

The contract (``shared/CONTRACT.md``) carries amounts as ``double`` major units
with an ISO 4217 currency code; inside the pipeline every amount is an ``int``
of minor units (cents for USD, yen for JPY, fils for BHD), so sums and
comparisons are exact. This module is the only place that crosses between the
two. Pure: standard library only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from decimal import Decimal
from fractions import Fraction
from types import MappingProxyType
from typing import Final

DEFAULT_CURRENCY: Final = "USD"

# Contract rule: "an amount within 1e-6 of a whole number of minor units is that
# number". Measured in minor units and held as an exact fraction, because the
# float literal 1e-6 is itself not exactly one millionth.
TOLERANCE_MINOR: Final = Fraction(1, 1_000_000)

# Above 2**53 not every integer is a double, so a double can no longer name a
# whole number of minor units reliably.
MAX_MINOR: Final = 2**53


def _codes(text: str) -> frozenset[str]:
    # Whitespace-separated, so the table reads like the ISO list instead of one code a line.
    return frozenset(text.split())


# ISO 4217 List One as of January 2026 (BGN withdrawn for the euro, XAD added):
# active codes with a numeric minor unit. Codes whose minor unit is "N.A." (XAU,
# XDR, XTS, XXX, ...) are not money an order can be priced in, and withdrawn codes
# (BGN, HRK, SLL, ZWL, ANG, CUC, ...) are unknown on purpose: an order in them is
# an INVALID_ORDER, not a guess.
_ZERO_DECIMAL: Final = _codes("BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF")
_THREE_DECIMAL: Final = _codes("BHD IQD JOD KWD LYD OMR TND")
_FOUR_DECIMAL: Final = _codes("CLF UYW")
_TWO_DECIMAL: Final = _codes(
    """
    AED AFN ALL AMD AOA ARS AUD AWG AZN BAM BBD BDT BMD BND BOB BOV BRL BSD BTN BWP
    BYN BZD CAD CDF CHE CHF CHW CNY COP COU CRC CUP CVE CZK DKK DOP DZD EGP ERN ETB
    EUR FJD FKP GBP GEL GHS GIP GMD GTQ GYD HKD HNL HTG HUF IDR ILS INR IRR JMD KES
    KGS KHR KPW KYD KZT LAK LBP LKR LRD LSL MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR
    MWK MXN MXV MYR MZN NAD NGN NIO NOK NPR NZD PAB PEN PGK PHP PKR PLN QAR RON RSD
    RUB SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TOP
    TRY TTD TWD TZS UAH USD USN UYU UZS VED VES WST XAD XCD XCG YER ZAR ZMW ZWG
    """
)

MINOR_UNIT_EXPONENTS: Final[Mapping[str, int]] = MappingProxyType(
    {code: 2 for code in sorted(_TWO_DECIMAL)}
    | {code: 0 for code in sorted(_ZERO_DECIMAL)}
    | {code: 3 for code in sorted(_THREE_DECIMAL)}
    | {code: 4 for code in sorted(_FOUR_DECIMAL)}
)
"""ISO 4217 code -> number of decimal digits of its minor unit (USD 2, JPY 0, BHD 3)."""


class InvalidMoney(ValueError):
    """An amount or currency the contract does not accept.

    ``str(error)`` is a human-readable reason naming the problem; it becomes the
    ``detail`` of an ``INVALID_ORDER`` outcome, so it must make sense to an operator.
    """


def normalize_currency(code: str) -> str:
    """The ISO 4217 code an order is priced in: empty means :data:`DEFAULT_CURRENCY`.

    Guarantees the result is a key of :data:`MINOR_UNIT_EXPONENTS`. Case is not
    corrected: ``"usd"`` is not an ISO 4217 code, and silently accepting it would
    make the producer's bug invisible.

    Raises:
        InvalidMoney: ``code`` is not an active ISO 4217 code.
    """
    if code == "":
        return DEFAULT_CURRENCY
    exponent(code)
    return code


def exponent(currency: str) -> int:
    """Decimal digits of ``currency``'s minor unit (USD 2, JPY 0, BHD 3, CLF 4).

    Raises:
        InvalidMoney: ``currency`` is not an active ISO 4217 code (including ``""``:
            call :func:`normalize_currency` first to apply the USD default).
    """
    try:
        return MINOR_UNIT_EXPONENTS[currency]
    except KeyError:
        raise InvalidMoney(_unknown_currency(currency)) from None


def to_minor_units(amount: float, currency: str) -> int:
    """Convert a producer's major-unit ``amount`` to an exact ``int`` of minor units.

    Guarantees, per the contract: an amount within 1e-6 of a whole number ``n``
    of minor units returns ``n`` (``19.99`` USD -> ``1999``, ``0.1 + 0.2`` USD ->
    ``30``). The distance is computed exactly from the double's binary value, so
    the answer does not depend on float rounding in this function.

    Raises:
        InvalidMoney: unknown currency, NaN, infinity, a negative amount, more
            than 2**53 minor units ("too large"), or an amount between two whole
            minor units (``19.995`` USD).
    """
    exp = exponent(currency)
    if math.isnan(amount):
        raise InvalidMoney(f"amount is NaN ({currency})")
    if math.isinf(amount):
        raise InvalidMoney(f"amount is infinite ({amount} {currency})")
    if amount < 0:
        raise InvalidMoney(f"amount {amount!r} {currency} is negative")
    # Annotated: typeshed types int ** int as Any (a negative power is a float).
    scale: int = 10**exp
    # The double's exact binary value, numerator / 2**k: no second rounding. Integer
    # arithmetic on it, not Fraction, because this runs for every price of every
    # order on the bridge (a tenth of the time, the same answers).
    numerator, denominator = amount.as_integer_ratio()
    scaled = numerator * scale  # the amount in minor units is scaled / denominator
    if scaled > MAX_MINOR * denominator:
        raise InvalidMoney(
            f"amount {amount!r} {currency} is too large: above 2**53 minor units a "
            f"double cannot name a whole number of them exactly"
        )
    # The nearest whole number (a tie is half a unit away, off the grid either way).
    minor = (2 * scaled + denominator) // (2 * denominator)
    # |scaled / denominator - minor| > TOLERANCE_MINOR, cross-multiplied: exact.
    off = abs(scaled - minor * denominator) * TOLERANCE_MINOR.denominator
    if off > TOLERANCE_MINOR.numerator * denominator:
        raise InvalidMoney(_off_grid(amount, currency, exp))
    return minor


def to_major_units(minor: int, currency: str) -> float:
    """The double closest to ``minor`` minor units, in major units (for outcome events).

    Guarantees ``to_minor_units(to_major_units(m, c), c) == m`` for
    ``0 <= m <= 10**10`` in every known currency, and for every ``0 <= m <= 2**53``
    when the exponent is 0. Larger amounts may not survive a double; see
    :func:`to_minor_units`.

    Raises:
        InvalidMoney: unknown currency.
    """
    # int / int is correctly rounded in Python, unlike minor * 10.0**-exp.
    scale: int = 10 ** exponent(currency)
    return minor / scale


def format_money(minor: int, currency: str) -> str:
    """Human-readable amount with exactly the currency's decimals: ``"19.99 USD"``, ``"1500 JPY"``.

    Raises:
        InvalidMoney: unknown currency.
    """
    exp = exponent(currency)
    sign = "-" if minor < 0 else ""
    whole, fraction = divmod(abs(minor), 10**exp)
    digits = f"{whole}.{fraction:0{exp}d}" if exp else str(whole)
    return f"{sign}{digits} {currency}"


def amount_above(minor: int, currency: str, limit: Decimal) -> bool:
    """Whether ``minor`` minor units are strictly above the major-unit ``limit``.

    Compared exactly as rationals: no float and no Decimal context rounding, so
    ``1000001`` cents is above ``Decimal("10000.00")`` and ``1000000`` is not.
    ``Decimal("Infinity")`` is a limit nothing is above.

    Raises:
        InvalidMoney: unknown currency, or ``limit`` is NaN.
    """
    exp = exponent(currency)
    if limit.is_nan():
        raise InvalidMoney(f"limit {limit} is not a number")
    if limit.is_infinite():
        return limit < 0
    return Fraction(minor, 10**exp) > Fraction(limit)


def _unknown_currency(code: str) -> str:
    if len(code) > 8:
        # Echoing a megabyte-long "code" back would make the error the problem.
        return f"unknown currency code {code[:8]!r}... ({len(code)} characters)"
    if code == "":
        return "empty currency code (normalize_currency maps it to USD)"
    if code.upper() in MINOR_UNIT_EXPONENTS:
        return f"unknown currency code {code!r} (ISO 4217 codes are upper case: {code.upper()!r})"
    return f"unknown currency code {code!r} (not an active ISO 4217 code)"


def _off_grid(amount: float, currency: str, exp: int) -> str:
    reason = f"amount {amount!r} {currency} is not a whole number of minor units (10^-{exp})"
    # Above ~1e8 major units a double's own spacing exceeds the 1e-6 tolerance, so a
    # value the producer meant to be on the grid can land off it; say so rather than
    # blame the producer's arithmetic.
    spacing_minor = Fraction(math.ulp(amount)) * 10**exp
    if spacing_minor / 2 > TOLERANCE_MINOR:
        reason += (
            "; at this magnitude a double is too coarse to be within 1e-6 of a minor unit"
            " (too large)"
        )
    return reason
