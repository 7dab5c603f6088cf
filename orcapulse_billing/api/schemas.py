"""Request and response bodies. Money leaves as 4-place decimal strings; timestamps as ISO 8601 UTC.

Requests: every documented pattern, range and combination is what the server checks, no more and no
less (the OpenAPI document is the contract; tests/test_api_schema.py holds the server to it). What
JSON Schema cannot say (one field against another, or against a header) is in the descriptions.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainValidator, RootModel, WithJsonSchema
from pydantic_core import PydanticCustomError

from ..accounts import SCOPES
from ..metering import OPENAI_OPERATIONS, OPERATIONS
from ..pricing import OPENAI_MODELS

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


class LoginRequest(Strict):
    email: Annotated[str, Field(min_length=3, max_length=320)]
    password: Annotated[str, Field(min_length=1, max_length=200)]


class Me(BaseModel):
    user_id: int
    email: str
    organization_id: int
    role: str


class Package(BaseModel):
    id: str
    name: str
    credits: Money
    price: Money
    bonus_credits: Money
    bonus_percent: str
    currency: str = "USD"


class CustomRange(BaseModel):
    min: Money
    max: Money
    currency: str = "USD"


class Packages(BaseModel):
    packages: list[Package]
    custom: CustomRange


class Balance(BaseModel):
    balance: Money
    available: Money = Field(description="The balance minus the credits reserved by active holds.")
    reserved: Money = Field(description="Reserved by active holds (calls in progress).")
    currency: str
    low_balance: bool
    low_balance_threshold: Money
    grace_limit: Money
    in_grace_period: bool
    can_start_operations: bool
    lifetime_added: Money
    lifetime_consumed: Money
    transaction_count: int


class HistoryEntry(BaseModel):
    id: int
    type: str
    source: str | None
    amount: Money
    balance_before: Money
    balance_after: Money
    description: str
    category: str | None
    created_at: datetime
    metadata: dict[str, Any]
    usage_session_id: str | None


class History(BaseModel):
    items: list[HistoryEntry]
    page: int
    page_size: int
    total: int
    total_pages: int


class CategorySpend(BaseModel):
    category: str
    amount: Money
    count: int


class UsageSummary(BaseModel):
    categories: list[CategorySpend]
    total: Money
    count: int
    from_: datetime | None = Field(None, alias="from")
    to: datetime | None = None

    model_config = ConfigDict(populate_by_name=True)


class CostBreakdown(BaseModel):
    base: Money
    llm: Money
    stt: Money
    tts: Money
    total: Money


class BillingSessionOut(BaseModel):
    id: str
    operation: str
    agent_id: str | None
    agent_name: str | None
    architecture: str | None
    duration_minutes: str | None
    message_count: int | None
    started_at: datetime | None
    ended_at: datetime | None
    transcript: str | None
    recording_url: str | None
    analysis: dict[str, Any] | None
    cost: CostBreakdown
    ledger_entry_id: int | None
    created_at: datetime


_ChatOperation = Literal["chat"]
_TokenOperation = Literal[tuple(OPENAI_OPERATIONS)]  # type: ignore[valid-type]
_MeteredOperation = Literal[tuple(o for o in OPERATIONS if o != "chat" and o not in OPENAI_OPERATIONS)]  # type: ignore[valid-type]
OpenAIModel = Literal[tuple(OPENAI_MODELS)]  # type: ignore[valid-type]
FreeModel = Annotated[str, Field(max_length=64, description="Recorded with the entry; prices nothing here.")]


class _Check(Strict):
    estimated_quantity: Quantity = Decimal(1)
    model: FreeModel | None = None


class CheckMetered(_Check):
    operation: _MeteredOperation


class CheckChat(_Check):
    operation: _ChatOperation
    estimated_quantity: Count = Decimal(1)


class CheckTokens(_Check):
    operation: _TokenOperation
    model: OpenAIModel


CheckRequest = Annotated[CheckMetered | CheckChat | CheckTokens, Field(discriminator="operation")]


class CheckResponse(BaseModel):
    allowed: bool
    balance: Money
    estimated_cost: Money
    reason: str | None = None


_DOUBLE_MAX = Decimal("1.7976931348623157E+308")


def _plain_json(value: Any) -> Any:
    """Numbers with a fraction or an exponent arrive as Decimal (deps.DecimalJSONRequest); kept as any
    JSON parser reads them, as doubles (integers stay exact)."""
    if isinstance(value, Decimal):
        if abs(value) > _DOUBLE_MAX:
            raise ValueError("a number in analysis is beyond the range of a double")
        return float(value)  # ok: analysis scores, never money
    if isinstance(value, dict):
        return {k: _plain_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain_json(v) for v in value]
    return value


Analysis = Annotated[
    dict[str, Any],
    AfterValidator(_plain_json),
    Field(description="Any JSON object; numbers with a fraction or an exponent are kept as doubles (within range)."),
]


class SessionIn(Strict):
    """A call or chat session billed with the usage; `ended_at` must not be before `started_at`."""

    id: Annotated[str, Field(min_length=1, max_length=100)]
    agent_id: Annotated[str, Field(max_length=100)] | None = None
    agent_name: Annotated[str, Field(max_length=200)] | None = None
    started_at: Timestamp | None = None
    ended_at: Timestamp | None = None
    transcript: Annotated[str, Field(max_length=200000)] | None = None
    recording_url: Annotated[str, Field(max_length=1000)] | None = None
    analysis: Analysis | None = None


IdempotencyKey = Annotated[str, Field(min_length=1, max_length=150)]


class _Usage(Strict):
    """Required: an idempotency key, here or in the `Idempotency-Key` header (both: the same)."""

    status: Literal["completed", "failed"]
    idempotency_key: Annotated[
        IdempotencyKey | None,
        Field(description="Required unless the Idempotency-Key header carries it; equal to it when both are sent."),
    ] = None
    model: FreeModel | None = None
    session: SessionIn | None = None


class UsageMetered(_Usage):
    operation: _MeteredOperation
    quantity: Quantity


class UsageChat(_Usage):
    operation: _ChatOperation
    quantity: Count


class UsageTokens(_Usage):
    operation: _TokenOperation
    quantity: Quantity
    model: OpenAIModel


UsageRequest = Annotated[UsageMetered | UsageChat | UsageTokens, Field(discriminator="operation")]


class UsageResponse(BaseModel):
    charged: bool
    cost: Money
    entry: HistoryEntry | None
    balance: Money | None
    session_id: str | None
    replayed: bool = False


# -- usage in bulk ----------------------------------------------------------------------------------

MAX_BATCH_EVENTS = 1000
_BATCH_KEY = Field(
    description="Required in each event: unique per organization, as the single report's key (the same key "
    "again, in this batch or any later request, is a replay of this event)."
)


class BatchUsageMetered(UsageMetered):
    """A usage event of a metered operation, with its own idempotency key."""

    idempotency_key: Annotated[IdempotencyKey, _BATCH_KEY]


class BatchUsageChat(UsageChat):
    """A chat session's usage (whole messages), with its own idempotency key."""

    idempotency_key: Annotated[IdempotencyKey, _BATCH_KEY]


