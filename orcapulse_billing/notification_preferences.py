"""Which emails each owner gets: one switch per category, per owner and organization.

Every email to owners goes through Notifier.notify_owners with a `kind`; KIND_CATEGORIES maps each
kind to the category whose switch decides it, so every sender honours the choice without knowing
of it. All categories are on until an owner turns one off (no row: on).

Some emails always go (ALWAYS_SENT): a payment waiting for an owner's 3-D Secure confirmation (the
link is the only way to finish it, and auto-recharge stays paused until then) and a disputed payment
(credits were taken back by the card's issuer). A kind nobody mapped is sent too, and logged:
a new email is never lost silently.

Only owners get billing emails (admins and members get none), so only owners have preferences.

Framework-free.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from .auth import Principal, audit
from .billing_profile import table_of
from .db import dialect_insert, writer
from .models import NotificationPreference

log = logging.getLogger(__name__)

# key -> (label, what it covers), in the order shown
CATEGORIES: dict[str, tuple[str, str]] = {
    "low_balance": ("Low balance", "The balance fell below the low-balance threshold"),
    "balance_recovered": ("Balance recovered", "The balance is back at or above the threshold"),
    "auto_recharge": ("Auto-recharge", "Charges made, declined cards, pauses and the daily limit"),
    "receipts": ("Receipts and credit notes", "Each purchase's receipt and each refund's credit note, as PDF"),
    "budget_alerts": ("Budget alerts", "Spend reaching 50%, 80% and 100% of a monthly budget"),
    "expiring_credits": ("Expiring credits", "Credits that expire soon"),
}
KIND_CATEGORIES = {
    "low_balance": "low_balance",
    "balance_recovered": "balance_recovered",
    "auto_recharge_succeeded": "auto_recharge",
    "auto_recharge_failed": "auto_recharge",
    "auto_recharge_daily_limit": "auto_recharge",
    "auto_recharge_resumed": "auto_recharge",
    "receipt": "receipts",
    "credit_note": "receipts",
    "budget_alert": "budget_alerts",
    "credits_expiring": "expiring_credits",
}
ALWAYS_SENT = ("auto_recharge_action_required", "payment_disputed")
PREFERENCES = table_of(NotificationPreference)


class PreferenceError(ValueError):
    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def category_of(kind: str) -> str | None:
    """The category deciding an email of this kind; None: it always goes."""
    category = KIND_CATEGORIES.get(kind)
    if category is None and kind not in ALWAYS_SENT:
        log.warning("email kind %r has no notification category: sent to every owner", kind)
    return category


def validate_changes(data: Mapping[str, Any]) -> dict[str, bool]:
    """{category: true|false, ...}: some or all categories; PreferenceError names the first wrong one."""
    if not data:
        raise PreferenceError("give at least one category to turn on or off")
    changes = {}
    for key, value in data.items():
        if key not in CATEGORIES:
            raise PreferenceError(f"unknown category {key!r}; known: {', '.join(CATEGORIES)}")
        if not isinstance(value, bool):
            raise PreferenceError(f"{key} must be true or false")
        changes[key] = value
    return changes


def get_preferences(conn: Connection, organization_id: int, user_id: int) -> dict[str, bool]:
    """Every category's switch for this owner (the default, on, where none was saved)."""
    saved = {
        r.category: bool(r.enabled)
        for r in conn.execute(
            sa.select(PREFERENCES.c.category, PREFERENCES.c.enabled).where(
                PREFERENCES.c.organization_id == organization_id, PREFERENCES.c.user_id == user_id
            )
        )
    }
    return {category: saved.get(category, True) for category in CATEGORIES}


def save_preferences(conn: Connection, organization_id: int, user_id: int, changes: Mapping[str, bool]) -> None:
    """Writes the given switches in the caller's transaction (the others keep theirs)."""
    now = datetime.now(UTC)
    for category, enabled in changes.items():
        conn.execute(
            dialect_insert(conn, PREFERENCES)
            .values(
                organization_id=organization_id, user_id=user_id, category=category, enabled=enabled, updated_at=now
            )
            .on_conflict_do_update(
                index_elements=["organization_id", "user_id", "category"], set_={"enabled": enabled, "updated_at": now}
            )
        )


def save_audited(engine: Engine, principal: Principal, changes: Mapping[str, bool], ip: str | None) -> None:
    """An owner's change to their own switches (REST, the page) and its audit line, in one transaction."""
    with writer(engine).begin() as conn:
        save_preferences(conn, principal.organization_id, principal.user_id, changes)
        audit(
            conn,
            "notification_preferences_updated",
            organization_id=principal.organization_id,
            user_id=principal.user_id,
            ip=ip,
            **changes,
        )


def muted_by(organization_id: int, category: str) -> sa.Select[tuple[int]]:
    """The users of the organization who turned `category` off (a subquery of user ids)."""
    return sa.select(PREFERENCES.c.user_id).where(
        PREFERENCES.c.organization_id == organization_id,
        PREFERENCES.c.category == category,
        PREFERENCES.c.enabled.is_(False),
    )
