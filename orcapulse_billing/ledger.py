"""The credit ledger: the only code that changes a balance.

Every posting writes one append-only entry and moves the account's aggregates in the same database
transaction, under the account row's lock (PostgreSQL `FOR NO KEY UPDATE`; SQLite's one writer):

* the floor: a debit that would leave the balance below its floor is refused and writes nothing;
* the entry records balance_before/balance_after, and its `seq` is the account's new transaction
  count (gap-free per account), its `kind_seq` the new count of its kind (gap-free per kind);
* an idempotency key is unique per account: the same key returns the first entry unchanged, the same
  key with other parameters raises `IdempotencyConflict`. The key is looked up under the row lock,
  so two writers racing with one new key queue there and the second finds the first's entry;
* a credit creates its grant (what it adds pays the account's debt first); a debit consumes grants
  in burn order and records which (`grant_consumption`); usage adds to its day's rollup;
* listeners hear of the new entries after the commit, never of replays.

What a posting is and how it is checked (`Posting`, `PostedEntry`, the errors) lives in `postings.py`,
re-exported here. The write path (`ledger_write.py`) applies a group of postings in one transaction,
each on its own merits: on PostgreSQL one statement (the `ledger_post` function of migration 0013, or
for groups of plain debits `ledger_post_group` of 0019), so a posting is one round trip; on SQLite the
same steps in Python on the raw cursor. `Ledger.post` adds group commit (`group_commit.py`): postings
that several threads send at about the same time are written as one group, one transaction, one
commit, each still refused or replayed alone.

Plain Python and SQLAlchemy Core: nothing here imports Reflex.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeAlias

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, Row
from sqlalchemy.pool import PoolProxiedConnection

from . import postings
from .db import as_utc, is_sqlite, json_keys
from .group_commit import GroupCommit
from .ledger_write import Write, apply_writes, commit_sqlite_group
from .models import EntryType, JsonType
from .money import from_units, to_units

# The posting types, their checks and errors live in postings.py; callers import them from here.
from .postings import (
    GRANT_PRIORITY,
    MAX_AMOUNT,
    NO_FLOOR,
    NO_FLOOR_UNITS,
    PAID_PRIORITY,
    AccountNotFound,
    IdempotencyConflict,
    InsufficientCredits,
    InvalidPosting,
    LedgerError,
    PostedEntry,
    Posting,
    grant_priority,
)

__all__ = [  # with what postings.py defines (mypy --strict re-exports only what is listed)
    "AccountNotFound",
    "AccountSnapshot",
    "check_invariants",
    "day_label",
    "DbRow",
    "find_entries",
    "find_entry",
    "get_account",
    "GRANT_PRIORITY",
    "grant_priority",
    "GROUP_CONNECTION_LINGER",
    "GROUP_LOCK_WAIT",
    "IdempotencyConflict",
    "InsufficientCredits",
    "InvalidPosting",
    "Ledger",
    "LedgerError",
    "MAX_AMOUNT",
    "NO_FLOOR",
    "NO_FLOOR_UNITS",
    "PAID_PRIORITY",
    "PostedEntry",
    "Posting",
]

log = logging.getLogger(__name__)

# A row of a textual statement: columns by name (`row._mapping`) or position.
DbRow: TypeAlias = Row[*tuple[Any, ...]]
# How long a group of postings waits for a row lock before it is written posting by posting instead.
GROUP_LOCK_WAIT = "5s"
# How long group commit keeps its connection after the last group: one that has been idle for less is
# used again as it is; an older one goes back to the pool and the next group checks one out, which
# pings it first (a connection can die while idle). The ping is a round trip of its own, as dear as
# the posting's, so a lone caller posting one after another would otherwise pay for two.
GROUP_CONNECTION_LINGER = 1.0  # seconds


_GRANT_ACCOUNT = sa.text("SELECT account_id FROM credit_grant WHERE id = :id")
_LOCK_ACCOUNT = sa.text("SELECT id FROM credit_account WHERE id = :account_id FOR NO KEY UPDATE")
_GRANT_FOR_EXPIRY = sa.text(
    "SELECT source, amount, remaining, expires_at, expired_at, created_at FROM credit_grant WHERE id = :id"
).columns(
    expires_at=sa.DateTime(timezone=True), expired_at=sa.DateTime(timezone=True), created_at=sa.DateTime(timezone=True)
)
_MARK_EXPIRED = sa.text("UPDATE credit_grant SET expired_at = :at WHERE id = :id AND expired_at IS NULL").bindparams(
    sa.bindparam("at", type_=sa.DateTime(timezone=True))
)

_ENTRY_COLUMNS = (
    "id, account_id, seq, type, source, amount, balance_before, balance_after, description, category, "
    "metadata, actor_user_id, actor_ip, idempotency_key, created_at"
)
_RESULT_TYPES: dict[str, sa.types.TypeEngine[Any]] = {"metadata": JsonType, "created_at": sa.DateTime(timezone=True)}
# The range and the ORDER BY make the (account_id, idempotency_key) index the only plan without a sort
# (see ledger_post in migration 0013): plain equalities get another index, and a scan of the account's
# entries, on a PostgreSQL table that has no planner statistics yet.
_FIND_BY_KEY = sa.text(
    f"SELECT {_ENTRY_COLUMNS} FROM ledger_entry WHERE account_id = :account_id "
    "AND idempotency_key >= :key AND idempotency_key <= :key ORDER BY idempotency_key LIMIT 1"
).columns(**_RESULT_TYPES)


def _entry_from_row(row: DbRow, *, replayed: bool = False) -> PostedEntry:
    return postings.entry_from_mapping(row._mapping, replayed=replayed)


class Ledger:
    def __init__(
        self, engine: Engine, *, grace_limit: Decimal, max_group: int = 256, group_lock_wait: str = GROUP_LOCK_WAIT
    ):
        self.engine = engine
        self.group_lock_wait = group_lock_wait
        self.default_floor = to_units(-grace_limit)
        self._sqlite = is_sqlite(engine)
        # SQLite has one writer per file; queueing in-process beats spinning on the busy timeout.
        self._write_lock = threading.Lock() if self._sqlite else None
        self._listeners: list[Callable[[list[PostedEntry]], None]] = []
        self._group: GroupCommit[Write, PostedEntry | None] = GroupCommit(
            self._write_group, max_group=max_group, on_idle=self._group_idle
        )
        # PostgreSQL: the connection the group leaders write on, kept while groups follow one another (one
        # leader at a time uses it), so that a group is one round trip, not a pool check-out's ping, the
        # statement and the check-in's reset; returned to the pool when the next group comes more than
        # GROUP_CONNECTION_LINGER after the last.
        self._group_conn: Connection | None = None
        self._group_raw: PoolProxiedConnection | None = None  # SQLite's, likewise
        self._group_idle_at: float | None = None  # when the last group ended with nobody waiting

    def add_listener(self, listener: Callable[[list[PostedEntry]], None]) -> None:
        """Called with the new entries after each commit that wrote some (never for replays)."""
        self._listeners.append(listener)

    def _notify(self, entries: Sequence[PostedEntry | BaseException]) -> None:
        fresh = [e for e in entries if isinstance(e, PostedEntry) and not e.replayed]
        for listener in self._listeners if fresh else ():
            try:
                listener(fresh)
            except Exception:  # a listener must never undo or fail a committed posting
                log.exception("ledger listener failed")

    # -- public API -------------------------------------------------------------------------

    def post(self, posting: Posting) -> PostedEntry:
        """Post one entry. Postings that other threads send at the same time share its transaction
        (group commit); each is still refused or replayed on its own, and raises only its own error."""
        write = self._prepare(posting)
        grouped = self._group.submit(write)
        if grouped is not None:
            return grouped
        # its group failed as a whole (see `_write_group`): on its own, in this thread
        alone = self._commit([write])[0]
        self._notify([alone])
        if isinstance(alone, LedgerError):
            raise alone
        return alone

    def post_many(self, postings: list[Posting]) -> list[PostedEntry]:
        """Post several entries all-or-nothing in one transaction (e.g. a purchase and its bonus):
        the first that is refused raises, and none of them is written."""
        writes = [self._prepare(p) for p in postings]
        with self.transaction() as conn:
            entries = []
            for outcome in self._apply(conn, writes):
                if isinstance(outcome, LedgerError):
                    raise outcome
                entries.append(outcome)
            conn.info.setdefault("ledger_posted", []).extend(entries)
        return entries

    def post_in(self, conn: Connection, posting: Posting) -> PostedEntry:
        """Post inside the caller's transaction (which must hold the write lock on SQLite: use
        `Ledger.transaction()`), so that other writes commit or roll back with the entry. A refused
        posting raises and writes nothing: the caller's transaction stays usable."""
        outcome = self._apply(conn, [self._prepare(posting)])[0]
        if isinstance(outcome, LedgerError):
            raise outcome
        conn.info.setdefault("ledger_posted", []).append(outcome)  # announced after the commit
        return outcome

    def post_batch(self, postings: Sequence[Posting]) -> list[PostedEntry | LedgerError]:
        """Post several entries in ONE transaction, each on its own merits: a posting that is refused
        (its floor, a missing account, an idempotency conflict, bad input) gets its error as its result
        and the others still commit; a replayed key returns its first entry. Results are in the order
        of `postings`. A crash before the commit leaves every one of them absent."""
        outcomes: list[PostedEntry | LedgerError | None] = [None] * len(postings)
        writes, places = self._prepare_each(postings, outcomes)
        for place, outcome in zip(places, self._commit(writes), strict=True):
            outcomes[place] = outcome
        self._notify([o for o in outcomes if isinstance(o, PostedEntry)])
        return [o for o in outcomes if o is not None]

    def post_batch_in(self, conn: Connection, postings: Sequence[Posting]) -> list[PostedEntry | LedgerError]:
        """`post_batch` inside the caller's ledger transaction (`Ledger.transaction()`)."""
        outcomes: list[PostedEntry | LedgerError | None] = [None] * len(postings)
        writes, places = self._prepare_each(postings, outcomes)
        for place, outcome in zip(places, self._apply(conn, writes), strict=True):
            outcomes[place] = outcome
        posted = [o for o in outcomes if isinstance(o, PostedEntry)]
        conn.info.setdefault("ledger_posted", []).extend(posted)
        return [o for o in outcomes if o is not None]

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A write transaction: `BEGIN IMMEDIATE` under the writer lock on SQLite. Callables that the
        transaction's work appends to `conn.info["after_commit"]` run after the commit (e.g. the emails
        of what it decided), never after a rollback."""
        with self._write_lock or nullcontext():
            opts = {"sqlite_immediate": True} if self._sqlite else {}
            with self.engine.connect().execution_options(**opts) as conn:
                conn.info.pop("ledger_posted", None)
                conn.info.pop("after_commit", None)
                with conn.begin():
                    yield conn
                posted = conn.info.pop("ledger_posted", [])
                after_commit = conn.info.pop("after_commit", [])
        self._notify(posted)
        for callback in after_commit:
            try:
                callback()
            except Exception:  # the change is committed; what follows it must not fail it
                log.exception("after-commit callback failed")

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

    def _write_group(self, writes: list[Write]) -> list[PostedEntry | BaseException | None]:
        """Group commit's writer: the group in one transaction. Should the group fail as a whole (one
        posting's bad data, or a row lock it waited on for `group_lock_wait`), it was rolled back and
        each caller writes its own posting alone, in its own thread (None): a caller whose open
        transaction holds a row the group needs then gets its posting back and can end that
        transaction, instead of the group waiting for it forever. A lost connection is not retried:
        whether the commit happened is unknown, so the callers hear of it (a keyed posting can be sent
        again safely)."""
        try:
            if self._sqlite:
                with self._write_lock or nullcontext():
                    raw = self._group_raw_connection()
                    applied = commit_sqlite_group(raw.driver_connection, self.engine.dialect, writes)
                outcomes: list[PostedEntry | BaseException | None] = [
                    postings.outcome(w, a) for w, a in zip(writes, applied, strict=True)
                ]
            else:
                conn = self._group_connection()
                lock_wait = self.group_lock_wait if len(writes) > 1 else None
                outcomes = list(self._apply(conn, writes, lock_wait=lock_wait))
        except Exception as exc:
            self._release_group_connection()
            if len(writes) == 1 or getattr(exc, "connection_invalidated", False):
                raise
            log.warning("a group of %d postings failed (%r); each is written on its own", len(writes), exc)
            return [None] * len(writes)
        self._notify([o for o in outcomes if isinstance(o, PostedEntry)])
        return outcomes

    def _group_idle(self) -> None:
        self._group_idle_at = time.monotonic()

    def _drop_stale_group_connection(self) -> None:
        idle_at, self._group_idle_at = self._group_idle_at, None
        if idle_at is not None and time.monotonic() - idle_at > GROUP_CONNECTION_LINGER:
            self._release_group_connection()

    def _group_connection(self) -> Connection:
        self._drop_stale_group_connection()
        if self._group_conn is None or self._group_conn.invalidated:
            self._group_conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        return self._group_conn

    def _group_raw_connection(self) -> PoolProxiedConnection:
        """SQLite: the pooled DB-API connection group leaders write on (see `_group_conn`)."""
        self._drop_stale_group_connection()
        if self._group_raw is None:
            self._group_raw = self.engine.raw_connection()
        return self._group_raw

    def _release_group_connection(self) -> None:
        conn, self._group_conn = self._group_conn, None
        if conn is not None:
            conn.close()
        raw, self._group_raw = self._group_raw, None
        if raw is not None:
            raw.close()

    def _commit(self, writes: list[Write]) -> list[PostedEntry | LedgerError]:
        """`writes` in one transaction of their own. PostgreSQL: the one statement in autocommit (no
        BEGIN/COMMIT round trips, and no row lock held across the client)."""
        if not writes:
            return []
        if self._sqlite:
            with self.transaction() as conn:
                return self._apply(conn, writes)
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            return self._apply(conn, writes)

    def _apply(
        self, conn: Connection, writes: list[Write], *, lock_wait: str | None = None
    ) -> list[PostedEntry | LedgerError]:
        applied = apply_writes(conn, writes, lock_wait=lock_wait)
        return [postings.outcome(w, a) for w, a in zip(writes, applied, strict=True)]

    def _prepare(self, posting: Posting) -> Write:
        return postings.prepare(posting, self.default_floor)

    def _prepare_each(
        self, postings: Sequence[Posting], outcomes: list[PostedEntry | LedgerError | None]
    ) -> tuple[list[Write], list[int]]:
        """The postings that are valid, and their places; an invalid one's error goes to `outcomes`."""
        writes, places = [], []
        for place, posting in enumerate(postings):
            try:
                writes.append(self._prepare(posting))
                places.append(place)
            except InvalidPosting as exc:
                outcomes[place] = exc
        return writes, places


