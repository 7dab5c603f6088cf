"""Money coming in: saved cards, checkouts and saved-card charges, disputes, provider events, what needs an
operator, auto-recharge; the receipts and credit notes issued for it."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from .common import BigId, _ts


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


# -- end of receipts and credit notes -----------------------------------------------------------
