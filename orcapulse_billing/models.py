"""All tables, in one place. Created only through Alembic migrations (alembic/versions/).

Money columns hold integer ten-thousandths of a credit (see money.py): exact on SQLite and
PostgreSQL alike, and cheap to add in SQL.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from enum import Enum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlmodel import Field, SQLModel

# A 64-bit id on PostgreSQL; SQLite only auto-increments an "INTEGER PRIMARY KEY".
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JsonType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def utcnow() -> datetime:
    return datetime.now(UTC)


def _ts(**kw: Any) -> Any:
    return Field(sa_column=sa.Column(sa.DateTime(timezone=True), **kw))


class Role(str, Enum):
    owner = "owner"
    admin = "admin"
    member = "member"


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


class Organization(SQLModel, table=True):
    __tablename__ = "organization"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(sa_column=sa.Column(sa.String(200), nullable=False, unique=True))
    created_at: datetime = _ts(nullable=False)
    stripe_customer_id: str | None = Field(default=None, sa_column=sa.Column(sa.String(100), nullable=True))


class User(SQLModel, table=True):
    __tablename__ = "app_user"

    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(sa_column=sa.Column(sa.String(320), nullable=False, unique=True))
    password_hash: str = Field(sa_column=sa.Column(sa.String(200), nullable=False))
    created_at: datetime = _ts(nullable=False)


class Membership(SQLModel, table=True):
    __tablename__ = "membership"
    __table_args__ = (sa.UniqueConstraint("user_id", "organization_id", name="uq_membership_user_org"),)

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(sa_column=sa.Column(sa.Integer, sa.ForeignKey("app_user.id"), nullable=False))
    organization_id: int = Field(
        sa_column=sa.Column(sa.Integer, sa.ForeignKey("organization.id"), nullable=False, index=True)
    )
    role: str = Field(sa_column=sa.Column(sa.String(16), nullable=False))
    created_at: datetime = _ts(nullable=False)


class ApiKey(SQLModel, table=True):
    """A key acts as its user, with that user's role. `scopes` (comma-separated, see
    accounts.SCOPES) adds what a role alone does not allow a key: `usage:write` reports usage.
    A key made through the REST API is bound to the organization it was made in; one made by the
    CLI without `--org` acts in any of its user's organizations."""

    __tablename__ = "api_key"

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(sa_column=sa.Column(sa.Integer, sa.ForeignKey("app_user.id"), nullable=False, index=True))
    organization_id: int | None = Field(
        default=None, sa_column=sa.Column(sa.Integer, sa.ForeignKey("organization.id"), nullable=True, index=True)
    )
    name: str | None = Field(default=None, sa_column=sa.Column(sa.String(100), nullable=True))
    scopes: str = Field(default="", sa_column=sa.Column(sa.String(200), nullable=False, server_default=""))
    prefix: str = Field(sa_column=sa.Column(sa.String(16), nullable=False))
    key_hash: str = Field(sa_column=sa.Column(sa.String(64), nullable=False, unique=True))
    created_at: datetime = _ts(nullable=False)
    last_used_at: datetime | None = _ts(nullable=True)
    revoked_at: datetime | None = _ts(nullable=True)


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


class AuthSession(SQLModel, table=True):
    """A signed-in browser. Only the token's hash is stored; the token rides in an HttpOnly cookie."""

    __tablename__ = "auth_session"

    id: int | None = Field(default=None, primary_key=True)
    token_hash: str = Field(sa_column=sa.Column(sa.String(64), nullable=False, unique=True))
    user_id: int = Field(sa_column=sa.Column(sa.Integer, sa.ForeignKey("app_user.id"), nullable=False, index=True))
    organization_id: int = Field(sa_column=sa.Column(sa.Integer, sa.ForeignKey("organization.id"), nullable=False))
    created_at: datetime = _ts(nullable=False)
    expires_at: datetime = _ts(nullable=False)
    revoked_at: datetime | None = _ts(nullable=True)
    ip: str | None = Field(default=None, sa_column=sa.Column(sa.String(45), nullable=True))
    user_agent: str | None = Field(default=None, sa_column=sa.Column(sa.String(300), nullable=True))