class BatchUsageTokens(UsageTokens):
    """OpenAI tokens of a priced model, with their own idempotency key."""

    idempotency_key: Annotated[IdempotencyKey, _BATCH_KEY]


class BatchUsageEvent(RootModel[BatchUsageMetered | BatchUsageChat | BatchUsageTokens]):
    """One event of POST /api/credits/usage/batch: the body of POST /api/credits/usage, with its key."""

    root: Annotated[BatchUsageMetered | BatchUsageChat | BatchUsageTokens, Field(discriminator="operation")]


# Each event is checked on its own: one that is not a valid BatchUsageEvent is refused in its result
# (status `refused`, code `invalid_request`) and the others are still recorded. So the document accepts
# any object as an event, and names the shape that is recorded.
_BatchItem = Annotated[
    dict[str, Any],
    WithJsonSchema(
        {
            "anyOf": [{"$ref": "#/components/schemas/BatchUsageEvent"}, {"type": "object"}],
            "description": "A usage event, the body of POST /api/credits/usage with `idempotency_key` required "
            "(BatchUsageEvent). An object that is not one is refused in its own result; the others are still "
            "recorded.",
        }
    ),
]


class UsageBatchRequest(Strict):
    events: Annotated[
        list[_BatchItem],
        Field(
            min_length=1,
            max_length=MAX_BATCH_EVENTS,
            description=f"1 to {MAX_BATCH_EVENTS} usage events of the caller's organization, recorded in order "
            "in one transaction (each as if reported alone, in this order).",
        ),
    ]


class BatchError(BaseModel):
    code: str = Field(description="invalid_request (bad event), idempotency_conflict, or the ledger's code")
    message: str


class UsageBatchResult(BaseModel):
    index: int = Field(ge=0, description="The event's place in `events` (from 0).")
    idempotency_key: str | None = Field(description="The event's key (null: it sent none that is valid).")
    status: Literal["charged", "not_charged", "replayed", "refused"] = Field(
        description="charged: an entry was posted. not_charged: a failed operation, or a cost still below one "
        "ledger unit (carried to the next report of the operation). replayed: the key was seen before (earlier "
        "in this batch too); nothing changed. refused: see `error`; nothing was recorded for this event."
    )
    cost: Money | None = Field(description="The event's own cost (null: refused before it could be priced).")
    entry: HistoryEntry | None = Field(description="The posted entry (a replay: the key's first entry, if any).")
    balance: Money | None = Field(description="The balance after `entry`.")
    session_id: str | None
    error: BatchError | None = None


