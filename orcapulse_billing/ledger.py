"""The credit ledger: the only code that changes a balance.

`Ledger.post` writes one append-only entry and moves the account's aggregates in the same
database transaction:

* the account row is changed by one conditional UPDATE (`balance + amount >= floor`) that also
  takes the row lock, so parallel writers queue on it, never lose an update and never pass the floor;
* the entry records balance_before/balance_after from that UPDATE's RETURNING, and its `seq` is the
  account's new transaction count (gap-free per account);
* an idempotency key is unique per account: the same key returns the first entry unchanged, the
  same key with other parameters raises `IdempotencyConflict`. The UPDATE itself skips a key that
  is already posted; two writers racing with one new key meet at the unique index, and the loser
  rolls back and retries as a replay.

On PostgreSQL the UPDATE and the INSERT are one statement (a data-modifying CTE), one round trip.
SQLite has no DML in CTEs, so there it is two statements inside `BEGIN IMMEDIATE`, funnelled through
one in-process writer lock (SQLite allows one writer per file anyway).

Plain Python and SQLAlchemy Core: nothing here imports Reflex.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeAlias

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, Row
from sqlalchemy.exc import IntegrityError

from .db import as_utc, is_sqlite
from .models import ENTRY_KINDS, CreditSource, EntryType, JsonType
from .money import MoneyError, from_units, parse_amount, to_units

log = logging.getLogger(__name__)
MAX_AMOUNT = Decimal("1000000000")  # one billion credits in a single posting is a bug, not a sale
NO_FLOOR_UNITS = -(2**62)
NO_FLOOR = from_units(NO_FLOOR_UNITS)  # a posting that may go below zero as debt (money already gone)

# A row of one of the textual statements below: columns by name (`row._mapping`) or position.
DbRow: TypeAlias = Row[*tuple[Any, ...]]


class LedgerError(Exception):
    code = "ledger_error"


class InvalidPosting(LedgerError):
    code = "invalid_posting"


class AccountNotFound(LedgerError):
    code = "account_not_found"


class InsufficientCredits(LedgerError):
    code = "insufficient_credits"

    def __init__(self, balance: Decimal, amount: Decimal, floor: Decimal):
        self.balance, self.amount, self.floor = balance, amount, floor
        super().__init__(
            f"insufficient credits: balance {balance:.4f}, debit {-amount:.4f} would pass the floor {floor:.4f}"
        )


class IdempotencyConflict(LedgerError):
    code = "idempotency_conflict"


_DEFAULT_SOURCE = {
    EntryType.purchase: CreditSource.purchase,
    EntryType.bonus: CreditSource.bonus,
    EntryType.refund: CreditSource.refund,
    EntryType.adjustment: CreditSource.manual,
}


# Burn order classes: lower is spent first. Anything not named here (purchase, manual, refund, a
# migrated balance) is 2: paid-for credits are spent last.
GRANT_PRIORITY = {CreditSource.promotional.value: 0, CreditSource.welcome.value: 0, CreditSource.bonus.value: 1}
PAID_PRIORITY = 2


def grant_priority(source: str | None) -> int:
    return GRANT_PRIORITY.get(source or "", PAID_PRIORITY)


@dataclass(frozen=True)
class Posting:
    """What to post. `amount` is signed: credits positive, debits negative.

    `floor` is the lowest balance a debit may leave (default: minus the grace limit). Credits are
    never refused by the floor.
    """

    account_id: int
    type: EntryType | str
    amount: Decimal | int | str
    description: str
    category: str | None = None
    source: CreditSource | str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    actor_user_id: int | None = None
    actor_ip: str | None = None
    idempotency_key: str | None = None
    floor: Decimal | None = None
    created_at: datetime | None = None
    # credits: when the grant it creates expires (None: never)
    expires_at: datetime | None = None
    # the purchase it belongs to: its credits' grants remember it, and its refunds and disputes
    # take from those grants first
    checkout_session_id: int | None = None
    # debits: consume this grant only (an expiry takes exactly what remains of its grant)
    from_grant: int | None = None


@dataclass(frozen=True)
class PostedEntry:
    id: int
    account_id: int
    seq: int
    type: str
    source: str | None
    amount_units: int
    balance_before_units: int
    balance_after_units: int
    description: str
    category: str | None
    metadata: dict[str, Any]  # JSON object
    actor_user_id: int | None
    actor_ip: str | None
    idempotency_key: str | None
    created_at: datetime
    replayed: bool = False  # True when an idempotency key returned an earlier entry

    @property
    def amount(self) -> Decimal:
        return from_units(self.amount_units)

    @property
    def balance_before(self) -> Decimal:
        return from_units(self.balance_before_units)

    @property
    def balance_after(self) -> Decimal:
        return from_units(self.balance_after_units)


@dataclass(frozen=True)
class _Prepared:
    account_id: int
    type: str
    kind: str
    source: str | None
    amount: int
    floor: int
    description: str
    category: str | None
    metadata: dict[str, Any]  # JSON object
    actor_user_id: int | None
    actor_ip: str | None
    idempotency_key: str | None
    created_at: datetime
    expires_at: datetime | None = None
    checkout_session_id: int | None = None
    from_grant: int | None = None

    def params(self) -> dict[str, Any]:
        return {
            "account_id": self.account_id,
            "type": self.type,
            "kind": self.kind,
            "day": self.created_at.date(),
            "rollup_category": self.category or "other",
            "source": self.source,
            "amount": self.amount,
            "added": max(self.amount, 0),
            "consumed": max(-self.amount, 0),
            "floor": self.floor,
            "description": self.description,
            "category": self.category,
            "metadata": self.metadata,
            "actor_user_id": self.actor_user_id,
            "actor_ip": self.actor_ip,
            "idempotency_key": self.idempotency_key,
            "created_at": self.created_at,
            "priority": grant_priority(self.source),
            "expires_at": self.expires_at,
            "checkout_session_id": self.checkout_session_id,
        }


_UPDATE_ACCOUNT = """
UPDATE credit_account
   SET balance = balance + :amount,
       lifetime_added = lifetime_added + :added,
       lifetime_consumed = lifetime_consumed + :consumed,
       transaction_count = transaction_count + 1,
       topup_count = topup_count + CASE WHEN :kind = 'topup' THEN 1 ELSE 0 END,
       usage_count = usage_count + CASE WHEN :kind = 'usage' THEN 1 ELSE 0 END,
       refund_count = refund_count + CASE WHEN :kind = 'refund' THEN 1 ELSE 0 END,
       adjustment_count = adjustment_count + CASE WHEN :kind = 'adjustment' THEN 1 ELSE 0 END,
       version = version + 1,
       updated_at = :created_at
 WHERE id = :account_id AND balance + :amount >= :floor
   AND NOT EXISTS (SELECT 1 FROM ledger_entry
                    WHERE account_id = :account_id AND idempotency_key = :idempotency_key)
