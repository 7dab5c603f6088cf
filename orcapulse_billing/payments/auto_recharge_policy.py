"""Auto-recharge's rules and what it reads and writes of its policy, without the provider calls.

- **How much:** the larger of the configured amount and what brings the balance back up to the
  threshold, counting what recharges already in flight will add (`recharge_amount`), so a deep drop
  makes one charge, not one charge per configured amount.
- **When not:** after a decline it waits (`BACKOFF`: 1 h after the first, 6 h after the second; the
  third in a row pauses it, as before); never more than `DAILY_LIMIT` charges in any 24 hours,
  counted from the auto-recharge payments themselves (`charges_since`).
- **Paused for the bank:** a charge that needs the owner's authentication (3-D Secure) pauses it until
  that payment is confirmed; `resume_confirmed` turns it back on, in the transaction that credits that
  payment, and only for that payment: buying credits by hand never turns auto-recharge back on.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlmodel import col

from ..models import AutoRechargePolicy, CheckoutSession
from ..money import from_units, to_units
from .flow import after_commit, table_of

MIN_THRESHOLD = Decimal(5)
MIN_AMOUNT = Decimal(20)
MAX_AMOUNT = Decimal(1000)
MAX_THRESHOLD = Decimal(10_000)
MAX_CHARGE = Decimal(10_000)  # one charge closing a gap never exceeds this (the next one goes on)
# a claim outlives its charge's provider calls at their slowest (the charge and, for 3-D Secure, the
# confirmation: each up to STRIPE_TIMEOUT_SECONDS x (1 + STRIPE_NETWORK_RETRIES), 30 s x 3 by default); it
# is released as soon as they end, so this only delays the next claim after a process died holding one
CLAIM_FOR = timedelta(minutes=5)
MAX_FAILURES = 3  # in a row: then it pauses until an owner turns it back on
BACKOFF = (timedelta(hours=1), timedelta(hours=6), timedelta(hours=24))  # after the 1st, 2nd, 3rd+ decline
DAILY_LIMIT = 4  # charges in any 24 hours, whatever the traffic
DAY = timedelta(hours=24)
UNITS_PER_CENT = 100


@dataclass(frozen=True)
class Policy:
    """An organization's auto-recharge as its faces show it. `next_attempt_at`: no charge before then
    (a decline's backoff or the daily limit), only while in the future; `last_error`: why the last
    charge failed; `action_url`: where the owner confirms a charge the bank wants authenticated;
    `recharge`: what the recharge an owner's change started at once did (`charged`, `failed`...)."""

    enabled: bool
    threshold: Decimal
    amount: Decimal
    monthly_cap: Decimal | None
    consecutive_failures: int
    disabled_reason: str | None
    next_attempt_at: datetime | None = None
    last_error: str | None = None
    action_url: str | None = None
    charges_last_24h: int = 0
    recharge: str | None = None


def now() -> datetime:
    return datetime.now(UTC)


def aware(value: datetime | None) -> datetime | None:
    """SQLite gives naive UTC datetimes back."""
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def backoff_after(failures: int) -> timedelta:
    """How long to wait after the `failures`-th decline in a row (1 or more)."""
    return BACKOFF[min(max(failures, 1), len(BACKOFF)) - 1]


def recharge_amount(*, balance: int, in_flight: int, threshold: int, amount: int) -> int:
    """Ledger units to charge: 0 when the balance plus what is in flight is not below the threshold,
    else the larger of the configured `amount` and the whole cents that bring it back up to the
    threshold (no longer below it), capped at MAX_CHARGE."""
    expected = balance + in_flight
    if expected >= threshold:
        return 0
    gap_cents = -(-(threshold - expected) // UNITS_PER_CENT)
    return min(max(amount, gap_cents * UNITS_PER_CENT), to_units(MAX_CHARGE))


def charges_since(conn: Connection, organization_id: int, since: datetime) -> tuple[int, datetime | None]:
    """How many auto-recharge charges were started since then, and when the first of them was."""
    count, first = conn.execute(
        sa.select(sa.func.count(), sa.func.min(col(CheckoutSession.created_at))).where(
            col(CheckoutSession.organization_id) == organization_id,
            col(CheckoutSession.mode) == "auto",
            col(CheckoutSession.created_at) >= since,
        )
    ).one()
    return int(count), aware(first)


def in_flight_units(conn: Connection, organization_id: int) -> int:
    """What saved-card charges not yet confirmed will add (at most one: the one-in-flight index)."""
    return int(
        conn.execute(
            sa.select(sa.func.coalesce(sa.func.sum(col(CheckoutSession.amount) + col(CheckoutSession.bonus)), 0)).where(
                col(CheckoutSession.organization_id) == organization_id,
                col(CheckoutSession.mode).in_(("auto", "quick")),
                col(CheckoutSession.status).in_(("charging", "unknown")),
            )
        ).scalar()
        or 0
    )


def policy_row(conn: Connection, organization_id: int) -> Any:
    return conn.execute(
        sa.select(table_of(AutoRechargePolicy)).where(col(AutoRechargePolicy.organization_id) == organization_id)
    ).first()


def read_policy(conn: Connection, organization_id: int, at: datetime | None = None) -> Policy:
    at = at or now()
    row = policy_row(conn, organization_id)
    if row is None:
        return Policy(False, Decimal(10), Decimal(50), None, 0, None)
    count, _ = charges_since(conn, organization_id, at - DAY)
    next_at = aware(row.next_attempt_at)
    return Policy(
        row.enabled,
        from_units(row.threshold),
        from_units(row.amount),
        from_units(row.monthly_cap) if row.monthly_cap is not None else None,
        row.consecutive_failures,
        row.disabled_reason,
        next_at if row.enabled and next_at is not None and next_at > at else None,
        row.last_error,
        row.action_url if row.action_payment_intent_id else None,
        count,
    )


def resume_confirmed(conn: Connection, organization_id: int, payment_intent_id: str) -> bool:
    """The charge auto-recharge paused for was confirmed (and is being credited in this transaction):
    auto-recharge is on again, afresh. Only for that payment: any other purchase changes nothing."""
    t = table_of(AutoRechargePolicy)
    resumed = bool(
        conn.execute(
            sa.update(t)
            .where(t.c.organization_id == organization_id, t.c.action_payment_intent_id == payment_intent_id)
            .values(
                enabled=True,
                disabled_reason=None,
                action_payment_intent_id=None,
                action_url=None,
                consecutive_failures=0,
                next_attempt_at=None,
                last_error=None,
                updated_at=now(),
            )
        ).rowcount
    )
    if resumed:
        engine = conn.engine
        after_commit(conn, lambda: _email_resumed(engine, organization_id, payment_intent_id))
    return resumed


def _email_resumed(engine: Engine, organization_id: int, payment_intent_id: str) -> None:
    from ..services import get_notifier

    get_notifier(engine).notify_owners(
        organization_id,
        "auto_recharge_resumed",
        f"auto-recharge:{organization_id}:confirmed:{payment_intent_id}",
        "Payment confirmed: auto-recharge is on again",
        "The auto-recharge payment you confirmed with your bank went through and its credits were added. "
        "Auto-recharge is on again.\n",
    )
