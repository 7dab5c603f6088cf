"""All tables, by concern in the modules of this package; import them from here. Created only through
Alembic migrations (alembic/versions/). Importing this package defines every table, so
`SQLModel.metadata` is complete (Alembic's env.py and the tests rely on it).

Money columns hold integer ten-thousandths of a credit (see money.py): exact on SQLite and
PostgreSQL alike, and cheap to add in SQL.

- common.py: the dialect-dependent column types, the timestamp column, `utcnow`
- accounts.py: organizations, users, memberships and roles, API keys, sign-in sessions, the audit log
- ledger.py: accounts, entries, grants, holds; usage events, rollups and remainders; rented numbers
- payments.py: cards, checkouts, disputes, provider events, auto-recharge; receipts and credit notes
- notifications.py: emails, outbound webhooks, notification settings, spend budgets
"""

from .accounts import ApiKey, AuditLog, AuthSession, Membership, Organization, Role, User
from .common import BigId, JsonType, utcnow
from .ledger import (
    ENTRY_KINDS,
    BillingSession,
    CreditAccount,
    CreditGrant,
    CreditHold,
    CreditSource,
    EntryType,
    GrantConsumption,
    LedgerEntry,
    PhoneNumber,
    UsageRemainder,
    UsageReport,
    UsageRollup,
)
from .notifications import (
    BudgetSpend,
    EmailAttachment,
    EmailOutbox,
    LowBalanceSetting,
    NoticeWatermark,
    NotificationPreference,
    SpendBudget,
    WebhookAttempt,
    WebhookEndpoint,
    WebhookMessage,
)
from .payments import (
    AttentionItem,
    AutoRechargePolicy,
    BillingProfile,
    CheckoutSession,
    DocumentCounter,
    PaymentDispute,
    PaymentMethod,
    Receipt,
    WebhookEvent,
)

__all__ = [
    # common
    "BigId",
    "JsonType",
    "utcnow",
    # accounts
    "Role",
    "Organization",
    "User",
    "Membership",
    "ApiKey",
    "AuthSession",
    "AuditLog",
    # ledger
    "EntryType",
    "CreditSource",
    "ENTRY_KINDS",
    "CreditAccount",
    "LedgerEntry",
    "CreditGrant",
    "GrantConsumption",
    "CreditHold",
    "BillingSession",
    "UsageRollup",
    "UsageRemainder",
    "UsageReport",
    "PhoneNumber",
    # payments
    "PaymentMethod",
    "CheckoutSession",
    "PaymentDispute",
    "WebhookEvent",
    "AttentionItem",
    "AutoRechargePolicy",
    "BillingProfile",
    "DocumentCounter",
    "Receipt",
    # notifications
    "EmailOutbox",
    "EmailAttachment",
    "WebhookEndpoint",
    "WebhookMessage",
    "WebhookAttempt",
    "LowBalanceSetting",
    "NoticeWatermark",
    "NotificationPreference",
    "SpendBudget",
    "BudgetSpend",
]