RETURNING balance, transaction_count,
          CASE :kind WHEN 'topup' THEN topup_count WHEN 'usage' THEN usage_count
                     WHEN 'refund' THEN refund_count ELSE adjustment_count END AS kind_seq
"""

_ENTRY_COLUMNS = (
    "id, account_id, seq, type, source, amount, balance_before, balance_after, description, category, "
    "metadata, actor_user_id, actor_ip, idempotency_key, created_at"
)
_INSERT_COLUMNS = (
    "account_id, seq, kind, kind_seq, type, source, amount, balance_before, balance_after, description, category, "
    "metadata, actor_user_id, actor_ip, idempotency_key, created_at"
)

_TYPED = (
    sa.bindparam("metadata", type_=JsonType),
    sa.bindparam("created_at", type_=sa.DateTime(timezone=True)),
    sa.bindparam("day", type_=sa.Date()),
    sa.bindparam("expires_at", type_=sa.DateTime(timezone=True)),
)

# A credit's grant. What it adds pays the account's debt first (a negative balance_before), so its
# remainder is min(amount, balance_after), never below zero: sum(remainders) == max(balance, 0).
_GRANT_COLUMNS = (
    "account_id, entry_id, source, priority, amount, remaining, expires_at, checkout_session_id, created_at"
)

# Burn order: the purchase's own grants first (refunds and disputes of it), then by class, then the
# earliest expiry (none last), then the oldest. `:only` restricts it to one grant (an expiry).
_BURN_ORDER = (
    "CASE WHEN checkout_session_id = CAST(:checkout_session_id AS INTEGER) THEN 0 ELSE 1 END, "
    "priority, CASE WHEN expires_at IS NULL THEN 1 ELSE 0 END, expires_at, id"
)
_BURNABLE = (
    "account_id = :account_id AND remaining > 0 AND (CAST(:only AS BIGINT) IS NULL OR id = CAST(:only AS BIGINT))"
)

# Usage postings also add to their day's rollup (same transaction, under the account row's lock).
_UPSERT_ROLLUP = """
INSERT INTO usage_rollup (account_id, day, category, amount, count)
{source}
ON CONFLICT (account_id, day, category)
DO UPDATE SET amount = usage_rollup.amount + excluded.amount, count = usage_rollup.count + 1
"""

_RESULT_TYPES: dict[str, sa.types.TypeEngine[Any]] = {"metadata": JsonType, "created_at": sa.DateTime(timezone=True)}

# PostgreSQL: one statement, one round trip. Explicit casts because parameters in a SELECT list
# are not typed by the INSERT's target columns.
_PG_POST = (
    sa.text(
        f"""