def day_label(moment: datetime) -> str:
    """'Jan 31, 2027'."""
    return f"{moment:%b} {moment.day}, {moment.year}"


# Several keys: one probe of that index per key (PostgreSQL), or one IN list (SQLite). PostgreSQL gets the
# keys as one JSON array (`json_keys`): as a list, psycopg would dump them with a Python call per key.
_FIND_BY_KEYS_PG = sa.text(
    f"SELECT e.* FROM json_array_elements_text(CAST(:keys AS json)) AS k(key) CROSS JOIN LATERAL ("
    f"SELECT {_ENTRY_COLUMNS} FROM ledger_entry WHERE account_id = :account_id "
    "AND idempotency_key >= k.key AND idempotency_key <= k.key ORDER BY idempotency_key LIMIT 1) e"
).columns(**_RESULT_TYPES)
_FIND_BY_KEYS_SQLITE = (
    sa.text(f"SELECT {_ENTRY_COLUMNS} FROM ledger_entry WHERE account_id = :account_id AND idempotency_key IN :keys")
    .bindparams(sa.bindparam("keys", expanding=True))
    .columns(**_RESULT_TYPES)
)


def find_entries(conn: Connection, account_id: int, idempotency_keys: Sequence[str]) -> dict[str, PostedEntry]:
    """`find_entry` for several keys in one query: {key: its entry, marked as a replay}."""
    if not idempotency_keys:
        return {}
    if conn.dialect.name == "sqlite":
        rows = conn.execute(_FIND_BY_KEYS_SQLITE, {"account_id": account_id, "keys": list(idempotency_keys)})
    else:
        rows = conn.execute(_FIND_BY_KEYS_PG, {"account_id": account_id, "keys": json_keys(idempotency_keys)})
    return {row.idempotency_key: _entry_from_row(row, replayed=True) for row in rows}


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


from .ledger_invariants import check_invariants  # noqa: E402, F401  (re-exported: tests, bench and the CLI use it)