class AuditLog(SQLModel, table=True):
    """Settings changes and sign-ins: who, what, when, from where. (Credit changes carry the same on
    their ledger entries.)"""

    __tablename__ = "audit_log"
    __table_args__ = (sa.Index("ix_audit_log_org_created", "organization_id", "created_at"),)

    id: int | None = Field(default=None, primary_key=True)
    organization_id: int | None = Field(
        default=None, sa_column=sa.Column(sa.Integer, sa.ForeignKey("organization.id"), nullable=True)
    )
    user_id: int | None = Field(
        default=None, sa_column=sa.Column(sa.Integer, sa.ForeignKey("app_user.id"), nullable=True)
    )
    action: str = Field(sa_column=sa.Column(sa.String(64), nullable=False))
    details: dict = Field(default_factory=dict, sa_column=sa.Column(JsonType, nullable=False))
    ip: str | None = Field(default=None, sa_column=sa.Column(sa.String(45), nullable=True))
    created_at: datetime = _ts(nullable=False)


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


class PaymentMethod(SQLModel, table=True):
    """A saved card: display data only (brand, last four, expiry), never the number."""

    __tablename__ = "payment_method"
    __table_args__ = (sa.UniqueConstraint("provider", "provider_id", name="uq_payment_method_provider_id"),)

    id: int | None = Field(default=None, primary_key=True)
    organization_id: int = Field(
        sa_column=sa.Column(sa.Integer, sa.ForeignKey("organization.id"), nullable=False, index=True)
    )
    provider: str = Field(sa_column=sa.Column(sa.String(16), nullable=False))
    provider_id: str = Field(sa_column=sa.Column(sa.String(100), nullable=False))
    brand: str = Field(sa_column=sa.Column(sa.String(32), nullable=False))
    last4: str = Field(sa_column=sa.Column(sa.String(4), nullable=False))
    exp_month: int = Field(sa_column=sa.Column(sa.Integer, nullable=False))
    exp_year: int = Field(sa_column=sa.Column(sa.Integer, nullable=False))
    is_default: bool = Field(sa_column=sa.Column(sa.Boolean, nullable=False, server_default=sa.false()))
    created_at: datetime = _ts(nullable=False)