WITH acct AS ({_UPDATE_ACCOUNT}),
entry AS (
INSERT INTO ledger_entry ({_INSERT_COLUMNS})
SELECT CAST(:account_id AS INTEGER), acct.transaction_count, CAST(:kind AS VARCHAR), acct.kind_seq,
       CAST(:type AS VARCHAR), CAST(:source AS VARCHAR),
       CAST(:amount AS BIGINT), acct.balance - CAST(:amount AS BIGINT), acct.balance,
       CAST(:description AS VARCHAR), CAST(:category AS VARCHAR), CAST(:metadata AS JSONB),
       CAST(:actor_user_id AS INTEGER), CAST(:actor_ip AS VARCHAR), CAST(:idempotency_key AS VARCHAR),
       CAST(:created_at AS TIMESTAMPTZ)
  FROM acct
RETURNING {_ENTRY_COLUMNS}, kind
),
rollup AS ({
            _UPSERT_ROLLUP.format(
                source="SELECT account_id, CAST(:day AS DATE), CAST(:rollup_category AS VARCHAR), "
                "-amount, 1 FROM entry WHERE kind = 'usage'"
            )
        }),
grant_row AS (
INSERT INTO credit_grant ({_GRANT_COLUMNS})
SELECT account_id, id, source, CAST(:priority AS SMALLINT), amount, GREATEST(0, LEAST(amount, balance_after)),
       CAST(:expires_at AS TIMESTAMPTZ), CAST(:checkout_session_id AS INTEGER), created_at
  FROM entry WHERE amount > 0
)
SELECT {_ENTRY_COLUMNS} FROM entry
"""
    )
    .bindparams(*_TYPED)
    .columns(**_RESULT_TYPES)
)

_SQLITE_UPDATE = sa.text(_UPDATE_ACCOUNT).bindparams(_TYPED[1])
_SQLITE_INSERT = (
    sa.text(
        f"""
INSERT INTO ledger_entry ({_INSERT_COLUMNS})
VALUES (:account_id, :seq, :kind, :kind_seq, :type, :source, :amount, :balance_before, :balance_after,
        :description, :category, :metadata, :actor_user_id, :actor_ip, :idempotency_key, :created_at)
RETURNING {_ENTRY_COLUMNS}
"""
    )
    .bindparams(*_TYPED[:2])
    .columns(**_RESULT_TYPES)
)
_SQLITE_ROLLUP = sa.text(
    _UPSERT_ROLLUP.format(source="VALUES (:account_id, :day, :rollup_category, :consumed, 1)")
).bindparams(_TYPED[2])

_SQLITE_GRANT = sa.text(
    f"INSERT INTO credit_grant ({_GRANT_COLUMNS}) VALUES (:account_id, :entry_id, :source, :priority, :amount, "
    ":remaining, :expires_at, :checkout_session_id, :created_at)"
).bindparams(_TYPED[1], _TYPED[3])
# SQLite: the write transaction is the lock; the split is computed in Python.
_SQLITE_BURNABLE = sa.text(f"SELECT id, remaining FROM credit_grant WHERE {_BURNABLE} ORDER BY {_BURN_ORDER}")
_TAKE_FROM_GRANT = sa.text("UPDATE credit_grant SET remaining = remaining - :amount WHERE id = :grant_id")
_CONSUMPTION = sa.text(
    "INSERT INTO grant_consumption (entry_id, grant_id, amount) VALUES (:entry_id, :grant_id, :amount)"
)

# PostgreSQL: one statement after the posting, in its transaction (the account row is locked by
# then, and this statement's snapshot sees every earlier writer's grants). The grants are locked as
# well; the running sum in burn order decides what each gives: all of it while the debit is not
# covered, then the rest of the debit, then nothing. What no grant covers is debt.
_PG_BURN = sa.text(
    f"""
