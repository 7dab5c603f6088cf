"""Request and response bodies. Money leaves as 4-place decimal strings; timestamps as ISO 8601 UTC."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..metering import OPERATIONS

Money = Annotated[str, Field(pattern=r"^-?\d+\.\d{4}$", examples=["149.8477"])]
Quantity = Annotated[Decimal, Field(gt=0, le=Decimal(1_000_000_000), max_digits=20, decimal_places=6)]
Operation = Literal[OPERATIONS]  # type: ignore[valid-type]


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


class CheckRequest(Strict):
    operation: Operation
    estimated_quantity: Quantity = Decimal(1)
    model: Annotated[str, Field(max_length=64)] | None = None


class CheckResponse(BaseModel):
    allowed: bool
    balance: Money
    estimated_cost: Money
    reason: str | None = None


class SessionIn(Strict):
    id: Annotated[str, Field(min_length=1, max_length=100)]
    agent_id: Annotated[str, Field(max_length=100)] | None = None
    agent_name: Annotated[str, Field(max_length=200)] | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    transcript: Annotated[str, Field(max_length=200000)] | None = None
    recording_url: Annotated[str, Field(max_length=1000)] | None = None
    analysis: dict[str, Any] | None = None


class UsageRequest(Strict):
    operation: Operation
    quantity: Quantity
    status: Literal["completed", "failed"]
    idempotency_key: Annotated[str, Field(min_length=1, max_length=150)] | None = None
    model: Annotated[str, Field(max_length=64)] | None = None
    session: SessionIn | None = None


class UsageResponse(BaseModel):
    charged: bool
    cost: Money
    entry: HistoryEntry | None
    balance: Money | None
    session_id: str | None
    replayed: bool = False