class CheckoutSession(SQLModel, table=True):
    """A payment we started: a hosted checkout, or a saved-card charge (quick purchase, auto-recharge).
    A webhook or the reconcile job may credit it only if it matches this row, and only once: the
    status moves to `completed` in the same transaction as the ledger postings.

    Saved-card charges are written *before* the provider call (`status` charging, `provider_id`
    `attempt:<key>`) with the idempotency key every retry reuses, so a charge whose answer was lost
    can be found and settled (`unknown` until then)."""

    __tablename__ = "checkout_session"
    __table_args__ = (
        sa.UniqueConstraint("provider", "provider_id", name="uq_checkout_session_provider_id"),
        sa.UniqueConstraint("provider", "idempotency_key", name="uq_checkout_session_idempotency_key"),
        sa.Index("ix_checkout_session_payment_intent", "payment_intent_id"),
        sa.Index("ix_checkout_session_status", "status", "created_at"),
        # an organization's auto-recharge charges of the last 24 hours (the daily limit)
        sa.Index("ix_checkout_session_org_mode_created", "organization_id", "mode", "created_at"),
        # at most one saved-card charge in flight (or awaiting confirmation) per organization
        sa.Index(
            "uq_checkout_session_one_in_flight",
            "organization_id",
            unique=True,
            sqlite_where=sa.text("status IN ('charging', 'unknown')"),
            postgresql_where=sa.text("status IN ('charging', 'unknown')"),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    organization_id: int = Field(
        sa_column=sa.Column(sa.Integer, sa.ForeignKey("organization.id"), nullable=False, index=True)
    )
    user_id: int = Field(sa_column=sa.Column(sa.Integer, sa.ForeignKey("app_user.id"), nullable=False))
    provider: str = Field(sa_column=sa.Column(sa.String(16), nullable=False))
    provider_id: str = Field(sa_column=sa.Column(sa.String(100), nullable=False))
    mode: str = Field(sa_column=sa.Column(sa.String(16), nullable=False))  # payment | setup | quick | auto
    package_id: str | None = Field(default=None, sa_column=sa.Column(sa.String(32), nullable=True))
    amount: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False, server_default="0"))  # credit units
    bonus: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False, server_default="0"))
    currency: str = Field(sa_column=sa.Column(sa.String(3), nullable=False, server_default="usd"))
    # open | charging | unknown | completed | failed | expired
    status: str = Field(sa_column=sa.Column(sa.String(16), nullable=False))
    idempotency_key: str | None = Field(default=None, sa_column=sa.Column(sa.String(200), nullable=True))
    payment_intent_id: str | None = Field(default=None, sa_column=sa.Column(sa.String(100), nullable=True))
    url: str | None = Field(default=None, sa_column=sa.Column(sa.String(1000), nullable=True))
    actor_ip: str | None = Field(default=None, sa_column=sa.Column(sa.String(45), nullable=True))
    refunded: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False, server_default="0"))
    error: str | None = Field(default=None, sa_column=sa.Column(sa.String(300), nullable=True))
    created_at: datetime = _ts(nullable=False)
    completed_at: datetime | None = _ts(nullable=True)


class PaymentDispute(SQLModel, table=True):
    """A chargeback on one of our payments. Opening one takes its credits (and their bonus share)
    back once; winning it returns them once; the status moves by conditional updates only."""

    __tablename__ = "payment_dispute"
    __table_args__ = (sa.UniqueConstraint("provider", "dispute_id", name="uq_payment_dispute_provider_id"),)

    id: int | None = Field(default=None, primary_key=True)
    provider: str = Field(sa_column=sa.Column(sa.String(16), nullable=False))
    dispute_id: str = Field(sa_column=sa.Column(sa.String(100), nullable=False))
    checkout_session_id: int = Field(
        sa_column=sa.Column(sa.Integer, sa.ForeignKey("checkout_session.id"), nullable=False, index=True)
    )
    organization_id: int = Field(sa_column=sa.Column(sa.Integer, sa.ForeignKey("organization.id"), nullable=False))
    amount: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))  # credit units taken back
    bonus: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False, server_default="0"))
    status: str = Field(sa_column=sa.Column(sa.String(16), nullable=False))  # open | won | lost
    created_at: datetime = _ts(nullable=False)
    closed_at: datetime | None = _ts(nullable=True)


class WebhookEvent(SQLModel, table=True):
    """Every provider event we received, with its raw body. Replays are recognised by (provider,
    event_id); an outcome that can still change (`pending`, `waiting` for the purchase it refers to)
    is evaluated again when the event is delivered again or what it waits for arrives."""

    __tablename__ = "webhook_event"
    __table_args__ = (
        sa.UniqueConstraint("provider", "event_id", name="uq_webhook_event_provider_event"),
        sa.Index("ix_webhook_event_waiting", "outcome", "reference"),
    )

    id: int | None = Field(default=None, primary_key=True)
    provider: str = Field(sa_column=sa.Column(sa.String(16), nullable=False))
    event_id: str = Field(sa_column=sa.Column(sa.String(200), nullable=False))
    type: str = Field(sa_column=sa.Column(sa.String(80), nullable=False))
    # processed | duplicate | ignored | rejected | pending | waiting | needs_attention
    outcome: str = Field(sa_column=sa.Column(sa.String(32), nullable=False))
    detail: str | None = Field(default=None, sa_column=sa.Column(sa.String(500), nullable=True))
    organization_id: int | None = Field(default=None, sa_column=sa.Column(sa.Integer, nullable=True))
    # what a `waiting` event waits for: the payment intent or order it refers to
    reference: str | None = Field(default=None, sa_column=sa.Column(sa.String(100), nullable=True))
    payload: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    received_at: datetime = _ts(nullable=False)
    updated_at: datetime | None = _ts(nullable=True)