WITH burnable AS (
SELECT id, checkout_session_id, priority, expires_at, remaining FROM credit_grant
 WHERE {_BURNABLE}
   FOR UPDATE
),
ordered AS (
SELECT id, remaining, CAST(SUM(remaining) OVER (ORDER BY {_BURN_ORDER} ROWS UNBOUNDED PRECEDING) AS BIGINT) AS upto
  FROM burnable
),
take AS (
SELECT id, LEAST(remaining, CAST(:need AS BIGINT) - (upto - remaining)) AS amount
  FROM ordered WHERE upto - remaining < CAST(:need AS BIGINT)
),
taken AS (
UPDATE credit_grant g SET remaining = g.remaining - take.amount FROM take WHERE g.id = take.id RETURNING g.id
)
INSERT INTO grant_consumption (entry_id, grant_id, amount) SELECT CAST(:entry_id AS BIGINT), id, amount FROM take
"""
)

_GRANT_ACCOUNT = sa.text("SELECT account_id FROM credit_grant WHERE id = :id")
_LOCK_ACCOUNT = sa.text("SELECT id FROM credit_account WHERE id = :account_id FOR UPDATE")
_GRANT_FOR_EXPIRY = sa.text(
    "SELECT source, amount, remaining, expires_at, expired_at, created_at FROM credit_grant WHERE id = :id"
).columns(
    expires_at=sa.DateTime(timezone=True), expired_at=sa.DateTime(timezone=True), created_at=sa.DateTime(timezone=True)
)
_MARK_EXPIRED = sa.text("UPDATE credit_grant SET expired_at = :at WHERE id = :id AND expired_at IS NULL").bindparams(
    sa.bindparam("at", type_=sa.DateTime(timezone=True))
)

_FIND_BY_KEY = sa.text(
    f"SELECT {_ENTRY_COLUMNS} FROM ledger_entry WHERE account_id = :account_id AND idempotency_key = :key"
).columns(**_RESULT_TYPES)

_ACCOUNT_BALANCE = sa.text("SELECT balance FROM credit_account WHERE id = :account_id")


def _entry_from_row(row: DbRow, *, replayed: bool = False) -> PostedEntry:
    m = row._mapping
    return PostedEntry(
        id=m["id"],
        account_id=m["account_id"],
        seq=m["seq"],
        type=m["type"],
        source=m["source"],
        amount_units=m["amount"],
        balance_before_units=m["balance_before"],
        balance_after_units=m["balance_after"],
        description=m["description"],
        category=m["category"],
        metadata=dict(m["metadata"] or {}),
        actor_user_id=m["actor_user_id"],
        actor_ip=m["actor_ip"],
        idempotency_key=m["idempotency_key"],
        created_at=as_utc(m["created_at"]),
        replayed=replayed,
    )


class Ledger:
    def __init__(self, engine: Engine, *, grace_limit: Decimal):
        self.engine = engine
        self.default_floor = to_units(-grace_limit)
        self._sqlite = is_sqlite(engine)
        # SQLite has one writer per file; queueing in-process beats spinning on the busy timeout.
        self._write_lock = threading.Lock() if self._sqlite else None
        self._listeners: list[Callable[[list[PostedEntry]], None]] = []

    def add_listener(self, listener: Callable[[list[PostedEntry]], None]) -> None:
        """Called with the new entries after each commit that wrote some (never for replays)."""
        self._listeners.append(listener)

    def _notify(self, entries: list[PostedEntry]) -> None:
        fresh = [e for e in entries if not e.replayed]
        for listener in self._listeners if fresh else ():
            try:
                listener(fresh)
            except Exception:  # a listener must never undo or fail a committed posting
                log.exception("ledger listener failed")

    # -- public API -------------------------------------------------------------------------

    def post(self, posting: Posting) -> PostedEntry:
        """Post one entry in its own transaction."""
        if self._sqlite:
            return self.post_many([posting])[0]
        # PostgreSQL: the posting is one statement, atomic on its own, so it runs in autocommit:
        # no BEGIN/COMMIT round trips, and the account row's lock is not held across the client.
        prepared = self._prepare(posting)
        for attempt in (1, 2):
            try:
                if prepared.amount > 0:  # a credit and its grant are one statement
                    with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                        entry = self._apply(conn, prepared)
                else:  # a debit consumes grants in a second statement, under the account row's lock
                    with self.engine.connect() as conn, conn.begin():
                        entry = self._apply(conn, prepared)
                self._notify([entry])
                return entry
            except IntegrityError:
                # a concurrent writer committed this idempotency key first: the retry is a replay
                if attempt == 2 or prepared.idempotency_key is None:
                    raise
        raise AssertionError("unreachable")

    def post_many(self, postings: list[Posting]) -> list[PostedEntry]:
        """Post several entries all-or-nothing in one transaction (e.g. a purchase and its bonus)."""
        prepared = [self._prepare(p) for p in postings]
        try:
            with self.transaction() as conn:
                entries = [self._apply(conn, p) for p in prepared]
        except IntegrityError:
            # A concurrent writer committed one of our idempotency keys first; our transaction
            # rolled back as a whole. Retry once: the keyed postings now resolve as replays.
            with self.transaction() as conn:
                entries = [self._apply(conn, p) for p in prepared]
        self._notify(entries)
        return entries

    def post_in(self, conn: Connection, posting: Posting) -> PostedEntry:
        """Post inside the caller's transaction (which must hold the write lock on SQLite: use
        `Ledger.transaction()`), so that other writes commit or roll back with the entry."""
        prepared = self._prepare(posting)
        try:
            with conn.begin_nested():
                entry = self._apply(conn, prepared)
            conn.info.setdefault("ledger_posted", []).append(entry)  # announced after the commit
            return entry
        except IntegrityError:
            if prepared.idempotency_key is None:
                raise
            existing = conn.execute(
                _FIND_BY_KEY, {"account_id": prepared.account_id, "key": prepared.idempotency_key}
            ).first()
            if existing is None:
                raise
            return self._replay(existing, prepared)

    def post_batch(self, postings: Sequence[Posting]) -> list[PostedEntry | LedgerError]:
        """Post several entries in ONE transaction, each on its own merits: a posting that is refused
        (its floor, a missing account, an idempotency conflict, bad input) gets its error as its result
        and the others still commit; a replayed key returns its first entry. Results are in the order
        of `postings`. A crash before the commit leaves every one of them absent."""
        with self.transaction() as conn:
            return self.post_batch_in(conn, postings)

    def post_batch_in(self, conn: Connection, postings: Sequence[Posting]) -> list[PostedEntry | LedgerError]:
        """`post_batch` inside the caller's ledger transaction (`Ledger.transaction()`)."""
        results: list[PostedEntry | LedgerError] = []
        for posting in postings:
            try:
                results.append(self.post_in(conn, posting))
            except LedgerError as exc:
                results.append(exc)
        return results

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A write transaction: `BEGIN IMMEDIATE` under the writer lock on SQLite."""
        with self._write_lock or nullcontext():
            opts = {"sqlite_immediate": True} if self._sqlite else {}
            with self.engine.connect().execution_options(**opts) as conn:
                conn.info.pop("ledger_posted", None)
                with conn.begin():
                    yield conn
                posted = conn.info.pop("ledger_posted", [])
        self._notify(posted)

    def expire_grant(self, grant_id: int, *, now: datetime | None = None) -> PostedEntry | None:
        """Posts what remains of an expired grant as an `expiry` entry that consumes that grant only,
        and marks the grant expired, in one transaction. Idempotent (key `expiry:<grant id>`): a grant
        already expired, or one with nothing left, posts nothing (None). `now` decides whether it is
        due (the job's clock; tests pass a later one)."""
        moment = as_utc(now) if now else datetime.now(UTC)
        with self.transaction() as conn:
            account_id = conn.execute(_GRANT_ACCOUNT, {"id": grant_id}).scalar()
            if account_id is None:
                raise InvalidPosting(f"no credit grant {grant_id}")
            if not self._sqlite:  # what remains is read under the account row's lock (debits take it)
                conn.execute(_LOCK_ACCOUNT, {"account_id": account_id})
            grant = conn.execute(_GRANT_FOR_EXPIRY, {"id": grant_id}).one()._mapping
            if grant["expired_at"] is not None:
                return None
            if grant["expires_at"] is None or as_utc(grant["expires_at"]) > moment:
                raise InvalidPosting(f"credit grant {grant_id} has not expired")
            entry = None
            if grant["remaining"] > 0:
                label = f"${from_units(grant['amount']):,.2f}"
                entry = self.post_in(
                    conn,
                    Posting(
                        account_id,
                        EntryType.expiry,
                        -from_units(grant["remaining"]),
                        f"Expired credits - {grant['source']} grant of {label} "
                        f"from {day_label(as_utc(grant['created_at']))}",
                        metadata={"grant": grant_id, "expiresAt": as_utc(grant["expires_at"]).isoformat()},
                        idempotency_key=f"expiry:{grant_id}",
                        floor=NO_FLOOR,
                        from_grant=grant_id,
                    ),
                )
            conn.execute(_MARK_EXPIRED, {"id": grant_id, "at": datetime.now(UTC)})
        return entry

    # -- internals --------------------------------------------------------------------------

    def _prepare(self, p: Posting) -> _Prepared:
        try:
            entry_type = EntryType(p.type)
        except ValueError:
            raise InvalidPosting(f"unknown entry type {p.type!r}") from None
        if isinstance(p.amount, float):
            raise InvalidPosting("amounts must be Decimal, int or str, never float")
        try:
            exact = parse_amount(p.amount, max_places=None)
        except MoneyError as exc:
            raise InvalidPosting(str(exc)) from None
        if abs(exact) > MAX_AMOUNT:
            raise InvalidPosting(f"amount {exact} is out of range")
        units = to_units(exact)  # half-up to 4 places, here and nowhere later
        if units == 0:
            raise InvalidPosting("amount must not be zero (after rounding to 4 places)")
        if entry_type in (EntryType.purchase, EntryType.bonus) and units < 0:
            raise InvalidPosting(f"a {entry_type.value} must be a credit (positive amount)")
        if entry_type in (EntryType.usage, EntryType.expiry) and units > 0:
            raise InvalidPosting(f"{entry_type.value} must be a debit (negative amount)")
        if (entry_type is EntryType.expiry) != (p.from_grant is not None):
            raise InvalidPosting("an expiry, and only an expiry, takes from one grant (from_grant)")
        if p.expires_at is not None and units < 0:
            raise InvalidPosting("only credits expire")
        source = p.source
        if units > 0:
            source = source or _DEFAULT_SOURCE.get(entry_type)
            try:
                source = CreditSource(source).value
            except ValueError:
                raise InvalidPosting(f"unknown credit source {p.source!r}") from None
        elif source is not None:
            raise InvalidPosting("only credits carry a source")
        description = (p.description or "").strip()
        if not description or len(description) > 500:
            raise InvalidPosting("description must be 1 to 500 characters")
        if p.category is not None and not (0 < len(p.category) <= 32):
            raise InvalidPosting("category must be 1 to 32 characters")
        if p.idempotency_key is not None and not (0 < len(p.idempotency_key) <= 200):
            raise InvalidPosting("idempotency key must be 1 to 200 characters")
        if units > 0:
            floor = NO_FLOOR_UNITS
        elif p.floor is None:
            floor = self.default_floor
        else:
            floor = to_units(p.floor)
        created_at = as_utc(p.created_at) if p.created_at else datetime.now(UTC)
        return _Prepared(
            account_id=p.account_id,
            type=entry_type.value,
            kind=ENTRY_KINDS[entry_type.value],
            source=source,
            amount=units,
            floor=floor,
            description=description,
            category=p.category,
            metadata=dict(p.metadata),
            actor_user_id=p.actor_user_id,
            actor_ip=p.actor_ip,
            idempotency_key=p.idempotency_key,
            created_at=created_at,
            expires_at=as_utc(p.expires_at) if p.expires_at else None,
            checkout_session_id=p.checkout_session_id,
            from_grant=p.from_grant,
        )

    def _apply(self, conn: Connection, p: _Prepared) -> PostedEntry:
        params = p.params()
        if self._sqlite:
            row = self._apply_sqlite(conn, params)
        else:
            row = conn.execute(_PG_POST, params).first()  # with a credit's grant
        if row is not None:
            entry = _entry_from_row(row)
            if entry.amount_units < 0:
                self._burn(conn, entry, p)
            return entry
        # Nothing was written: an earlier entry with this key, a missing account, or the floor.
        if p.idempotency_key is not None:
            existing = conn.execute(_FIND_BY_KEY, {"account_id": p.account_id, "key": p.idempotency_key}).first()
            if existing is not None:
                return self._replay(existing, p)
        balance = conn.execute(_ACCOUNT_BALANCE, {"account_id": p.account_id}).scalar()
        if balance is None:
            raise AccountNotFound(f"no credit account {p.account_id}")
        raise InsufficientCredits(from_units(balance), from_units(p.amount), from_units(p.floor))

    @staticmethod
    def _apply_sqlite(conn: Connection, params: dict[str, Any]) -> DbRow | None:
        acct = conn.execute(_SQLITE_UPDATE, params).first()
        if acct is None:
            return None
        balance, seq, kind_seq = acct
        row = conn.execute(
            _SQLITE_INSERT,
            {
                **params,
                "seq": seq,
                "kind_seq": kind_seq,
                "balance_before": balance - params["amount"],
                "balance_after": balance,
            },
        ).first()
        if params["kind"] == "usage":
            conn.execute(_SQLITE_ROLLUP, params)
        if row is not None and params["amount"] > 0:
            remaining = max(0, min(params["amount"], balance))
            conn.execute(_SQLITE_GRANT, {**params, "entry_id": row._mapping["id"], "remaining": remaining})
        return row

    def _burn(self, conn: Connection, entry: PostedEntry, p: _Prepared) -> None:
        """Records which grants a new debit consumed, in burn order, and lowers their remainders."""
        need = -entry.amount_units
        where = {"account_id": p.account_id, "only": p.from_grant, "checkout_session_id": p.checkout_session_id}
        if not self._sqlite:
            conn.execute(_PG_BURN, {**where, "need": need, "entry_id": entry.id})
            return
        taken = []
        for grant_id, remaining in conn.execute(_SQLITE_BURNABLE, where).all():
            if need <= 0:
                break
            amount = min(remaining, need)
            taken.append({"entry_id": entry.id, "grant_id": grant_id, "amount": amount})
            need -= amount
        if taken:
            conn.execute(_TAKE_FROM_GRANT, taken)
            conn.execute(_CONSUMPTION, taken)

    @staticmethod
    def _replay(row: DbRow, p: _Prepared) -> PostedEntry:
        entry = _entry_from_row(row, replayed=True)
        mine = (p.type, p.amount, p.source, p.category, p.description)
        theirs = (entry.type, entry.amount_units, entry.source, entry.category, entry.description)
        if mine != theirs:
            raise IdempotencyConflict(
                f"idempotency key {p.idempotency_key!r} was already used with different parameters"
            )
        return entry


def day_label(moment: datetime) -> str:
    """'Jan 31, 2027'."""
    return f"{moment:%b} {moment.day}, {moment.year}"


def find_entry(conn: Connection, account_id: int, idempotency_key: str) -> PostedEntry | None:
    """The entry posted under this idempotency key, if any (marked as a replay)."""
    row = conn.execute(_FIND_BY_KEY, {"account_id": account_id, "key": idempotency_key}).first()
    return _entry_from_row(row, replayed=True) if row is not None else None


@dataclass(frozen=True)
class AccountSnapshot:
    id: int
    organization_id: int
    currency: str
    balance_units: int
    lifetime_added_units: int
    lifetime_consumed_units: int
    transaction_count: int
    version: int
    kind_counts: dict[str, int] = field(default_factory=dict)

    @property
    def balance(self) -> Decimal:
        return from_units(self.balance_units)


def get_account(
    conn: Connection, *, account_id: int | None = None, organization_id: int | None = None
) -> AccountSnapshot:
    where, value = ("id", account_id) if account_id is not None else ("organization_id", organization_id)
    row = conn.execute(
        sa.text(
            "SELECT id, organization_id, currency, balance, lifetime_added, lifetime_consumed, "
            "transaction_count, version, topup_count, usage_count, refund_count, adjustment_count "
            f"FROM credit_account WHERE {where} = :v"
        ),
        {"v": value},
    ).first()
    if row is None:
        raise AccountNotFound(f"no credit account for {where}={value}")
    return AccountSnapshot(
        id=row[0],
        organization_id=row[1],
        currency=row[2],
        balance_units=row[3],
        lifetime_added_units=row[4],
        lifetime_consumed_units=row[5],
        transaction_count=row[6],
        version=row[7],
        kind_counts={"topup": row[8], "usage": row[9], "refund": row[10], "adjustment": row[11]},
    )


def check_invariants(conn: Connection, account_id: int) -> list[str]:
    """Every way the account row and its entries must agree; returns the violations (empty = sound)."""
    acct = get_account(conn, account_id=account_id)
    total, count, max_seq, added, consumed = conn.execute(
        sa.text(
            "SELECT COALESCE(SUM(amount), 0), COUNT(*), COALESCE(MAX(seq), 0), "
            "COALESCE(SUM(CASE WHEN amount > 0 THEN amount ELSE 0 END), 0), "
            "COALESCE(SUM(CASE WHEN amount < 0 THEN -amount ELSE 0 END), 0) "
            "FROM ledger_entry WHERE account_id = :a"
        ),
        {"a": account_id},
    ).one()
    last_after = conn.execute(
        sa.text("SELECT balance_after FROM ledger_entry WHERE account_id = :a ORDER BY seq DESC LIMIT 1"),
        {"a": account_id},
    ).scalar()
    broken_chain = conn.execute(
        sa.text(
            "SELECT COUNT(*) FROM ledger_entry e JOIN ledger_entry p "
            "ON p.account_id = e.account_id AND p.seq = e.seq - 1 "
            "WHERE e.account_id = :a AND e.balance_before <> p.balance_after"
        ),
        {"a": account_id},
    ).scalar()
    kinds = conn.execute(
        sa.text("SELECT kind, COUNT(*), MAX(kind_seq) FROM ledger_entry WHERE account_id = :a GROUP BY kind"),
        {"a": account_id},
    ).all()
    counters: dict[str, int] = dict(
        conn.execute(
            sa.text(
                "SELECT 'topup', topup_count FROM credit_account WHERE id = :a UNION ALL "
                "SELECT 'usage', usage_count FROM credit_account WHERE id = :a UNION ALL "
                "SELECT 'refund', refund_count FROM credit_account WHERE id = :a UNION ALL "
                "SELECT 'adjustment', adjustment_count FROM credit_account WHERE id = :a"
            ),
            {"a": account_id},
        ).all()
    )
    usage_by_category = {
        r[0]: (int(r[1]), int(r[2]))
        for r in conn.execute(
            sa.text(
                "SELECT COALESCE(category, 'other'), SUM(-amount), COUNT(*) FROM ledger_entry "
                "WHERE account_id = :a AND kind = 'usage' GROUP BY COALESCE(category, 'other')"
            ),
            {"a": account_id},
        )
    }
    rollup_by_category = {
        r[0]: (int(r[1]), int(r[2]))
        for r in conn.execute(
            sa.text(
                "SELECT category, SUM(amount), SUM(count) FROM usage_rollup WHERE account_id = :a GROUP BY category"
            ),
            {"a": account_id},
        )
    }
    problems = []
    for kind, n, max_kind_seq in kinds:
        if counters.get(kind) != n or max_kind_seq != n:
            problems.append(f"{kind}: counter {counters.get(kind)}, entries {n}, max kind_seq {max_kind_seq}")
    if {k: v for k, v in counters.items() if v} != {k: n for k, n, _ in kinds}:
        problems.append(f"kind counters {counters} disagree with the entries")
    if usage_by_category != rollup_by_category:
        problems.append("the usage rollup disagrees with the usage entries")
    if acct.balance_units != total:
        problems.append(f"balance {acct.balance_units} != sum(amounts) {total}")
    if count and acct.balance_units != last_after:
        problems.append(f"balance {acct.balance_units} != last balance_after {last_after}")
    if acct.transaction_count != count or max_seq != count:
        problems.append(f"transaction_count {acct.transaction_count}, entries {count}, max seq {max_seq}")
    if acct.lifetime_added_units != added or acct.lifetime_consumed_units != consumed:
        problems.append("lifetime aggregates disagree with the entries")
    if broken_chain:
        problems.append(f"{broken_chain} entries whose balance_before is not the previous balance_after")
    return problems + _grant_problems(conn, account_id, acct.balance_units)


def _grant_problems(conn: Connection, account_id: int, balance: int) -> list[str]:
    """The grants agree with the balance and the entries, exactly:

    * balance == sum(remainders) - debt, where debt is what no grant covers: max(0, -balance);
      so the remainders add up to max(balance, 0);
    * each debit consumed exactly its covered part, min(-amount, max(balance_before, 0)), and an
      expiry only its own grant;
    * each credit made one grant of its amount, whose remainder started at the amount less the debt
      it paid (min(amount, max(0, -balance_before))) and went down only by what debits consumed;
    * a grant marked expired has nothing left.

    Entries posted before grants existed (an account migrated by 0010) are not held to the
    per-entry rules: those start at the account's first entry with a grant or a consumption."""
    entries = {
        r[0]: r
        for r in conn.execute(
            sa.text(
                "SELECT id, seq, type, amount, balance_before FROM ledger_entry WHERE account_id = :a ORDER BY seq"
            ),
            {"a": account_id},
        )
    }
    grants = conn.execute(
        sa.text(
            "SELECT id, entry_id, amount, remaining, expired_at FROM credit_grant WHERE account_id = :a ORDER BY id"
        ),
        {"a": account_id},
    ).all()
    consumptions = conn.execute(
        sa.text(
            "SELECT c.entry_id, c.grant_id, c.amount FROM grant_consumption c "
            "JOIN credit_grant g ON g.id = c.grant_id WHERE g.account_id = :a"
        ),
        {"a": account_id},
    ).all()
    problems = []
    remaining_total = sum(g[3] for g in grants)
    if remaining_total != max(balance, 0):
        problems.append(f"grant remainders {remaining_total} != balance {balance} plus debt {max(0, -balance)}")
    used_by_entry: dict[int, int] = {}
    used_of_grant: dict[int, int] = {}
    grants_of_entry: dict[int, list[int]] = {}
    for entry_id, grant_id, amount in consumptions:
        if amount <= 0 or entry_id not in entries or entries[entry_id][3] >= 0:
            problems.append(f"consumption of {amount} by entry {entry_id} from grant {grant_id} is not a debit's")
        used_by_entry[entry_id] = used_by_entry.get(entry_id, 0) + amount
        used_of_grant[grant_id] = used_of_grant.get(grant_id, 0) + amount
        grants_of_entry.setdefault(entry_id, []).append(grant_id)
    grant_of_entry: dict[int, Any] = {}
    for g in grants:
        grant_id, entry_id, amount, remaining, expired_at = g
        if entry_id is not None:
            if entry_id in grant_of_entry or entry_id not in entries:
                problems.append(f"grant {grant_id}: entry {entry_id} has another grant or is not this account's")
            grant_of_entry[entry_id] = g
        paid_debt = 0
        if entry_id in entries:
            credit, before = entries[entry_id][3], entries[entry_id][4]
            if credit != amount:
                problems.append(f"grant {grant_id} of {amount} for a credit of {credit}")
            paid_debt = min(amount, max(0, -before))
        if amount - remaining != paid_debt + used_of_grant.get(grant_id, 0):
            problems.append(
                f"grant {grant_id}: {amount} - remaining {remaining} != debt paid {paid_debt} "
                f"+ consumed {used_of_grant.get(grant_id, 0)}"
            )
        if expired_at is not None and remaining:
            problems.append(f"grant {grant_id} expired with {remaining} left")
    tracked = [seq for entry_id, seq, *_ in entries.values() if entry_id in grant_of_entry or entry_id in used_by_entry]
    start = min(tracked, default=None)
    for entry_id, seq, entry_type, amount, before in entries.values():
        if start is None or seq < start:
            continue
        if amount > 0 and entry_id not in grant_of_entry:
            problems.append(f"credit entry {entry_id} made no grant")
        if amount < 0:
            covered = min(-amount, max(before, 0))
            if used_by_entry.get(entry_id, 0) != covered:
                problems.append(f"debit {entry_id} consumed {used_by_entry.get(entry_id, 0)}, covered {covered}")
            if entry_type == EntryType.expiry.value and len(grants_of_entry.get(entry_id, [])) != 1:
                problems.append(f"expiry {entry_id} consumed {grants_of_entry.get(entry_id)}, not one grant")
    return problems
