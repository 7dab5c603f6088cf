"""Exact money: Decimal in Python, integer ten-thousandths ("units") in the database.

1 credit = 1 USD. Every posted amount is exact to 4 decimal places, rounded half-up at posting
time; intermediate cost calculations keep full precision. Balances display with 2 decimals,
amounts and costs with 4, and JSON carries money as a 4-place decimal string.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

UNITS_PER_CREDIT = 10_000
FOUR_PLACES = Decimal("0.0001")
TWO_PLACES = Decimal("0.01")


class MoneyError(ValueError):
    """Raised for input that is not an acceptable amount of money."""


def parse_amount(value: str | int | Decimal, *, max_places: int | None = 4) -> Decimal:
    """Parse strictly: no floats, no NaN/Infinity, at most `max_places` decimals (None: any)."""
    if isinstance(value, (bool, float)):
        raise MoneyError("amount must be given as a decimal string, not a float")
    try:
        amount = Decimal(str(value).strip()) if not isinstance(value, Decimal) else value
    except InvalidOperation:
        raise MoneyError(f"not a number: {value!r}") from None
    if not amount.is_finite():
        raise MoneyError(f"not a finite number: {value!r}")
    if max_places is None:
        return amount
    try:
        exact = amount == amount.quantize(Decimal(1).scaleb(-max_places))
    except InvalidOperation:  # more digits than the context can hold
        raise MoneyError(f"amount out of range: {value!r}") from None
    if not exact:
        raise MoneyError(f"at most {max_places} decimal places are allowed: {value!r}")
    return amount


def quantize4(amount: Decimal) -> Decimal:
    """Round to the posting precision (4 places, half-up)."""
    return amount.quantize(FOUR_PLACES, rounding=ROUND_HALF_UP)


def to_units(amount: Decimal | int | str) -> int:
    """Decimal credits -> integer ten-thousandths, rounding half-up at the 4th place."""
    if isinstance(amount, float):
        raise MoneyError("floats are not money")
    return int(quantize4(Decimal(amount)) * UNITS_PER_CREDIT)


def from_units(units: int) -> Decimal:
    """Integer ten-thousandths -> Decimal credits with exactly 4 places."""
    return (Decimal(int(units)) / UNITS_PER_CREDIT).quantize(FOUR_PLACES)


def fmt4(units: int) -> str:
    """JSON/amount form: '149.8477' (from the integer: answers carry thousands of these)."""
    whole, fraction = divmod(abs(int(units)), UNITS_PER_CREDIT)
    return f"{'-' if units < 0 else ''}{whole}.{fraction:04d}"


def fmt_balance(units: int) -> str:
    """Display form for balances: '$149.85', '-$2.50' (2 places, half-up)."""
    value = from_units(units).quantize(TWO_PLACES, rounding=ROUND_HALF_UP)
    return f"-${-value:,.2f}" if value < 0 else f"${value:,.2f}"


def fmt_signed_amount(units: int) -> str:
    """Display form for amounts: '+$50.0000', '-$0.1523'."""
    return ("+" if units >= 0 else "") + fmt_money4(units)


def fmt_money4(units: int) -> str:
    """Display form for balances after an entry: '$149.8477', '-$2.5000'."""
    value = from_units(units)
    return f"-${-value:,.4f}" if value < 0 else f"${value:,.4f}"