class AttentionItem(SQLModel, table=True):
    """Money that arrived and matched nothing we can credit safely (unknown checkout, amount or
    currency differs): kept for an operator, who is emailed, instead of being dropped."""

    __tablename__ = "attention_item"
    __table_args__ = (sa.UniqueConstraint("provider", "reference", "reason", name="uq_attention_item_reference"),)

    id: int | None = Field(default=None, primary_key=True)
    provider: str = Field(sa_column=sa.Column(sa.String(16), nullable=False))
    reference: str = Field(sa_column=sa.Column(sa.String(100), nullable=False))  # payment intent, order...
    reason: str = Field(sa_column=sa.Column(sa.String(32), nullable=False))
    detail: str = Field(sa_column=sa.Column(sa.String(500), nullable=False))
    organization_id: int | None = Field(default=None, sa_column=sa.Column(sa.Integer, nullable=True))
    amount_cents: int | None = Field(default=None, sa_column=sa.Column(sa.BigInteger, nullable=True))
    currency: str | None = Field(default=None, sa_column=sa.Column(sa.String(3), nullable=True))
    created_at: datetime = _ts(nullable=False)
    resolved_at: datetime | None = _ts(nullable=True)


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


class EmailOutbox(SQLModel, table=True):
    """Every notification email: sent through SMTP when configured, kept here either way (the
    operators' view without SMTP). `dedupe_key` makes each notification happen once."""

    __tablename__ = "email_outbox"

    id: int | None = Field(default=None, primary_key=True)
    dedupe_key: str = Field(sa_column=sa.Column(sa.String(200), nullable=False, unique=True))
    organization_id: int | None = Field(default=None, sa_column=sa.Column(sa.Integer, nullable=True, index=True))
    kind: str = Field(sa_column=sa.Column(sa.String(32), nullable=False))
    to_address: str = Field(sa_column=sa.Column(sa.String(320), nullable=False))
    subject: str = Field(sa_column=sa.Column(sa.String(300), nullable=False))
    body: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    created_at: datetime = _ts(nullable=False)
    sent_at: datetime | None = _ts(nullable=True)
    error: str | None = Field(default=None, sa_column=sa.Column(sa.String(500), nullable=True))


class AutoRechargePolicy(SQLModel, table=True):
    """Buy credits with the saved card when the balance drops below a threshold. `claimed_until`
    makes a recharge single-flight: only the trigger whose conditional UPDATE claims it charges, and
    that UPDATE claims nothing before `next_attempt_at` (the backoff after a decline, or the end of the
    daily limit). A charge the bank wants confirmed (3-D Secure) pauses it until that PaymentIntent
    (`action_payment_intent_id`, confirmed on the provider's page at `action_url`) succeeds."""

    __tablename__ = "auto_recharge_policy"

    organization_id: int = Field(sa_column=sa.Column(sa.Integer, sa.ForeignKey("organization.id"), primary_key=True))
    enabled: bool = Field(sa_column=sa.Column(sa.Boolean, nullable=False, server_default=sa.false()))
    threshold: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))  # credit units
    amount: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    monthly_cap: int | None = Field(default=None, sa_column=sa.Column(sa.BigInteger, nullable=True))
    owner_user_id: int = Field(sa_column=sa.Column(sa.Integer, sa.ForeignKey("app_user.id"), nullable=False))
    attempts: int = Field(sa_column=sa.Column(sa.Integer, nullable=False, server_default="0"))
    consecutive_failures: int = Field(sa_column=sa.Column(sa.Integer, nullable=False, server_default="0"))
    disabled_reason: str | None = Field(default=None, sa_column=sa.Column(sa.String(300), nullable=True))
    claimed_until: datetime | None = _ts(nullable=True)
    updated_at: datetime = _ts(nullable=False)
    next_attempt_at: datetime | None = _ts(nullable=True)
    last_error: str | None = Field(default=None, sa_column=sa.Column(sa.String(300), nullable=True))
    action_payment_intent_id: str | None = Field(default=None, sa_column=sa.Column(sa.String(100), nullable=True))
    action_url: str | None = Field(default=None, sa_column=sa.Column(sa.String(2000), nullable=True))


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


