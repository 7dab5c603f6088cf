"""Credit grants as people see them, and the expiry job.

The ledger (ledger.py) makes a grant of every credit and consumes grants with every debit, in burn
order, in the posting's transaction. Here: the grants of an account (API, page), what a debit used
(the history row's detail), the soonest expiry (the page's line under the header), and the job that
posts an `expiry` entry for what remains of each expired grant and emails the owners 7 days before.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from .db import as_utc, writer
from .ledger import Ledger, day_label
from .models import CreditAccount, CreditGrant, GrantConsumption, Organization
from .money import fmt_balance

log = logging.getLogger(__name__)
WARN_BEFORE = timedelta(days=7)
EXPIRY_EVERY_SECONDS = 300

SOURCE_LABELS = {
    "promotional": "promotional credits",
    "welcome": "welcome credits",
    "bonus": "bonus credits",
    "purchase": "purchased credits",
    "manual": "credits granted by support",
    "refund": "returned credits",
    "migrated": "earlier credits",
}


def end_of_day(day_text: str, now: datetime | None = None) -> datetime:
    """A `YYYY-MM-DD` expiry date as the last instant of that day, UTC; it must be in the future.
    ValueError (one line) otherwise."""
    try:
        day = datetime.strptime(day_text, "%Y-%m-%d").date()
    except ValueError:
        raise ValueError(f"not a date (YYYY-MM-DD): {day_text!r}") from None
    moment = datetime.combine(day, datetime.max.time(), tzinfo=UTC).replace(microsecond=0)
    if moment <= (now or datetime.now(UTC)):
        raise ValueError(f"the expiry date {day_text} is not in the future")
    return moment


@dataclass(frozen=True)
class GrantView:
    id: int
    source: str
    priority: int
    amount_units: int
    remaining_units: int
    expires_at: datetime | None
    expired_at: datetime | None
    created_at: datetime

    @property
    def active(self) -> bool:
        return self.remaining_units > 0 and self.expired_at is None


def list_grants(conn: Connection, account_id: int) -> list[GrantView]:
    """Every grant of the account: active ones first in burn order, then the spent and expired ones,
    newest first."""
    t = CreditGrant.__table__
    rows = conn.execute(sa.select(t).where(t.c.account_id == account_id)).all()
    grants = [
        GrantView(
            id=r.id,
            source=r.source,
            priority=r.priority,
            amount_units=r.amount,
            remaining_units=r.remaining,
            expires_at=as_utc(r.expires_at) if r.expires_at else None,
            expired_at=as_utc(r.expired_at) if r.expired_at else None,
            created_at=as_utc(r.created_at),
        )
        for r in rows
    ]
    active = sorted(
        (g for g in grants if g.active),
        key=lambda g: (g.priority, g.expires_at is None, g.expires_at or g.created_at, g.id),
    )
    spent = sorted((g for g in grants if not g.active), key=lambda g: g.id, reverse=True)
    return active + spent


def soonest_expiry(conn: Connection, account_id: int) -> tuple[int, datetime] | None:
    """The credits left in the active grant that expires first (with any others expiring the same
    instant), and when: for the page's "x credits expire on DATE"."""
    t = CreditGrant.__table__
    first = conn.execute(
        sa.select(sa.func.min(t.c.expires_at)).where(
            t.c.account_id == account_id, t.c.remaining > 0, t.c.expired_at.is_(None), t.c.expires_at.is_not(None)
        )
    ).scalar()
    if first is None:
        return None
    units = conn.execute(
        sa.select(sa.func.sum(t.c.remaining)).where(
            t.c.account_id == account_id, t.c.remaining > 0, t.c.expired_at.is_(None), t.c.expires_at == first
        )
    ).scalar()
    return int(units or 0), as_utc(first)


