"""Money going back: refunds, chargebacks (disputes) and payments that failed after we credited them.

Each takes back the credits it concerns and their share of the purchase's volume bonus (a full refund
takes all of the bonus), exactly once, in any order with the others: the purchase row is locked
first (`SELECT … FOR UPDATE` on PostgreSQL; SQLite's write transactions are already serial), so two
events for one charge processed at the same time cannot both compute from the same old total.
Debits here may take the balance below zero: the money has already gone back to the card.

A refund, and a reversal, issues a credit note referring to the purchase's receipt (receipts.py), in
the same transaction; a refund that failed afterwards gets one of a negative amount (what the earlier
note said was refunded was not); a chargeback issues none (the bank took the money back: the dispute
is the record).
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .. import webhooks
from ..ledger import NO_FLOOR, DbRow, Ledger, PostedEntry, Posting, get_account
from ..models import AutoRechargePolicy, CheckoutSession, CreditSource, EntryType, PaymentDispute
from ..money import fmt4
from ..receipts import issue_credit_note
from .events import Outcome
from .flow import PROVIDER_NAMES, UNITS_PER_CENT, bonus_share, now, table_of


def lock_purchase(conn: Connection, row_id: int) -> DbRow:
    t = table_of(CheckoutSession)
    return conn.execute(sa.select(t).where(t.c.id == row_id).with_for_update()).one()


def _disputed(conn: Connection, row: DbRow) -> int:
    """Credits held by open or lost disputes of this purchase."""
    t = table_of(PaymentDispute)
    taken = conn.execute(
        sa.select(sa.func.coalesce(sa.func.sum(t.c.amount), 0)).where(
            t.c.checkout_session_id == row.id, t.c.status.in_(("open", "lost"))
        )
    ).scalar()
    return int(taken or 0)


def _move(
    ledger: Ledger,
    conn: Connection,
    row: DbRow,
    credits: int,
    bonus: int,
    *,
    entry_type: EntryType,
    what: str,
    key: str,
    metadata: Mapping[str, Any],
) -> list[PostedEntry]:
    """Posts `credits` and `bonus` units (negative: taken back; positive: returned) for a purchase."""
    account_id = get_account(conn, organization_id=row.organization_id).id
    name = PROVIDER_NAMES.get(row.provider, row.provider)
    meta = {"provider": row.provider, "feature": entry_type.value, **metadata}
    posted = []
    for units, suffix, source in ((credits, "", CreditSource.purchase), (bonus, ":bonus", CreditSource.bonus)):
        if not units:
            continue
        label = f"${Decimal(abs(units)) / 10_000:,.2f}"
        part = "volume bonus" if suffix else f"credit top-up via {name}"
        entry = ledger.post_in(
            conn,
            Posting(
                account_id,
                entry_type,
                Decimal(units) / 10_000,
                f"{what} of {part} - {label}",
                # a credit keeps its source: returned purchase credits are purchase credits again
                source=(CreditSource.refund if entry_type == EntryType.refund else source) if units > 0 else None,
                metadata={**meta, **({"bonus": True} if suffix else {})},
                idempotency_key=key + suffix,
                floor=NO_FLOOR,
                # a take-back consumes this purchase's own grants first; returned credits are its grants again
                checkout_session_id=row.id,
            ),
        )
        posted.append(entry)
    return posted


def refund_to(
    ledger: Ledger,
    conn: Connection,
    row: DbRow,
    refunded_cents: int,
    *,
    key: str,
    metadata: Mapping[str, Any],
    authoritative: bool = False,
) -> Outcome:
    """Brings what we took back for refunds to the provider's running refunded total. An event's own
    snapshot only ever moves it up (a stale one changes nothing); the provider's current figure
    (`authoritative`) may also bring it down, when a refund failed or was cancelled: the money stayed
    with us, so its credits return."""
    row = lock_purchase(conn, row.id)
    ceiling = int(row.amount) - _disputed(conn, row)
    target = max(0, min(refunded_cents * UNITS_PER_CENT, ceiling))
    if target == row.refunded or (target < row.refunded and not authoritative):
        return Outcome("duplicate", "refund already recorded", row.organization_id)
    t = table_of(CheckoutSession)
    # conditional on the total we read under the lock: never two deltas from one old total
    moved = conn.execute(
        sa.update(t).where(t.c.id == row.id, t.c.refunded == row.refunded).values(refunded=target)
    ).rowcount
    if not moved:  # not reached while the row is locked; refuse rather than guess
        return Outcome("rejected", "refund total changed concurrently", row.organization_id)
    delta = target - int(row.refunded)
    bonus = bonus_share(row, target) - bonus_share(row, int(row.refunded))
    posted = _move(
        ledger,
        conn,
        row,
        -delta,
        -bonus,
        entry_type=EntryType.refund,
        what="Refund" if delta > 0 else "Failed refund returned",
        key=f"{key}:{target}",
        metadata={**metadata, "refundedTotal": f"{Decimal(target) / 10_000:.2f}"},
    )
    if posted and not posted[0].replayed:  # a failed refund's credit note cancels what an earlier one said
        reason = "Refund" if delta > 0 else "Refund failed"
        issue_credit_note(conn, row, entry_id=posted[0].id, amount=delta, bonus=bonus, reason=reason)
        if delta > 0:  # a failed refund's return is not a refund
            webhooks.emit(
                conn,
                row.organization_id,
                "credits.refunded",
                {
                    "organization_id": row.organization_id,
                    "purchase_id": row.id,
                    "provider": row.provider,
                    "amount": fmt4(delta),
                    "bonus": fmt4(bonus),
                    "credits": fmt4(-sum(e.amount_units for e in posted)),
                    "refunded_total": fmt4(target),
                    "balance": fmt4(posted[-1].balance_after_units),
                    "ledger_entry_ids": [e.id for e in posted],
                },
                key=f"refund:{row.id}:{target}",
            )
    return Outcome("processed", "refunded" if delta > 0 else "refund reversed", row.organization_id)


def open_dispute(
    ledger: Ledger,
    conn: Connection,
    row: DbRow,
    *,
    dispute_id: str,
    amount_cents: int,
    status: str,
    metadata: Mapping[str, Any],
) -> Outcome:
    """A chargeback was opened (or is already lost): take back the disputed credits and their bonus
    share, once per dispute, and pause auto-recharge. A dispute that we first hear of as won took
    nothing and returns nothing."""
    row = lock_purchase(conn, row.id)
    t = table_of(PaymentDispute)
    existing = conn.execute(
        sa.select(t).where(t.c.provider == row.provider, t.c.dispute_id == dispute_id).with_for_update()
    ).first()
    if existing is not None:
        return Outcome("duplicate", f"dispute already {existing.status}", row.organization_id)
    already = int(row.refunded) + _disputed(conn, row)  # taken back so far, by refunds and disputes
    take = 0 if status == "won" else max(0, min(amount_cents * UNITS_PER_CENT, int(row.amount) - already))
    bonus = bonus_share(row, already + take) - bonus_share(row, already)
    conn.execute(
        sa.insert(t).values(
            provider=row.provider,
            dispute_id=dispute_id,
            checkout_session_id=row.id,
            organization_id=row.organization_id,
            amount=take,
            bonus=bonus,
            status=status if status in ("won", "lost") else "open",
            created_at=now(),
            closed_at=now() if status in ("won", "lost") else None,
        )
    )
    if take:
        _move(
            ledger,
            conn,
            row,
            -take,
            -bonus,
            entry_type=EntryType.dispute,
            what="Chargeback",
            key=f"{row.provider}-dispute:{dispute_id}",
            metadata={**metadata, "disputeId": dispute_id},
        )
        _pause_auto_recharge(conn, row.organization_id)
    return Outcome("processed", "disputed" if take else "dispute recorded", row.organization_id)


def close_dispute(
    ledger: Ledger, conn: Connection, row: DbRow, *, dispute_id: str, status: str, metadata: Mapping[str, Any]
) -> Outcome | None:
    """A dispute closed: won returns what it took, once; lost keeps it taken. None when we never saw
    it open (the caller then opens it in its closed state)."""
    t = table_of(PaymentDispute)
    dispute = conn.execute(
        sa.select(t).where(t.c.provider == row.provider, t.c.dispute_id == dispute_id).with_for_update()
    ).first()
    if dispute is None:
        return None
    if dispute.status != "open":
        return Outcome("duplicate", f"dispute already {dispute.status}", row.organization_id)
    final = "won" if status == "won" else "lost"
    conn.execute(sa.update(t).where(t.c.id == dispute.id, t.c.status == "open").values(status=final, closed_at=now()))
    if final == "won" and dispute.amount:
        _move(
            ledger,
            conn,
            row,
            int(dispute.amount),
            int(dispute.bonus),
            entry_type=EntryType.dispute,
            what="Chargeback won: return",
            key=f"{row.provider}-dispute-won:{dispute_id}",
            metadata={**metadata, "disputeId": dispute_id},
        )
    return Outcome("processed", f"dispute {final}", row.organization_id)


def reverse_payment(
    ledger: Ledger, conn: Connection, row: DbRow, *, reason: str, metadata: Mapping[str, Any]
) -> Outcome:
    """A payment we credited turned out not to have succeeded: take back what is still credited."""
    row = lock_purchase(conn, row.id)
    t = table_of(CheckoutSession)
    if not conn.execute(
        sa.update(t).where(t.c.id == row.id, t.c.status == "completed").values(status="reversed", error=reason[:300])
    ).rowcount:
        return Outcome("duplicate", "already reversed", row.organization_id)
    held = int(row.refunded) + _disputed(conn, row)
    take = int(row.amount) - held
    bonus = int(row.bonus) - bonus_share(row, held)
    posted = _move(
        ledger,
        conn,
        row,
        -take,
        -bonus,
        entry_type=EntryType.refund,
        what="Failed payment reversed",
        key=f"{row.provider}-reversal:{row.id}",
        metadata={**metadata, "reason": reason},
    )
    if take > 0 and posted and not posted[0].replayed:  # the receipt's payment never arrived: cancelled
        issue_credit_note(conn, row, entry_id=posted[0].id, amount=take, bonus=bonus, reason="Payment reversed")
    _pause_auto_recharge(conn, row.organization_id)
    return Outcome("processed", "payment failed after it was credited: reversed", row.organization_id)


def _pause_auto_recharge(conn: Connection, organization_id: int) -> None:
    t = table_of(AutoRechargePolicy)
    conn.execute(
        sa.update(t)
        .where(
            t.c.organization_id == organization_id,
            sa.or_(t.c.enabled.is_(True), t.c.action_payment_intent_id.is_not(None)),
        )
        .values(
            enabled=False,
            disabled_reason="paused: a payment was disputed or reversed; check your card, then turn it back on",
            action_payment_intent_id=None,  # confirming a charge awaiting authentication no longer resumes it
            action_url=None,
            updated_at=now(),
        )
    )