# -- receipts and credit notes (migration 0014) -------------------------------------------------


class BillingProfile(SQLModel, table=True):
    """The name and address an organization's receipts are made out to, edited by its owners. Without
    a row, receipts carry the organization's name and no address. Receipts copy it when issued."""

    __tablename__ = "billing_profile"

    organization_id: int = Field(sa_column=sa.Column(sa.Integer, sa.ForeignKey("organization.id"), primary_key=True))
    name: str = Field(sa_column=sa.Column(sa.String(200), nullable=False))
    address_line1: str = Field(default="", sa_column=sa.Column(sa.String(200), nullable=False, server_default=""))
    address_line2: str = Field(default="", sa_column=sa.Column(sa.String(200), nullable=False, server_default=""))
    city: str = Field(default="", sa_column=sa.Column(sa.String(100), nullable=False, server_default=""))
    region: str = Field(default="", sa_column=sa.Column(sa.String(100), nullable=False, server_default=""))
    postal_code: str = Field(default="", sa_column=sa.Column(sa.String(32), nullable=False, server_default=""))
    country: str = Field(default="", sa_column=sa.Column(sa.String(100), nullable=False, server_default=""))
    tax_id: str = Field(default="", sa_column=sa.Column(sa.String(64), nullable=False, server_default=""))
    updated_by_user_id: int | None = Field(
        default=None, sa_column=sa.Column(sa.Integer, sa.ForeignKey("app_user.id"), nullable=True)
    )
    updated_at: datetime = _ts(nullable=False)


class DocumentCounter(SQLModel, table=True):
    """The last number issued in a series (`receipt`, `credit_note`), one row each, per deployment.
    Taken by `UPDATE ... SET last_number = last_number + 1 RETURNING` in the transaction that issues
    the document: the row lock queues issuers, and a rollback gives the number back, so the numbers
    have no gaps and are never reused (a database sequence would leave gaps)."""

    __tablename__ = "document_counter"

    series: str = Field(sa_column=sa.Column(sa.String(16), primary_key=True))
    last_number: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False, server_default="0"))


