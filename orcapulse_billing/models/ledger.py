"""The ledger and what spends it: accounts, entries, grants and their burn order, holds; usage events,
their daily rollups and sub-unit remainders, rented numbers."""

from __future__ import annotations

from datetime import date, datetime
from enum import Enum

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from .common import BigId, JsonType, _ts


class EntryType(str, Enum):
    purchase = "purchase"
    bonus = "bonus"
    usage = "usage"
    refund = "refund"
    dispute = "dispute"
    expiry = "expiry"
    adjustment = "adjustment"


class CreditSource(str, Enum):
    """Where a credit (a positive entry) came from; per-grant expiry and burn order build on it."""

    purchase = "purchase"
    bonus = "bonus"
    welcome = "welcome"
    manual = "manual"
    refund = "refund"
    promotional = "promotional"


class CreditAccount(SQLModel, table=True):
    """One per organization. The aggregates move in the same transaction as every posting, so
    `balance == lifetime_added - lifetime_consumed == sum(entry amounts)` at every commit, and
    `transaction_count` is the last entry's `seq`."""

    __tablename__ = "credit_account"

    id: int | None = Field(default=None, primary_key=True)
    organization_id: int = Field(
        sa_column=sa.Column(sa.Integer, sa.ForeignKey("organization.id"), nullable=False, unique=True)
    )
    currency: str = Field(sa_column=sa.Column(sa.String(3), nullable=False, server_default="USD"))
    balance: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False, server_default="0"))
    lifetime_added: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False, server_default="0"))
    lifetime_consumed: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False, server_default="0"))
    transaction_count: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False, server_default="0"))
    # entries per history filter ("kind"); each is the last entry's kind_seq for that kind
    topup_count: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False, server_default="0"))
    usage_count: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False, server_default="0"))
    refund_count: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False, server_default="0"))
    adjustment_count: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False, server_default="0"))
    # credits reserved by active holds: available = balance - held (never below the floor)
    held: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False, server_default="0"))
    # the account has spend budgets (budgets.py): only then does a usage posting read and count them
    budgeted: bool = Field(sa_column=sa.Column(sa.Boolean, nullable=False, server_default=sa.false()))
    version: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False, server_default="0"))
    created_at: datetime = _ts(nullable=False)
    updated_at: datetime = _ts(nullable=False)


ENTRY_KINDS = {
    "purchase": "topup",
    "bonus": "topup",
    "usage": "usage",
    "refund": "refund",
    "dispute": "refund",  # a chargeback takes credits back as a refund does, and a won one returns them
    "expiry": "adjustment",  # what remained of an expired grant
    "adjustment": "adjustment",
}


class LedgerEntry(SQLModel, table=True):
    """Append-only. `seq` is gap-free per account (1, 2, 3, ...) in posting order; `kind_seq` is
    gap-free per account and kind (the history filters: topup, usage, refund, adjustment), so a
    filtered page at any depth is a range read too."""

    __tablename__ = "ledger_entry"
    __table_args__ = (
        sa.UniqueConstraint("account_id", "seq", name="uq_ledger_entry_account_seq"),
        sa.UniqueConstraint("account_id", "idempotency_key", name="uq_ledger_entry_account_idem"),
        sa.Index("ix_ledger_entry_account_created", "account_id", "created_at", "id"),
        sa.UniqueConstraint("account_id", "kind", "kind_seq", name="uq_ledger_entry_account_kind_seq"),
        sa.CheckConstraint("balance_after = balance_before + amount", name="ck_ledger_entry_balance_math"),
        sa.CheckConstraint("amount <> 0", name="ck_ledger_entry_nonzero"),
        sa.CheckConstraint("amount < 0 OR source IS NOT NULL", name="ck_ledger_entry_credit_source"),
    )

    id: int | None = Field(default=None, sa_column=sa.Column(BigId, primary_key=True, autoincrement=True))
    account_id: int = Field(sa_column=sa.Column(sa.Integer, sa.ForeignKey("credit_account.id"), nullable=False))
    seq: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    type: str = Field(sa_column=sa.Column(sa.String(16), nullable=False))
    kind: str = Field(sa_column=sa.Column(sa.String(16), nullable=False))
    kind_seq: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    source: str | None = Field(default=None, sa_column=sa.Column(sa.String(16), nullable=True))
    amount: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    balance_before: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    balance_after: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    description: str = Field(sa_column=sa.Column(sa.String(500), nullable=False))
    category: str | None = Field(default=None, sa_column=sa.Column(sa.String(32), nullable=True))
    # "metadata" is reserved on declarative classes, hence the attribute name.
    entry_metadata: dict = Field(default_factory=dict, sa_column=sa.Column("metadata", JsonType, nullable=False))
    actor_user_id: int | None = Field(
        default=None, sa_column=sa.Column(sa.Integer, sa.ForeignKey("app_user.id"), nullable=True)
    )
    actor_ip: str | None = Field(default=None, sa_column=sa.Column(sa.String(45), nullable=True))
    idempotency_key: str | None = Field(default=None, sa_column=sa.Column(sa.String(200), nullable=True))
    created_at: datetime = _ts(nullable=False)


