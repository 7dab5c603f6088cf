"""The balance, its history and spending by category, billed sessions, and credit grants."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .common import Money


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
