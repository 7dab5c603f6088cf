"""What owners are told and what they set for it: emails (with attachments), outbound webhooks, the
low-balance threshold and email switches, monthly spend budgets (alerted at 50, 80 and 100 %)."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from .common import BigId, JsonType, _ts


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


class EmailAttachment(SQLModel, table=True):
    """A file sent with an outbox email (a receipt's PDF): the exact bytes that went out."""

    __tablename__ = "email_attachment"

    id: int | None = Field(default=None, primary_key=True)
    email_id: int = Field(sa_column=sa.Column(sa.Integer, sa.ForeignKey("email_outbox.id"), nullable=False, index=True))
    filename: str = Field(sa_column=sa.Column(sa.String(200), nullable=False))
    content_type: str = Field(sa_column=sa.Column(sa.String(100), nullable=False))
    content: bytes = Field(sa_column=sa.Column(sa.LargeBinary, nullable=False))


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


class NoticeWatermark(SQLModel, table=True):
    """How far the notice sweep (notice_sweep.py) has judged an account's entries: every entry with
    `seq` at or below `judged_seq` has had its low-balance crossing and its document judged. An
    account's entries commit in `seq` order (its row lock), so one number per account is exact. No
    row: judged from the account's first entry."""

    __tablename__ = "notice_watermark"

    account_id: int = Field(sa_column=sa.Column(sa.Integer, sa.ForeignKey("credit_account.id"), primary_key=True))
    judged_seq: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
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