class Receipt(SQLModel, table=True):
    """A receipt for a completed top-up (`kind` receipt) or a credit note for money that went back
    (`kind` credit_note, `refers_to_id` its receipt). Immutable once issued: the billing name and
    address, amounts, payment method and provider reference are copied here at issue time, so the
    PDF is the same whenever it is rendered."""

    __tablename__ = "receipt"
    __table_args__ = (
        sa.UniqueConstraint("kind", "number", name="uq_receipt_kind_number"),
        sa.Index("ix_receipt_org_issued", "organization_id", "issued_at", "id"),
        # one receipt per purchase (credit notes: one per movement, see ledger_entry_id)
        sa.Index(
            "uq_receipt_one_per_purchase",
            "checkout_session_id",
            unique=True,
            sqlite_where=sa.text("kind = 'receipt'"),
            postgresql_where=sa.text("kind = 'receipt'"),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(sa_column=sa.Column(sa.String(16), nullable=False))  # receipt | credit_note
    number: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    organization_id: int = Field(sa_column=sa.Column(sa.Integer, sa.ForeignKey("organization.id"), nullable=False))
    checkout_session_id: int = Field(
        sa_column=sa.Column(sa.Integer, sa.ForeignKey("checkout_session.id"), nullable=False)
    )
    refers_to_id: int | None = Field(
        default=None, sa_column=sa.Column(sa.Integer, sa.ForeignKey("receipt.id"), nullable=True)
    )
    # the history entry it belongs to (the purchase's credit, the refund's debit)
    ledger_entry_id: int | None = Field(
        default=None, sa_column=sa.Column(BigId, sa.ForeignKey("ledger_entry.id"), nullable=True, unique=True)
    )
    reason: str | None = Field(default=None, sa_column=sa.Column(sa.String(100), nullable=True))
    description: str = Field(sa_column=sa.Column(sa.String(200), nullable=False))
    amount: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))  # credit units paid (or refunded)
    bonus: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False, server_default="0"))
    currency: str = Field(sa_column=sa.Column(sa.String(3), nullable=False))
    provider: str = Field(sa_column=sa.Column(sa.String(16), nullable=False))
    provider_reference: str | None = Field(default=None, sa_column=sa.Column(sa.String(100), nullable=True))
    payment_method: str = Field(sa_column=sa.Column(sa.String(100), nullable=False))  # as printed
    payment_brand: str | None = Field(default=None, sa_column=sa.Column(sa.String(32), nullable=True))
    payment_last4: str | None = Field(default=None, sa_column=sa.Column(sa.String(4), nullable=True))
    billing_name: str = Field(sa_column=sa.Column(sa.String(200), nullable=False))
    billing_address_line1: str = Field(sa_column=sa.Column(sa.String(200), nullable=False, server_default=""))
    billing_address_line2: str = Field(sa_column=sa.Column(sa.String(200), nullable=False, server_default=""))
    billing_city: str = Field(sa_column=sa.Column(sa.String(100), nullable=False, server_default=""))
    billing_region: str = Field(sa_column=sa.Column(sa.String(100), nullable=False, server_default=""))
    billing_postal_code: str = Field(sa_column=sa.Column(sa.String(32), nullable=False, server_default=""))
    billing_country: str = Field(sa_column=sa.Column(sa.String(100), nullable=False, server_default=""))
    billing_tax_id: str = Field(sa_column=sa.Column(sa.String(64), nullable=False, server_default=""))
    issued_at: datetime = _ts(nullable=False)


class EmailAttachment(SQLModel, table=True):
    """A file sent with an outbox email (a receipt's PDF): the exact bytes that went out."""

    __tablename__ = "email_attachment"

    id: int | None = Field(default=None, primary_key=True)
    email_id: int = Field(sa_column=sa.Column(sa.Integer, sa.ForeignKey("email_outbox.id"), nullable=False, index=True))
    filename: str = Field(sa_column=sa.Column(sa.String(200), nullable=False))
    content_type: str = Field(sa_column=sa.Column(sa.String(100), nullable=False))
    content: bytes = Field(sa_column=sa.Column(sa.LargeBinary, nullable=False))


# -- end of receipts and credit notes -----------------------------------------------------------


# -- outbound webhooks (webhooks/) --------------------------------------------------------------


