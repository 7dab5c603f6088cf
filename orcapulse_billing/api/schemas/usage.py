"""Checking before an operation and reporting its usage, one event at a time."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field

from ...metering import OPENAI_OPERATIONS, OPERATIONS
from ...pricing import OPENAI_MODELS
from .common import Count, Money, Quantity, Strict, Timestamp
from .credits import HistoryEntry

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
