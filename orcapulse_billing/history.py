"""Reading the ledger: history pages, the CSV export, usage by category, billing sessions.

Fast on big accounts without OFFSET or COUNT(*) where it matters: the undated history (the
common case, any type filter, newest or oldest first) pages by the per-account gap-free `seq` (or
the per-kind `kind_seq`), so page N is a range read on the (account_id, seq) or (account_id, kind,
kind_seq) index, and its total is the account row's counter. A date range counts its entries and
reads its page from whichever end of the range is nearer, so the last page costs what the first does.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .db import as_utc
from .ledger import get_account
from .models import BillingSession, LedgerEntry, UsageRollup, User

PAGE_SIZES = (10, 25, 50, 100)
DEFAULT_PAGE_SIZE = 50
# The filters are the entries' kinds (models.ENTRY_KINDS); "all" is every kind.
TYPE_FILTERS: dict[str, tuple[str, ...] | None] = {
    "all": None,
    "topup": ("purchase", "bonus"),
    "usage": ("usage",),
    "refund": ("refund", "dispute"),
    "adjustment": ("adjustment", "expiry"),
}
TYPE_LABELS = {
    "all": "All Transactions",
    "topup": "Top-ups",
    "usage": "Usage",
    "refund": "Refunds",
    "adjustment": "Adjustments",
}
ORDERS = ("newest", "oldest")  # posting order (seq), newest first by default


@dataclass(frozen=True)
class HistoryItem:
    id: int
    seq: int
    type: str
    source: str | None
    amount_units: int
    balance_before_units: int
    balance_after_units: int
    description: str
    category: str | None
    created_at: datetime
    metadata: dict
    usage_session_id: str | None


@dataclass(frozen=True)
class HistoryPage:
    items: list[HistoryItem]
    page: int
    page_size: int
    total: int

    @property
    def total_pages(self) -> int:
        return max(1, -(-self.total // self.page_size))


@dataclass(frozen=True)
class HistoryQuery:
    type: str = "all"
    start: datetime | None = None  # inclusive
    end: datetime | None = None  # exclusive
    order: str = "newest"  # or "oldest"

    def __post_init__(self):
        if self.type not in TYPE_FILTERS:
            raise ValueError(f"type must be one of {', '.join(TYPE_FILTERS)}")
        if self.order not in ORDERS:
            raise ValueError(f"order must be one of {', '.join(ORDERS)}")

    @property
    def newest_first(self) -> bool:
        return self.order == "newest"

    @property
    def undated(self) -> bool:
        return self.start is None and self.end is None

    def where(self, account_id: int) -> list:
        e = LedgerEntry.__table__.c
        clauses = [e.account_id == account_id]
        if self.type != "all":
            clauses.append(e.kind == self.type)
        if self.start is not None:
            clauses.append(e.created_at >= self.start)
        if self.end is not None:
            clauses.append(e.created_at < self.end)
        return clauses


_COLUMNS = [
    c for c in LedgerEntry.__table__.c if c.name not in ("account_id", "actor_user_id", "actor_ip", "idempotency_key")
]


def _item(row) -> HistoryItem:
    m = row._mapping
    metadata = dict(m["metadata"] or {})
    return HistoryItem(
        id=m["id"],
        seq=m["seq"],
        type=m["type"],
        source=m["source"],
        amount_units=m["amount"],
        balance_before_units=m["balance_before"],
        balance_after_units=m["balance_after"],
        description=m["description"],
        category=m["category"],
        created_at=as_utc(m["created_at"]),
        metadata=metadata,
        usage_session_id=metadata.get("usage_session_id"),
    )


def history_page(
    conn: Connection, account_id: int, query: HistoryQuery, *, page: int = 1, page_size: int = DEFAULT_PAGE_SIZE
) -> HistoryPage:
    """In posting order (seq), newest or oldest first as the query says, so the order is stable
    however timestamps tie."""
    if page_size not in PAGE_SIZES:
        raise ValueError(f"page_size must be one of {', '.join(map(str, PAGE_SIZES))}")
    if page < 1:
        raise ValueError("page must be 1 or more")
    e = LedgerEntry.__table__.c
    newest = query.newest_first
    skip = (page - 1) * page_size  # entries before this page, in the query's order
    if query.undated:
        # seq (or kind_seq) runs 1..total without gaps: page N is a range, the total a counter
        acct = get_account(conn, account_id=account_id)
        stmt = sa.select(*_COLUMNS).where(e.account_id == account_id)
        if query.type == "all":
            total, numbered = acct.transaction_count, e.seq
        else:
            total, numbered = acct.kind_counts[query.type], e.kind_seq
            stmt = stmt.where(e.kind == query.type)
        low = total - skip - page_size if newest else skip  # the page is (low, low + page_size]
        stmt = stmt.where(numbered > low, numbered <= low + page_size)
        rows = conn.execute(stmt.order_by(e.seq.desc() if newest else e.seq.asc())).all()
    else:
        clauses = query.where(account_id)
        total = conn.execute(sa.select(sa.func.count()).select_from(LedgerEntry.__table__).where(*clauses)).scalar()
        stmt = sa.select(*_COLUMNS).where(*clauses)
        after = total - skip - page_size  # entries beyond this page
        if skip <= after or skip >= total:
            rows = conn.execute(
                stmt.order_by(e.seq.desc() if newest else e.seq.asc()).limit(page_size).offset(skip)
            ).all()
        else:  # nearer the far end: read it from there (an OFFSET costs what it skips) and turn it round
            rows = conn.execute(
                stmt.order_by(e.seq.asc() if newest else e.seq.desc())
                .limit(min(page_size, total - skip))
                .offset(max(0, after))
            ).all()[::-1]
    return HistoryPage([_item(r) for r in rows], page, page_size, total)


def entries_after(conn: Connection, account_id: int, seq: int) -> list[HistoryItem]:
    """The account's entries posted after its `seq`-th, newest first (a range of seq: the live page's
    first page brought up to date)."""
    e = LedgerEntry.__table__.c
    stmt = sa.select(*_COLUMNS).where(e.account_id == account_id, e.seq > seq).order_by(e.seq.desc())
    return [_item(r) for r in conn.execute(stmt).all()]


def iter_history(conn: Connection, account_id: int, query: HistoryQuery, batch: int = 1000) -> Iterator[HistoryItem]:
    """Every matching entry in the query's order, read in keyset batches (for the CSV export)."""
    e = LedgerEntry.__table__.c
    newest = query.newest_first
    last = None
    while True:
        stmt = (
            sa.select(*_COLUMNS)
            .where(*query.where(account_id))
            .order_by(e.seq.desc() if newest else e.seq.asc())
            .limit(batch)
        )
        if last is not None:
            stmt = stmt.where(e.seq < last if newest else e.seq > last)
        rows = conn.execute(stmt).all()
        for row in rows:
            yield _item(row)
        if len(rows) < batch:
            return
        last = rows[-1]._mapping["seq"]


