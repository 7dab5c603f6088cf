"""Shared request values: money strings, RFC 3339 timestamps, decimal strings, quantities, and the
strict request base."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

from ...metering import OPERATIONS

Money = Annotated[str, Field(pattern=r"^-?\d+\.\d{4}$", examples=["149.8477"])]
Operation = Literal[OPERATIONS]  # type: ignore[valid-type]


# -- request values ------------------------------------------------------------------------------

_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]+)?([Zz]|([+-])([0-9]{2}):([0-9]{2}))"
)
_TIMESTAMP_HELP = "an RFC 3339 date-time such as 2026-01-31T23:59:59Z"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MIN_SECONDS = int((datetime.min.replace(tzinfo=UTC) - _EPOCH).total_seconds())
_MAX_SECONDS = int((datetime.max.replace(tzinfo=UTC) - _EPOCH).total_seconds())


def _days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 in the proleptic Gregorian calendar (any year, 0000 included)."""
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    return era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468


def _month_days(y: int, m: int) -> int:
    if m == 2:
        return 29 if y % 4 == 0 and (y % 100 != 0 or y % 400 == 0) else 28
    return 30 if m in (4, 6, 9, 11) else 31


def parse_timestamp(value: Any) -> datetime:
    """RFC 3339 `date-time`, exactly as JSON Schema's format defines it (a leap second only at
    23:59:60 UTC), as an aware UTC datetime; instants beyond Python's years 1-9999 clamp to them."""
    if isinstance(value, datetime):  # built in Python, not parsed from a request
        return value
    match = _RFC3339.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"expected {_TIMESTAMP_HELP}")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    offset = 0
    if match.group(9):
        oh, om = int(match.group(10)), int(match.group(11))
        if oh > 23 or om > 59:
            raise ValueError(f"expected {_TIMESTAMP_HELP} (offset out of range)")
        offset = (oh * 60 + om) * (1 if match.group(9) == "+" else -1)
    if not (1 <= month <= 12 and 1 <= day <= _month_days(year, month) and hour <= 23 and minute <= 59):
        raise ValueError(f"expected {_TIMESTAMP_HELP} (no such date or time)")
    if second == 60 and (hour * 60 + minute - offset) % 1440 != 23 * 60 + 59:
        raise ValueError(f"expected {_TIMESTAMP_HELP} (a leap second is 23:59:60 UTC)")
    if second > 60:
        raise ValueError(f"expected {_TIMESTAMP_HELP} (no such time)")
    micros = int((match.group(7) or ".")[1:7].ljust(6, "0"))
    if second == 60:  # the leap second: the last instant of its minute
        second, micros = 59, 999_999
    seconds = _days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second - offset * 60
    if seconds < _MIN_SECONDS:
        return datetime.min.replace(tzinfo=UTC)
    if seconds > _MAX_SECONDS:
        return datetime.max.replace(tzinfo=UTC)
    return _EPOCH + timedelta(seconds=seconds, microseconds=micros)


Timestamp = Annotated[
    datetime,
    PlainValidator(parse_timestamp),
    WithJsonSchema({"type": "string", "format": "date-time", "examples": ["2026-01-31T23:59:59Z"]}),
]


def decimal_string(pattern: str, description: str, example: str, *, code: str | None = None) -> Any:
    """A decimal given as a JSON string matching `pattern` (anchored; ASCII digits only). With
    `code`, a well-formed decimal outside the pattern is refused with that error code."""
    regex = re.compile(pattern)

    def parse(value: Any) -> Decimal:
        if isinstance(value, str) and regex.fullmatch(value):
            return Decimal(value)
        if code and isinstance(value, str) and re.fullmatch(r"-?[0-9]+(\.[0-9]+)?", value):
            raise PydanticCustomError(code, description)
        raise PydanticCustomError("decimal_string", f"expected a decimal string: {description}")

    return Annotated[
        Decimal,
        PlainValidator(parse),
        WithJsonSchema({"type": "string", "pattern": pattern, "description": description, "examples": [example]}),
    ]


_MICRO = Decimal("0.000001")
_QUANTITY_PATTERN = (
    r"^(?:[1-9][0-9]{0,8}(?:\.[0-9]{1,6})?|1000000000(?:\.0{1,6})?"
    r"|0\.(?:[1-9][0-9]{0,5}|0[1-9][0-9]{0,4}|00[1-9][0-9]{0,3}|000[1-9][0-9]{0,2}|0000[1-9][0-9]?|00000[1-9]))$"
)
_COUNT_PATTERN = r"^(?:[1-9][0-9]{0,8}|1000000000)$"
_QUANTITY_LIMIT = Decimal(1_000_000_000)


def _quantity_parser(*, whole: bool):
    pattern = re.compile(_COUNT_PATTERN if whole else _QUANTITY_PATTERN)
    what = "a whole number from 1 to 1000000000" if whole else "a number from 0.000001 to 1000000000"

    def parse(value: Any) -> Decimal:
        if isinstance(value, str):
            if not pattern.fullmatch(value):
                raise PydanticCustomError("quantity", f"expected {what} (as a string: up to 6 decimals, no sign)")
            return Decimal(value)
        if isinstance(value, (int, Decimal)) and not isinstance(value, bool):  # JSON numbers parse as Decimal
            number = Decimal(value)
            if whole and number != number.to_integral_value():
                raise PydanticCustomError("quantity", f"expected {what} (whole messages)")
            if not _MICRO <= number <= _QUANTITY_LIMIT:
                raise PydanticCustomError("quantity", f"expected {what}")
            return number if whole else number.quantize(_MICRO, rounding=ROUND_HALF_UP)
        raise PydanticCustomError("quantity", f"expected {what}, as a JSON number or a decimal string")

    return parse


Quantity = Annotated[
    Decimal,
    PlainValidator(_quantity_parser(whole=False)),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0.000001, "maximum": 1_000_000_000},
                {"type": "string", "pattern": _QUANTITY_PATTERN},
            ],
            "description": "Minutes, messages, segments, characters or tokens. A JSON number is rounded "
            "half-up to 6 decimals; a string has at most 6.",
            "examples": ["3.5"],
        }
    ),
]
Count = Annotated[
    Decimal,
    PlainValidator(_quantity_parser(whole=True)),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 1, "maximum": 1_000_000_000},
                {"type": "string", "pattern": _COUNT_PATTERN},
            ],
            "description": "Whole messages.",
            "examples": [12],
        }
    ),
]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")