class CreditGrant(SQLModel, table=True):
    """Every credit is a grant: what it added, what remains of it, when it expires and its place in the
    burn order (`priority`: lower is spent first: promotional and welcome, then bonus, then purchased;
    within a class the earliest-expiring first, then the oldest). Debits consume grants in that order
    (`GrantConsumption`), in the posting's transaction."""

    __tablename__ = "credit_grant"
    __table_args__ = (
        sa.Index("ix_credit_grant_burn_order", "account_id", "priority", "expires_at", "id"),
        sa.CheckConstraint("remaining >= 0 AND remaining <= amount", name="ck_credit_grant_remaining"),
    )

    id: int | None = Field(default=None, sa_column=sa.Column(BigId, primary_key=True, autoincrement=True))
    account_id: int = Field(sa_column=sa.Column(sa.Integer, sa.ForeignKey("credit_account.id"), nullable=False))
    entry_id: int | None = Field(
        default=None, sa_column=sa.Column(BigId, sa.ForeignKey("ledger_entry.id"), nullable=True, index=True)
    )
    source: str = Field(sa_column=sa.Column(sa.String(16), nullable=False))
    priority: int = Field(sa_column=sa.Column(sa.SmallInteger, nullable=False))
    amount: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))  # credit units granted
    remaining: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    expires_at: datetime | None = _ts(nullable=True)
    # the purchase it came from (a refund or dispute of it removes what remains of it first)
    checkout_session_id: int | None = Field(
        default=None, sa_column=sa.Column(sa.Integer, sa.ForeignKey("checkout_session.id"), nullable=True)
    )
    expiry_notified_at: datetime | None = _ts(nullable=True)  # the 7-day warning went out
    expired_at: datetime | None = _ts(nullable=True)  # its remainder was posted as an `expiry` entry
    created_at: datetime = _ts(nullable=False)


class GrantConsumption(SQLModel, table=True):
    """Which grants a debit used, and how much of each."""

    __tablename__ = "grant_consumption"

    entry_id: int = Field(sa_column=sa.Column(BigId, sa.ForeignKey("ledger_entry.id"), primary_key=True))
    grant_id: int = Field(sa_column=sa.Column(BigId, sa.ForeignKey("credit_grant.id"), primary_key=True))
    amount: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))


class CreditHold(SQLModel, table=True):
    """A reservation for an operation in progress (a call): the available balance is the balance
    minus active holds. Captured with the actual cost (which may exceed it), released on failure,
    expired after a while."""

    __tablename__ = "credit_hold"
    __table_args__ = (
        sa.UniqueConstraint("account_id", "idempotency_key", name="uq_credit_hold_account_key"),
        sa.Index("ix_credit_hold_active", "status", "expires_at"),
    )

    id: int | None = Field(default=None, sa_column=sa.Column(BigId, primary_key=True, autoincrement=True))
    account_id: int = Field(sa_column=sa.Column(sa.Integer, sa.ForeignKey("credit_account.id"), nullable=False))
    operation: str = Field(sa_column=sa.Column(sa.String(40), nullable=False))
    model: str | None = Field(default=None, sa_column=sa.Column(sa.String(64), nullable=True))
    estimated_quantity: str = Field(sa_column=sa.Column(sa.String(40), nullable=False))  # exact decimal text
    amount: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))  # credit units reserved
    status: str = Field(sa_column=sa.Column(sa.String(16), nullable=False))  # active|captured|released|expired
    idempotency_key: str = Field(sa_column=sa.Column(sa.String(200), nullable=False))
    # what a capture said (exact decimal text): a capture sent again with another quantity is a conflict,
    # also when the first one cost less than a unit and posted no entry
    captured_quantity: str | None = Field(default=None, sa_column=sa.Column(sa.String(40), nullable=True))
    captured_entry_id: int | None = Field(
        default=None, sa_column=sa.Column(BigId, sa.ForeignKey("ledger_entry.id"), nullable=True)
    )
    actor_user_id: int | None = Field(default=None, sa_column=sa.Column(sa.Integer, nullable=True))
    expires_at: datetime = _ts(nullable=False)
    created_at: datetime = _ts(nullable=False)
    settled_at: datetime | None = _ts(nullable=True)