@dataclass(frozen=True)
class EntryDetail:
    """One entry with who made it and from where (the history pages leave those out)."""

    item: HistoryItem
    actor_user_id: int | None
    actor_email: str | None
    actor_ip: str | None


def entry_detail(conn: Connection, account_id: int, entry_id: int) -> EntryDetail | None:
    """The entry `entry_id` of this account (None for another account's entry)."""
    e = LedgerEntry.__table__.c
    u = User.__table__.c
    row = conn.execute(
        sa.select(*_COLUMNS, e.actor_user_id, e.actor_ip, u.email.label("actor_email"))
        .select_from(LedgerEntry.__table__.outerjoin(User.__table__, u.id == e.actor_user_id))
        .where(e.account_id == account_id, e.id == entry_id)
    ).first()
    if row is None:
        return None
    m = row._mapping
    return EntryDetail(_item(row), m["actor_user_id"], m["actor_email"], m["actor_ip"])


@dataclass(frozen=True)
class CategoryUsage:
    category: str
    amount_units: int  # consumed, positive
    count: int


def usage_summary(
    conn: Connection, account_id: int, start: datetime | None, end: datetime | None
) -> list[CategoryUsage]:
    """Consumption per category in [start, end). Whole UTC days come from the daily rollup the
    ledger keeps; only the partial days at either edge read entries."""
    totals: dict[str, list[int]] = {}

    def add(rows) -> None:
        for category, amount, count in rows:
            t = totals.setdefault(category, [0, 0])
            t[0] += int(amount)
            t[1] += int(count)

    first_day = _day_after(start) if start is not None else None  # first whole day
    last_day = end.date() if end is not None else None  # first day not wholly inside
    if first_day is not None and last_day is not None and first_day >= last_day:
        add(_entry_summary(conn, account_id, start, end))  # within one or two partial days
    else:
        r = UsageRollup.__table__.c
        rollup = sa.select(r.category, sa.func.sum(r.amount), sa.func.sum(r.count)).where(r.account_id == account_id)
        if first_day is not None:
            rollup = rollup.where(r.day >= first_day)
        if last_day is not None:
            rollup = rollup.where(r.day < last_day)
        add(conn.execute(rollup.group_by(r.category)))
        if start is not None and start < _midnight(first_day):
            add(_entry_summary(conn, account_id, start, _midnight(first_day)))
        if end is not None and end > _midnight(last_day):
            add(_entry_summary(conn, account_id, _midnight(last_day), end))
    rows = [CategoryUsage(c, a, n) for c, (a, n) in totals.items() if n]
    return sorted(rows, key=lambda r: (-r.amount_units, r.category))


def _midnight(day) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _day_after(moment: datetime):
    """The first UTC day starting at or after `moment`."""
    day = moment.astimezone(UTC).date()
    return day if _midnight(day) == moment else day + timedelta(days=1)


def _entry_summary(conn: Connection, account_id: int, start: datetime, end: datetime):
    e = LedgerEntry.__table__.c
    # one expression object in SELECT and GROUP BY (two bound 'other' parameters would not match
    # on PostgreSQL)
    category = sa.func.coalesce(e.category, sa.literal_column("'other'"))
    stmt = (
        sa.select(category, sa.func.sum(-e.amount), sa.func.count())
        .where(*HistoryQuery("usage", start, end).where(account_id))
        .group_by(category)
    )
    return conn.execute(stmt).all()


def billing_session(conn: Connection, account_id: int, external_id: str) -> dict | None:
    t = BillingSession.__table__
    row = conn.execute(sa.select(t).where(t.c.account_id == account_id, t.c.external_id == external_id)).first()
    return dict(row._mapping) if row else None
