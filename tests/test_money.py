from decimal import Decimal

import pytest

from orcapulse_billing.money import (
    MoneyError,
    fmt4,
    fmt_balance,
    fmt_signed_amount,
    from_units,
    parse_amount,
    to_units,
)


def test_units_round_trip_is_exact():
    assert to_units(Decimal("149.8477")) == 1_498_477
    assert from_units(1_498_477) == Decimal("149.8477")
    assert fmt4(1_498_477) == "149.8477"
    assert fmt4(-1523) == "-0.1523"


def test_fmt4_is_the_four_place_decimal_of_the_units():
    """fmt4 formats the integer directly (answers carry thousands of amounts): the same text as the Decimal."""
    import random

    rng = random.Random(4)
    values = [0, 1, -1, 9_999, -9_999, 10_000, -10_000, 2**62, -(2**62)]
    values += [rng.randint(-(10**15), 10**15) for _ in range(20_000)] + [
        rng.randint(-30_000, 30_000) for _ in range(20_000)
    ]
    assert [v for v in values if fmt4(v) != f"{from_units(v):.4f}"] == []


@pytest.mark.parametrize(
    "value, units",
    [("0.00005", 1), ("0.00004999", 0), ("-0.00005", -1), ("0.15225", 1523), ("2.71828", 27183)],
)
def test_posting_rounds_half_up_to_four_places(value, units):
    assert to_units(Decimal(value)) == units


def test_display_forms():
    assert fmt_balance(1_498_477) == "$149.85"
    assert fmt_balance(-25_000) == "-$2.50"
    assert fmt_balance(12_345_670_000) == "$1,234,567.00"
    assert fmt_signed_amount(500_000) == "+$50.0000"
    assert fmt_signed_amount(-1523) == "-$0.1523"


@pytest.mark.parametrize("bad", ["abc", "NaN", "Infinity", "1.23456", "", "1e400000"])
def test_parse_amount_refuses_bad_input(bad):
    with pytest.raises(MoneyError):
        parse_amount(bad)


def test_parse_amount_refuses_floats():
    with pytest.raises(MoneyError):
        parse_amount(0.1)
    with pytest.raises(MoneyError):
        to_units(0.1)


def test_parse_amount_accepts_exact_values():
    assert parse_amount("7.25") == Decimal("7.25")
    assert parse_amount("1.50000") == Decimal("1.5")
    assert parse_amount(" 50 ") == Decimal(50)