class UsageBatchSummary(BaseModel):
    charged: int
    not_charged: int
    replayed: int
    refused: int
    balance: Money = Field(description="The balance after this batch.")


class UsageBatchResponse(BaseModel):
    results: list[UsageBatchResult] = Field(description="One per event, in the order of `events`.")
    summary: UsageBatchSummary


# -- holds -------------------------------------------------------------------------------------------

_HOLD_KEY = Field(description="Unique per organization: the same key again answers the same hold (201).")


class HoldMetered(CheckMetered):
    estimated_quantity: Quantity
    idempotency_key: Annotated[IdempotencyKey, _HOLD_KEY]


class HoldChat(CheckChat):
    estimated_quantity: Count
    idempotency_key: Annotated[IdempotencyKey, _HOLD_KEY]


class HoldTokens(CheckTokens):
    estimated_quantity: Quantity
    idempotency_key: Annotated[IdempotencyKey, _HOLD_KEY]


HoldRequest = Annotated[HoldMetered | HoldChat | HoldTokens, Field(discriminator="operation")]


class CaptureRequest(Strict):
    quantity: Annotated[
        Quantity,
        Field(
            description="What the operation actually used, priced as the hold's operation (whole messages for a chat hold: 400 otherwise)."
        ),
    ]


class HoldOut(BaseModel):
    id: int
    operation: str
    model: str | None
    estimated_quantity: str
    amount: Money = Field(description="The credits reserved (the estimate's cost, rounded up to 4 places).")
    status: Literal["active", "captured", "released", "expired"]
    idempotency_key: str
    captured_entry_id: int | None
    expires_at: datetime
    created_at: datetime
    settled_at: datetime | None


class HoldPlaced(HoldOut):
    available: Money = Field(description="The available balance after this hold (on a replay: now).")
    replayed: bool = False


class HoldSettled(BaseModel):
    hold: HoldOut
    entry: HistoryEntry | None = Field(
        description="The usage entry of a capture (null: a release, or a cost below one ledger unit so far)."
    )
    released: Money = Field(description="What this call gave back to the available balance (0 on a replay).")
    replayed: bool = False


class Holds(BaseModel):
    holds: list[HoldOut]
    reserved: Money
    available: Money


# -- API keys ----------------------------------------------------------------------------------------

Scope = Literal[tuple(SCOPES)]  # type: ignore[valid-type]
KeyName = Annotated[
    str,
    Field(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]+$", examples=["voice-worker"]),
]


class ApiKeyCreate(Strict):
    """`usage:write` only for a user who is an owner or admin here (403 `scope_not_allowed` otherwise);
    an admin cannot make a key that acts as an owner (403)."""

    email: Annotated[
        str | None,
        Field(
            min_length=3,
            max_length=320,
            description="The user the key acts as, a member of this organization (404 otherwise); "
            "the caller when absent.",
        ),
    ] = None
    scopes: Annotated[
        list[Scope],
        Field(
            max_length=10,
            description="What the key may do beyond reading (each once; repeats are ignored); none: read only.",
        ),
    ] = []
    name: Annotated[KeyName | None, Field(description="A label for people (what the key is for).")] = None


class ApiKeyOut(BaseModel):
    id: int
    prefix: str = Field(description="The key's first characters, to recognise it (the key itself is never stored).")
    name: str | None
    email: str
    scopes: list[Scope]
    organization_id: int | None = Field(description="The organization the key is bound to; null: any of its user's.")
    created_at: datetime
    last_used_at: datetime | None = Field(description="To the minute.")
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(description="The secret, shown this once: send it as `Authorization: Bearer <key>`.")


class GrantOut(BaseModel):
    """A credit grant: what a credit added, what remains of it and when it expires."""

    id: int
    source: str = Field(
        description="promotional, welcome, bonus, purchase, manual, refund, or migrated (a balance from before grants)"
    )
    priority: int = Field(
        ge=0, le=2, description="Burn order class, spent lowest first: 0 promotional and welcome, 1 bonus, 2 paid."
    )
    amount: Money = Field(description="What the credit added.")
    remaining: Money = Field(description="What is left to spend.")
    expires_at: datetime | None = Field(description="When what remains expires; null: never.")
    expired_at: datetime | None = Field(description="When its remainder was posted as an `expiry` entry.")
    active: bool = Field(description="Something remains and it has not expired.")
    created_at: datetime


class Grants(BaseModel):
    grants: list[GrantOut] = Field(
        description="Active grants first, in burn order (class, earliest expiry, oldest); then spent and expired "
        "ones, newest first."
    )