class BillingSession(SQLModel, table=True):
    """One usage event (a call, a chat, a batch) with its cost breakdown, linked to its ledger entry."""

    __tablename__ = "billing_session"
    __table_args__ = (sa.UniqueConstraint("account_id", "external_id", name="uq_billing_session_account_external"),)

    id: int | None = Field(default=None, primary_key=True)
    account_id: int = Field(sa_column=sa.Column(sa.Integer, sa.ForeignKey("credit_account.id"), nullable=False))
    external_id: str = Field(sa_column=sa.Column(sa.String(100), nullable=False))
    ledger_entry_id: int | None = Field(
        default=None, sa_column=sa.Column(BigId, sa.ForeignKey("ledger_entry.id"), nullable=True, index=True)
    )
    operation: str = Field(sa_column=sa.Column(sa.String(40), nullable=False))
    agent_id: str | None = Field(default=None, sa_column=sa.Column(sa.String(100), nullable=True))
    agent_name: str | None = Field(default=None, sa_column=sa.Column(sa.String(200), nullable=True))
    architecture: str | None = Field(default=None, sa_column=sa.Column(sa.String(16), nullable=True))
    # quantities are decimals kept as exact strings ("3.5" minutes)
    duration_minutes: str | None = Field(default=None, sa_column=sa.Column(sa.String(32), nullable=True))
    message_count: int | None = Field(default=None, sa_column=sa.Column(sa.Integer, nullable=True))
    started_at: datetime | None = _ts(nullable=True)
    ended_at: datetime | None = _ts(nullable=True)
    transcript: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    recording_url: str | None = Field(default=None, sa_column=sa.Column(sa.String(1000), nullable=True))
    analysis: dict | None = Field(default=None, sa_column=sa.Column(JsonType, nullable=True))
    cost_base: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False, server_default="0"))
    cost_llm: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False, server_default="0"))
    cost_stt: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False, server_default="0"))
    cost_tts: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False, server_default="0"))
    cost_total: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False, server_default="0"))
    created_at: datetime = _ts(nullable=False)


class UsageRollup(SQLModel, table=True):
    """Consumption per account, UTC day and category, kept by the ledger with every usage posting,
    so usage summaries read a few hundred rows instead of every entry."""

    __tablename__ = "usage_rollup"

    account_id: int = Field(sa_column=sa.Column(sa.Integer, sa.ForeignKey("credit_account.id"), primary_key=True))
    day: date = Field(sa_column=sa.Column(sa.Date, primary_key=True))
    category: str = Field(sa_column=sa.Column(sa.String(32), primary_key=True))
    amount: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))  # consumed units, positive
    count: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))


class UsageRemainder(SQLModel, table=True):
    """What an account owes below one ledger unit (a ten-thousandth of a credit) per operation: the
    exact costs of small reports add up here and are charged as soon as they reach a whole unit, so
    usage is never free and never charged more than its exact sum. Kept as exact decimal text."""

    __tablename__ = "usage_remainder"

    account_id: int = Field(sa_column=sa.Column(sa.Integer, sa.ForeignKey("credit_account.id"), primary_key=True))
    operation: str = Field(sa_column=sa.Column(sa.String(40), primary_key=True))
    remainder: str = Field(sa_column=sa.Column(sa.String(64), nullable=False))
    updated_at: datetime = _ts(nullable=False)


class UsageReport(SQLModel, table=True):
    """Idempotency keys of usage reports that charged nothing yet (their cost went to the remainder):
    a replay must not add it twice. Reports that posted an entry are recognised by the entry's key."""

    __tablename__ = "usage_report"

    account_id: int = Field(sa_column=sa.Column(sa.Integer, sa.ForeignKey("credit_account.id"), primary_key=True))
    idempotency_key: str = Field(sa_column=sa.Column(sa.String(200), primary_key=True))
    # what the report said (operation, quantity, model, session): a key sent again with another report
    # is a conflict, not a replay
    fingerprint: str | None = Field(default=None, sa_column=sa.Column(sa.String(64), nullable=True))
    created_at: datetime = _ts(nullable=False)


class PhoneNumber(SQLModel, table=True):
    """A rented number, billed monthly on its acquisition anniversary by the daily job."""

    __tablename__ = "phone_number"

    id: int | None = Field(default=None, primary_key=True)
    organization_id: int = Field(
        sa_column=sa.Column(sa.Integer, sa.ForeignKey("organization.id"), nullable=False, index=True)
    )
    number: str = Field(sa_column=sa.Column(sa.String(32), nullable=False, unique=True))
    monthly_cost: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))  # credit units
    acquired_at: datetime = _ts(nullable=False)
    last_billed_at: datetime | None = _ts(nullable=True)  # start of the last period billed
    released_at: datetime | None = _ts(nullable=True)