def consumed_by(conn: Connection, entry_id: int) -> list[str]:
    """What a debit used, one line per grant in burn order: "$0.50 from promotional credits expiring
    Jan 31, 2027"."""
    g, c = CreditGrant.__table__, GrantConsumption.__table__
    rows = conn.execute(
        sa.select(c.c.amount, g.c.source, g.c.expires_at, g.c.created_at, g.c.priority, g.c.id)
        .join(g, g.c.id == c.c.grant_id)
        .where(c.c.entry_id == entry_id)
    ).all()
    rows.sort(key=lambda r: (r.priority, r.expires_at is None, r.expires_at or r.created_at, r.id))
    lines = []
    for r in rows:
        what = SOURCE_LABELS.get(r.source, f"{r.source} credits")
        when = f" expiring {day_label(as_utc(r.expires_at))}" if r.expires_at else ""
        lines.append(f"{fmt_balance(r.amount)} from {what}{when}")
    return lines


# -- the job ----------------------------------------------------------------------------------


@dataclass
class ExpiryRun:
    expired: list[str] = field(default_factory=list)  # descriptions of the new expiry entries
    warned: int = 0  # grants whose owners were emailed


def expire_credits(engine: Engine, ledger: Ledger, now: datetime | None = None) -> ExpiryRun:
    """Posts the remainder of every grant expired by `now` (once: `expired_at`, and the entry's key
    `expiry:<grant id>`), and emails the owners of every grant expiring within 7 days (once:
    `expiry_notified_at`, and the email's dedupe key)."""
    from .services import get_notifier

    moment = as_utc(now) if now else datetime.now(UTC)
    run = ExpiryRun()
    t = CreditGrant.__table__
    with engine.connect() as conn:
        due = conn.execute(
            sa.select(t.c.id).where(t.c.expires_at <= moment, t.c.expired_at.is_(None)).order_by(t.c.id)
        ).scalars()
        due_ids = list(due)
    for grant_id in due_ids:
        entry = ledger.expire_grant(grant_id, now=moment)
        if entry is not None and not entry.replayed:
            run.expired.append(entry.description)

    with engine.connect() as conn:
        soon = conn.execute(
            sa.select(
                t.c.id, t.c.source, t.c.remaining, t.c.expires_at, CreditAccount.organization_id, Organization.name
            )
            .join(CreditAccount, CreditAccount.id == t.c.account_id)
            .join(Organization, Organization.id == CreditAccount.organization_id)
            .where(
                t.c.expires_at > moment,
                t.c.expires_at <= moment + WARN_BEFORE,
                t.c.expiry_notified_at.is_(None),
                t.c.expired_at.is_(None),
                t.c.remaining > 0,
            )
            .order_by(t.c.id)
        ).all()
    notifier = get_notifier(engine)
    for grant in soon:
        when = day_label(as_utc(grant.expires_at))
        left = fmt_balance(grant.remaining)
        what = SOURCE_LABELS.get(grant.source, f"{grant.source} credits")
        notifier.notify_owners(
            grant.organization_id,
            "credits_expiring",
            f"grant-expiry:{grant.id}",
            f"{left} of {what} expire on {when}",
            f"{left} of {what} of {grant.name} expire on {when} (end of day, UTC). Credits that expire are "
            "spent first: calls made before then use them before any other credits.\n",
        )
        with writer(engine).begin() as conn:
            conn.execute(
                sa.update(t)
                .where(t.c.id == grant.id, t.c.expiry_notified_at.is_(None))
                .values(expiry_notified_at=moment)
            )
        run.warned += 1
    return run


async def credit_expiry_loop(every_seconds: int = EXPIRY_EVERY_SECONDS) -> None:
    """Lifespan task: every 5 minutes, once per deployment (the job lock), expire what is due and
    warn about what expires within 7 days. Each round is idempotent: a rerun or two runners post
    and email nothing twice."""
    from .config import get_settings
    from .db import get_engine
    from .jobs import _locked_round
    from .services import get_ledger

    while True:
        try:
            run = await asyncio.to_thread(
                _locked_round,
                get_engine(),
                "credit-expiry",
                get_settings().redis_url,
                lambda engine: expire_credits(engine, get_ledger(engine)),
                every_seconds,
            )
            if run is not None and (run.expired or run.warned):
                log.info("credit expiry: %d grants expired, %d warned", len(run.expired), run.warned)
        except Exception:  # keep the schedule; the next round catches up
            log.exception("credit expiry failed")
        await asyncio.sleep(every_seconds)
