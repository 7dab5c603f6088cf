"""The notice sweep: the emails and webhooks of committed postings that no listener wrote.

Right after a commit, the ledger's listeners (services.notification_listeners) write what its postings
call for: the notices of the entries that crossed their organization's low-balance threshold (the
low-balance and balance-recovered emails, the `balance.low` and `balance.recovered` webhooks) and the
purchase and refund emails with their documents. A worker that dies between the commit and its
listeners, or a listener that fails (the database blinked), would leave them unwritten for good. So once a
minute, once per deployment, this sweep judges each account's entries committed since its watermark
(`notice_watermark.judged_seq`) once more and writes what they call for. What the listeners wrote
already is keyed by its entry (or document) and is not written again: the sweep only adds what is
missing.

- **Exact:** an account's entries commit in `seq` order (each posting holds the account row until its
  commit), and `credit_account.transaction_count` is the last committed entry's `seq`: every entry
  up to it is there to be read, and `seq <= judged_seq` means judged.
- **Cheap:** it reads only the entries that can call for something: purchases and refunds, and those whose
  balance before and after lie on either side of a threshold they can be judged by (in percent mode,
  one per top-up among them or just before them: `low_balance.thresholds_between`), at most
  ENTRIES_PER_ROUND per account per round; `low_balance.crossings` then judges them exactly as the
  listener does.
- **Timely or not at all:** entries created more than MAX_AGE before the sweep are passed over. A
  low-balance email about a balance of hours ago, since topped up perhaps, misleads more than it
  helps. The watermark moves past them all the same. Accounts that existed before the sweep start at
  their last entry (migration 0020), and so does the demo history (`mark_judged`).

Framework-free.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from .billing_profile import table_of
from .db import dialect_insert, writer
from .ledger import PostedEntry
from .low_balance import ACCOUNTS, ENTRIES, Crossing, crossings, thresholds_between
from .models import NoticeWatermark
from .postings import entry_from_mapping
from .receipts import DOCUMENTED_TYPES

log = logging.getLogger(__name__)
MAX_AGE = timedelta(hours=1)
ENTRIES_PER_ROUND = 5_000
WATERMARKS = table_of(NoticeWatermark)


@dataclass
class SweepRun:
    accounts: int = 0  # accounts with entries past their watermark
    crossings: int = 0  # crossings judged (each written at most once, by whoever came first)
    documents: int = 0  # purchases and refunds judged
    failed: int = 0  # accounts whose notices could not be written: their watermark stays, the next round retries


def sweep_notices(
    engine: Engine,
    default_units: int,
    on_crossings: Callable[[list[Crossing]], None],
    on_documents: Callable[[list[PostedEntry]], None],
    *,
    now: datetime | None = None,
) -> SweepRun:
    """One round over every account whose entries are past its watermark. `on_crossings` and
    `on_documents` write the notices (services.sweep_notices wires the app's emails and webhooks)."""
    now = now or datetime.now(UTC)
    run = SweepRun()
    with engine.connect() as conn:
        judged = sa.func.coalesce(WATERMARKS.c.judged_seq, 0)
        behind = conn.execute(
            sa.select(ACCOUNTS.c.id, ACCOUNTS.c.transaction_count, judged)
            .select_from(ACCOUNTS.outerjoin(WATERMARKS, WATERMARKS.c.account_id == ACCOUNTS.c.id))
            .where(ACCOUNTS.c.transaction_count > judged)
            .order_by(ACCOUNTS.c.id)
        ).all()
    for account_id, last, after in behind:
        run.accounts += 1
        try:
            with engine.connect() as conn:
                entries, upto = _candidates(conn, account_id, after, last, default_units, now - MAX_AGE)
                crossed = crossings(conn, entries, default_units)
            documents = [e for e in entries if e.type in DOCUMENTED_TYPES]
            try:
                if crossed:
                    on_crossings(crossed)
            finally:
                if documents:
                    on_documents(documents)
        except Exception:
            log.exception("notice sweep: the notices of account %s could not be written", account_id)
            run.failed += 1
            continue
        run.crossings += len(crossed)
        run.documents += len(documents)
        with writer(engine).begin() as conn:
            _advance(conn, account_id, upto, now)
    return run


def _candidates(
    conn: Connection, account_id: int, after: int, last: int, default_units: int, since: datetime
) -> tuple[list[PostedEntry], int]:
    """The account's entries in (after, last] that may call for a notice (purchases and refunds, and
    those on either side of a threshold they can be judged by), created since `since`, at most
    ENTRIES_PER_ROUND of them; and the `seq` the round judged up to (`last`, or the last entry read
    when it stopped at ENTRIES_PER_ROUND)."""
    before, after_ = ENTRIES.c.balance_before, ENTRIES.c.balance_after
    may_cross = [
        sa.or_(sa.and_(before >= t, after_ < t), sa.and_(before < t, after_ >= t))
        for t in sorted(thresholds_between(conn, account_id, default_units, after, last))
    ]
    query = (
        sa.select(ENTRIES)
        .where(
            ENTRIES.c.account_id == account_id,
            ENTRIES.c.seq > after,
            ENTRIES.c.seq <= last,
            ENTRIES.c.created_at >= since,
            sa.or_(ENTRIES.c.type.in_(DOCUMENTED_TYPES), *may_cross),
        )
        .order_by(ENTRIES.c.seq)
        .limit(ENTRIES_PER_ROUND)
    )
    entries = [entry_from_mapping(r._mapping) for r in conn.execute(query)]
    return entries, entries[-1].seq if len(entries) == ENTRIES_PER_ROUND else last


def _advance(conn: Connection, account_id: int, judged_seq: int, now: datetime) -> None:
    """Moves the account's watermark up to `judged_seq` (never down: two rounds may overlap)."""
    stmt = dialect_insert(conn, WATERMARKS).values(account_id=account_id, judged_seq=judged_seq, updated_at=now)
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["account_id"],
            set_={
                "judged_seq": sa.case(
                    (WATERMARKS.c.judged_seq > stmt.excluded.judged_seq, WATERMARKS.c.judged_seq),
                    else_=stmt.excluded.judged_seq,
                ),
                "updated_at": stmt.excluded.updated_at,
            },
        )
    )


def mark_judged(conn: Connection, account_id: int) -> None:
    """History written as such (the demo's): the sweep starts after the account's last entry."""
    last = conn.execute(sa.select(ACCOUNTS.c.transaction_count).where(ACCOUNTS.c.id == account_id)).scalar_one()
    _advance(conn, account_id, int(last), datetime.now(UTC))