class WebhookEndpoint(SQLModel, table=True):
    """An owner's HTTPS endpoint that receives the organization's events, signed as Standard Webhooks
    says with its own secret (`whsec_...`, shown once when it is created). Removing one sets
    `deleted_at` (its delivery log stays readable) and cancels what it had not received yet."""

    __tablename__ = "webhook_endpoint"
    __table_args__ = (sa.Index("ix_webhook_endpoint_org", "organization_id", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    organization_id: int = Field(sa_column=sa.Column(sa.Integer, sa.ForeignKey("organization.id"), nullable=False))
    url: str = Field(sa_column=sa.Column(sa.String(2000), nullable=False))
    description: str = Field(sa_column=sa.Column(sa.String(200), nullable=False, server_default=""))
    event_types: list[str] = Field(sa_column=sa.Column(JsonType, nullable=False))
    secret: str = Field(sa_column=sa.Column(sa.String(100), nullable=False))
    enabled: bool = Field(sa_column=sa.Column(sa.Boolean, nullable=False, server_default=sa.true()))
    created_by_user_id: int | None = Field(
        default=None, sa_column=sa.Column(sa.Integer, sa.ForeignKey("app_user.id"), nullable=True)
    )
    created_at: datetime = _ts(nullable=False)
    deleted_at: datetime | None = _ts(nullable=True)


class WebhookMessage(SQLModel, table=True):
    """The outbox: one event for one endpoint, written in the transaction of the change it reports.
    `msg_id` is the `webhook-id` header, the same on every attempt (receivers dedupe on it), and
    `payload` the exact body sent each time. Due while `status` is pending and `next_attempt_at` has
    passed; a sender claims it by moving `next_attempt_at` a lease ahead and counting the attempt."""

    __tablename__ = "webhook_message"
    __table_args__ = (
        sa.UniqueConstraint("endpoint_id", "msg_id", name="uq_webhook_message_endpoint_msg"),
        sa.Index("ix_webhook_message_due", "status", "next_attempt_at"),
        sa.Index("ix_webhook_message_org", "organization_id", "id"),
    )

    id: int | None = Field(default=None, sa_column=sa.Column(BigId, primary_key=True, autoincrement=True))
    endpoint_id: int = Field(sa_column=sa.Column(sa.Integer, sa.ForeignKey("webhook_endpoint.id"), nullable=False))
    organization_id: int = Field(sa_column=sa.Column(sa.Integer, sa.ForeignKey("organization.id"), nullable=False))
    event_type: str = Field(sa_column=sa.Column(sa.String(64), nullable=False))
    msg_id: str = Field(sa_column=sa.Column(sa.String(64), nullable=False))
    payload: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    status: str = Field(sa_column=sa.Column(sa.String(16), nullable=False))  # pending|delivered|failed|cancelled
    attempts: int = Field(sa_column=sa.Column(sa.Integer, nullable=False, server_default="0"))
    next_attempt_at: datetime = _ts(nullable=False)
    last_attempt_at: datetime | None = _ts(nullable=True)
    last_status_code: int | None = Field(default=None, sa_column=sa.Column(sa.Integer, nullable=True))
    last_error: str | None = Field(default=None, sa_column=sa.Column(sa.String(300), nullable=True))
    created_at: datetime = _ts(nullable=False)
    finished_at: datetime | None = _ts(nullable=True)


class WebhookAttempt(SQLModel, table=True):
    """The delivery log: each attempt to send a message, with the response code (or the error)."""

    __tablename__ = "webhook_attempt"
    __table_args__ = (sa.Index("ix_webhook_attempt_message", "message_id", "attempt"),)

    id: int | None = Field(default=None, sa_column=sa.Column(BigId, primary_key=True, autoincrement=True))
    message_id: int = Field(sa_column=sa.Column(BigId, sa.ForeignKey("webhook_message.id"), nullable=False))
    attempt: int = Field(sa_column=sa.Column(sa.Integer, nullable=False))
    status_code: int | None = Field(default=None, sa_column=sa.Column(sa.Integer, nullable=True))
    error: str | None = Field(default=None, sa_column=sa.Column(sa.String(300), nullable=True))
    duration_ms: int = Field(sa_column=sa.Column(sa.Integer, nullable=False))
    attempted_at: datetime = _ts(nullable=False)


# -- end of outbound webhooks -------------------------------------------------------------------


# -- notification settings (low_balance.py, notification_preferences.py; migration 0017) --------


class LowBalanceSetting(SQLModel, table=True):
    """An organization's own low-balance threshold, set by its owners: a fixed amount (`amount`, in
    units) or a percentage of the last top-up (`percent`). Without a row the deployment's
    LOW_BALANCE_THRESHOLD applies."""

    __tablename__ = "low_balance_setting"

    organization_id: int = Field(sa_column=sa.Column(sa.Integer, sa.ForeignKey("organization.id"), primary_key=True))
    mode: str = Field(sa_column=sa.Column(sa.String(16), nullable=False))  # "amount" | "percent"
    amount: int | None = Field(default=None, sa_column=sa.Column(sa.BigInteger, nullable=True))
    percent: int | None = Field(default=None, sa_column=sa.Column(sa.Integer, nullable=True))
    updated_by_user_id: int | None = Field(
        default=None, sa_column=sa.Column(sa.Integer, sa.ForeignKey("app_user.id"), nullable=True)
    )
    updated_at: datetime = _ts(nullable=False)


class NotificationPreference(SQLModel, table=True):
    """One owner's choice for one category of emails in one organization. Without a row the category
    is on (the default), so a category added later reaches everyone until they turn it off."""

    __tablename__ = "notification_preference"

    organization_id: int = Field(sa_column=sa.Column(sa.Integer, sa.ForeignKey("organization.id"), primary_key=True))
    user_id: int = Field(sa_column=sa.Column(sa.Integer, sa.ForeignKey("app_user.id"), primary_key=True))
    category: str = Field(sa_column=sa.Column(sa.String(32), primary_key=True))
    enabled: bool = Field(sa_column=sa.Column(sa.Boolean, nullable=False))
    updated_at: datetime = _ts(nullable=False)


# -- spend budgets (budgets.py, budget_settings.py; migration 0018) ---------------------------------


class SpendBudget(SQLModel, table=True):
    """An owner's monthly spend budget (ledger units) for the organization, one of its API keys or one
    of its members (`target`: 'organization', 'api_key:<id>', 'member:<user id>'). `hard_stop` refuses
    usage and holds that would take the month's spend past it."""

    __tablename__ = "spend_budget"
    __table_args__ = (sa.UniqueConstraint("account_id", "target", name="uq_spend_budget_account_target"),)

    id: int | None = Field(default=None, primary_key=True)
    organization_id: int = Field(sa_column=sa.Column(sa.Integer, sa.ForeignKey("organization.id"), nullable=False))
    account_id: int = Field(sa_column=sa.Column(sa.Integer, sa.ForeignKey("credit_account.id"), nullable=False))
    target: str = Field(sa_column=sa.Column(sa.String(40), nullable=False))
    api_key_id: int | None = Field(
        default=None, sa_column=sa.Column(sa.Integer, sa.ForeignKey("api_key.id"), nullable=True)
    )
    user_id: int | None = Field(
        default=None, sa_column=sa.Column(sa.Integer, sa.ForeignKey("app_user.id"), nullable=True)
    )
    amount: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    hard_stop: bool = Field(sa_column=sa.Column(sa.Boolean, nullable=False, server_default=sa.false()))
    created_by_user_id: int | None = Field(
        default=None, sa_column=sa.Column(sa.Integer, sa.ForeignKey("app_user.id"), nullable=True)
    )
    created_at: datetime = _ts(nullable=False)
    updated_at: datetime = _ts(nullable=False)


class BudgetSpend(SQLModel, table=True):
    """A budget's spend in one calendar month (UTC, 'YYYY-MM'), moved in each usage posting's
    transaction under the account row's lock; `alerted` is the highest threshold (50, 80, 100) whose
    alert was written this month, so each is written once."""

    __tablename__ = "budget_spend"

    budget_id: int = Field(
        sa_column=sa.Column(sa.Integer, sa.ForeignKey("spend_budget.id", ondelete="CASCADE"), primary_key=True)
    )
    month: str = Field(sa_column=sa.Column(sa.String(7), primary_key=True))
    spent: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False, server_default="0"))
    alerted: int = Field(sa_column=sa.Column(sa.Integer, nullable=False, server_default="0"))
