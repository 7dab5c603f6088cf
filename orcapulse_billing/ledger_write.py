"""The ledger's write path: a group of prepared postings applied inside one open transaction.

Each posting is applied on its own merits, in order, and gets one `Applied` result: `posted` (the new
entry), `replayed` (the entry its idempotency key already has), `refused` (it would pass its floor) or
`no_account`. Nothing is written for a posting that is not `posted`, so a refusal never spoils the
transaction of the others. The group is sorted by account first (stable: a group keeps the order of
its postings per account), so every writer locks account rows in one order and two groups never
deadlock on each other.

* PostgreSQL: one statement, one round trip for the whole group, whatever its size: `ledger_post`
  (migration 0013) walks the group posting by posting; from 8 postings on, `ledger_post_group` (0019)
  writes a group of plain debits with new keys that their floors let through (bulk usage) set-based, a
  fixed number of statements, and hands any other group to `ledger_post`. Either way, per account the
  row is locked once and the entries, their grants or grant consumption, the aggregates and the usage
  rollup are written; both give the same results, posting for posting.
* SQLite: the same steps in Python on the raw sqlite3 cursor (in-process, no round trips), inside the
  caller's `BEGIN IMMEDIATE`, which already holds the database's only write lock.

Plain Python, SQLAlchemy and the DB-API drivers: nothing here imports Reflex.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from pydantic_core import to_json
from sqlalchemy.engine import Connection, Dialect

from .db import as_utc
from .value_type import value_type

# Statuses of an `Applied`.
POSTED, REPLAYED, REFUSED, NO_ACCOUNT = "posted", "replayed", "refused", "no_account"


@value_type
class Write:
    """One posting, validated and in ledger units: what the write path needs."""

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
    created_at: datetime  # UTC
    priority: int  # the burn order class of a credit's grant
    expires_at: datetime | None
    checkout_session_id: int | None
    from_grant: int | None


@value_type
class Applied:
    """What became of one `Write`. `written` holds what the database decided for a `posted` one (the
    new entry's id, its seq and the balance before it; everything else in the entry is the Write's own);
    `entry` holds the ledger_entry columns of the earlier entry for `replayed` (id, account_id, seq,
    type, source, amount, balance_before, balance_after, description, category, metadata,
    actor_user_id, actor_ip, idempotency_key, created_at); `balance` is the account's balance for
    `refused`."""

    status: str
    entry: dict[str, Any] | None = None
    balance: int | None = None
    written: tuple[int, int, int] | None = None  # posted: (id, seq, balance_before)


ENTRY_COLUMNS = (
    "id",
    "account_id",
    "seq",
    "type",
    "source",
    "amount",
    "balance_before",
    "balance_after",
    "description",
    "category",
    "metadata",
    "actor_user_id",
    "actor_ip",
    "idempotency_key",
    "created_at",
)


def _by_account(writes: Sequence[Write], apply: Callable[[list[Write]], list[Applied]]) -> list[Applied]:
    """`apply` to the writes sorted by account (stable within an account); results in the order of `writes`."""
    order = sorted(range(len(writes)), key=lambda n: writes[n].account_id)
    results: list[Applied | None] = [None] * len(writes)
    for n, result in zip(order, apply([writes[n] for n in order]), strict=True):
        results[n] = result
    return [r for r in results if r is not None]


def apply_writes(
    conn: Connection, writes: Sequence[Write], *, lock_wait: str | None = None, pg_function: str | None = None
) -> list[Applied]:
    """Applies `writes` inside `conn`'s open transaction; results in the order of `writes`.
    `lock_wait` (PostgreSQL, e.g. '5s'): how long the group may wait for a row lock before it fails
    as a whole (a lock timeout error), so that a group never waits forever on a transaction that is
    itself waiting for the group. `pg_function`: one of PG_FUNCTIONS (the tests hold one to the other);
    by default `ledger_post_group` for groups of SET_BASED_FROM postings or more, `ledger_post` below."""
    if pg_function is None:
        pg_function = PG_FUNCTIONS[0] if len(writes) >= SET_BASED_FROM else PG_FUNCTIONS[1]
    if pg_function not in PG_FUNCTIONS:
        raise ValueError(f"unknown ledger function {pg_function!r}")
    if not writes:
        return []
    if conn.dialect.name == "sqlite":
        return _by_account(writes, _SqliteWriter(conn.connection.driver_connection, conn.dialect).apply)
    return _by_account(writes, lambda ordered: _apply_postgres(conn, ordered, lock_wait, pg_function))


# -- PostgreSQL ------------------------------------------------------------------------------------

# ledger_post_group (migration 0019): a group of plain debits set-based, any other group through
# ledger_post (migration 0013), the posting-by-posting walk, with the same results.
PG_FUNCTIONS = ("ledger_post_group", "ledger_post")
# The set-based path runs a dozen statements whatever the group's size: below about 8 postings the
# walk's few statements per posting cost the server less (backend CPU measured per posting: 1 posting
# 0.65 ms walked against 1.1 ms set-based, 8 postings 0.22 against 0.17, 1,000 postings 0.057 against 0.049).
SET_BASED_FROM = 8


# The function's rows, with the columns a `posted` row repeats from its Write left out (NULL): most rows
# of a batch are posted, and formatting, sending and decoding those columns (metadata as JSON, the
# timestamp, the texts) again for each was a tenth of the call. The positions are the function's.
_ECHOED = set(ENTRY_COLUMNS) - {"id", "seq", "balance_before", "balance_after"}
_PG_CALLS = {
    name: "SELECT i, status, "
    + ", ".join(f"CASE WHEN status = '{POSTED}' THEN NULL ELSE {c} END" if c in _ECHOED else c for c in ENTRY_COLUMNS)
    + f" FROM {name}(%s::jsonb, %s)"
    for name in PG_FUNCTIONS
}


def _apply_postgres(conn: Connection, writes: list[Write], lock_wait: str | None, pg_function: str) -> list[Applied]:
    # (created_at, day) as text per datetime object (by identity: equal instants may differ in offset); the
    # postings of a batch mostly share one
    moments: dict[int, tuple[str, str]] = {}
    for w in writes:
        if id(w.created_at) not in moments:
            moments[id(w.created_at)] = (w.created_at.isoformat(), w.created_at.date().isoformat())
    # pydantic_core's encoder (Rust): the same JSON as json.dumps for these plain values, in a third of the
    # time, which for a batch of 1,000 postings was a few per cent of the request
    payload = to_json(
        [
            {
                "i": n,
                "account_id": w.account_id,
                "type": w.type,
                "kind": w.kind,
                "source": w.source,
                "amount": w.amount,
                "floor": w.floor,
                "description": w.description,
                "category": w.category,
                "metadata": w.metadata,
                "actor_user_id": w.actor_user_id,
                "actor_ip": w.actor_ip,
                "idempotency_key": w.idempotency_key,
                "created_at": moments[id(w.created_at)][0],
                "day": moments[id(w.created_at)][1],
                "priority": w.priority,
                "expires_at": w.expires_at.isoformat() if w.expires_at else None,
                "checkout_session_id": w.checkout_session_id,
                "from_grant": w.from_grant,
            }
            for n, w in enumerate(writes)
        ]
    ).decode()
    rows = _driver_rows(conn, _PG_CALLS[pg_function], (payload, lock_wait))
    results: list[Applied | None] = [None] * len(writes)
    for row in rows:
        n, status = row[0], row[1]
        if status == POSTED:
            results[n] = Applied(status, written=(row[2], row[4], row[8]))
        elif status == REPLAYED:
            results[n] = Applied(status, dict(zip(ENTRY_COLUMNS, row[2:], strict=True)))
        else:
            results[n] = Applied(status, balance=row[9])
    if any(r is None for r in results):
        raise RuntimeError("ledger_post returned fewer results than postings")
    return [r for r in results if r is not None]


def _driver_rows(conn: Connection, statement: str, parameters: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    """One statement on the DB-API cursor of `conn` (in its transaction, if any), its rows as the driver
    decoded them (jsonb, timestamptz). SQLAlchemy's result machinery (metadata, rows, processors) costs
    more per call than a one-row posting's statement, so it is skipped; its errors are kept: a DB-API
    error is raised as SQLAlchemy would raise it, and a lost connection is invalidated in the pool."""
    dbapi_conn = conn.connection.dbapi_connection
    dbapi_error = conn.dialect.loaded_dbapi.Error
    cursor = dbapi_conn.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(statement, parameters)
        return list(cursor.fetchall())
    except dbapi_error as exc:
        lost = conn.dialect.is_disconnect(exc, dbapi_conn, cursor)
        if lost:
            conn.invalidate(exc)
        raise sa.exc.DBAPIError.instance(
            statement, parameters, exc, dbapi_error, connection_invalidated=lost, dialect=conn.dialect
        ) from exc
    finally:
        cursor.close()


# -- SQLite ----------------------------------------------------------------------------------------

_S_ACCOUNT = (
    "SELECT balance, transaction_count, lifetime_added, lifetime_consumed, topup_count, usage_count, "
    "refund_count, adjustment_count, version FROM credit_account WHERE id = ?"
)
_S_SAVE_ACCOUNT = (
    "UPDATE credit_account SET balance = ?, transaction_count = ?, lifetime_added = ?, lifetime_consumed = ?, "
    "topup_count = ?, usage_count = ?, refund_count = ?, adjustment_count = ?, version = ?, updated_at = ? "
    "WHERE id = ?"
)
_S_BY_KEY = f"SELECT {', '.join(ENTRY_COLUMNS)} FROM ledger_entry WHERE account_id = ? AND idempotency_key = ?"
_S_ENTRY = (
    "INSERT INTO ledger_entry (account_id, seq, kind, kind_seq, type, source, amount, balance_before, balance_after, "
    "description, category, metadata, actor_user_id, actor_ip, idempotency_key, created_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_S_GRANT = (
    "INSERT INTO credit_grant (account_id, entry_id, source, priority, amount, remaining, expires_at, "
    "checkout_session_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# Burn order, as in ledger_post: the purchase's own grants, class, earliest expiry (none last), oldest.
_S_BURNABLE = (
    "SELECT id, remaining FROM credit_grant WHERE account_id = ? AND remaining > 0 AND (? IS NULL OR id = ?) "
    "ORDER BY CASE WHEN checkout_session_id = ? THEN 0 ELSE 1 END, priority, "
    "CASE WHEN expires_at IS NULL THEN 1 ELSE 0 END, expires_at, id"
)
_S_TAKE = "UPDATE credit_grant SET remaining = remaining - ? WHERE id = ?"
_S_CONSUMPTION = "INSERT INTO grant_consumption (entry_id, grant_id, amount) VALUES (?, ?, ?)"
_S_ROLLUP = (
    "INSERT INTO usage_rollup (account_id, day, category, amount, count) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (account_id, day, category) "
    "DO UPDATE SET amount = usage_rollup.amount + excluded.amount, count = usage_rollup.count + excluded.count"
)
_KIND_COUNTER = {"topup": 4, "usage": 5, "refund": 6}  # index in the account state; anything else: 7


def commit_sqlite_group(dbapi_conn: Any, dialect: Dialect, writes: Sequence[Write]) -> list[Applied]:
    """SQLite: `writes` in a transaction of their own on a raw sqlite3 connection (autocommit mode, as
    db.make_engine opens them): BEGIN IMMEDIATE, the writes, COMMIT; a rollback on any error. Group
    commit's path, for which SQLAlchemy's connection and transaction objects cost more than the writes.
    The caller holds the process's writer lock."""
    dbapi_error = dialect.loaded_dbapi.Error
    try:
        dbapi_conn.execute("BEGIN IMMEDIATE")
        try:
            applied = _by_account(writes, _SqliteWriter(dbapi_conn, dialect)._apply)
            dbapi_conn.execute("COMMIT")
        except BaseException:
            dbapi_conn.execute("ROLLBACK")
            raise
    except dbapi_error as exc:  # as SQLAlchemy would raise it (IntegrityError, OperationalError, ...)
        raise sa.exc.DBAPIError.instance("ledger write", None, exc, dbapi_error) from exc
    return applied


class _SqliteWriter:
    """`ledger_post`, step for step, in Python on the raw sqlite3 connection of a write transaction."""

    def __init__(self, dbapi_conn: Any, dialect: Dialect):
        self.dbapi_conn = dbapi_conn
        self.dialect = dialect
        self._timestamp, self._day, self._json, self._read_timestamp, self._read_json = _sqlite_processors(dialect)

    def apply(self, writes: list[Write]) -> list[Applied]:
        dbapi_error = self.dialect.loaded_dbapi.Error
        try:
            return self._apply(writes)
        except dbapi_error as exc:  # as SQLAlchemy would raise it (IntegrityError, OperationalError, ...)
            raise sa.exc.DBAPIError.instance("ledger write", None, exc, dbapi_error) from exc

    def _apply(self, writes: list[Write]) -> list[Applied]:
        # The raw sqlite3 cursor: a statement costs microseconds here, and SQLAlchemy's per-statement
        # overhead would be most of a posting's time.
        cur = self.dbapi_conn.cursor()
        results: list[Applied] = []
        rollup: dict[tuple[int, Any, str], list[int]] = {}
        account_id: int | None = None
        state: list[Any] | None = None  # the account row's columns, as _S_ACCOUNT reads them
        moved = 0
        last_at: Any = None
        try:
            for w in writes:
                if w.account_id != account_id:
                    if state is not None and moved:
                        cur.execute(_S_SAVE_ACCOUNT, (*state[:8], state[8] + moved, last_at, account_id))
                    account_id, moved = w.account_id, 0
                    row = cur.execute(_S_ACCOUNT, (account_id,)).fetchone()
                    state = list(row) if row is not None else None
                if state is None:
                    results.append(Applied(NO_ACCOUNT))
                    continue
                if w.idempotency_key is not None:
                    found = cur.execute(_S_BY_KEY, (account_id, w.idempotency_key)).fetchone()
                    if found is not None:
                        results.append(Applied(REPLAYED, self._entry(found)))
                        continue
                balance = state[0]
                if balance + w.amount < w.floor:
                    results.append(Applied(REFUSED, balance=balance))
                    continue
                counter = _KIND_COUNTER.get(w.kind, 7)
                state[1] += 1
                state[counter] += 1
                created_at = self._timestamp(w.created_at)
                metadata = self._json(w.metadata)
                cur.execute(
                    _S_ENTRY,
                    (
                        account_id,
                        state[1],
                        w.kind,
                        state[counter],
                        w.type,
                        w.source,
                        w.amount,
                        balance,
                        balance + w.amount,
                        w.description,
                        w.category,
                        metadata,
                        w.actor_user_id,
                        w.actor_ip,
                        w.idempotency_key,
                        created_at,
                    ),
                )
                entry_id = cur.lastrowid
                if w.amount > 0:  # the credit's grant pays the account's debt first
                    remaining = max(0, min(w.amount, balance + w.amount))
                    cur.execute(
                        _S_GRANT,
                        (
                            account_id,
                            entry_id,
                            w.source,
                            w.priority,
                            w.amount,
                            remaining,
                            self._timestamp(w.expires_at) if w.expires_at else None,
                            w.checkout_session_id,
                            created_at,
                        ),
                    )
                    state[2] += w.amount
                else:
                    self._burn(cur, entry_id, w)
                    state[3] -= w.amount
                    if w.kind == "usage":
                        key = (account_id, self._day(w.created_at.date()), w.category or "other")
                        totals = rollup.setdefault(key, [0, 0])
                        totals[0] -= w.amount
                        totals[1] += 1
                state[0] = balance + w.amount
                moved += 1
                last_at = created_at
                results.append(Applied(POSTED, written=(entry_id, state[1], balance)))
            if state is not None and moved:
                cur.execute(_S_SAVE_ACCOUNT, (*state[:8], state[8] + moved, last_at, account_id))
            if rollup:
                cur.executemany(_S_ROLLUP, [(*key, amount, count) for key, (amount, count) in rollup.items()])
        finally:
            cur.close()
        return results

    @staticmethod
    def _burn(cur: Any, entry_id: int, w: Write) -> None:
        need = -w.amount
        taken = []
        for grant_id, remaining in cur.execute(
            _S_BURNABLE, (w.account_id, w.from_grant, w.from_grant, w.checkout_session_id)
        ).fetchall():
            take = min(remaining, need)
            taken.append((take, grant_id))
            need -= take
            if need <= 0:
                break
        if taken:
            cur.executemany(_S_TAKE, taken)
            cur.executemany(_S_CONSUMPTION, [(entry_id, grant_id, take) for take, grant_id in taken])

    def _entry(self, row: Sequence[Any]) -> dict[str, Any]:
        entry = dict(zip(ENTRY_COLUMNS, row, strict=True))
        entry["metadata"] = self._read_json(entry["metadata"])
        entry["created_at"] = as_utc(self._read_timestamp(entry["created_at"]))
        return entry


def _processor(type_: sa.types.TypeEngine[Any], dialect: Dialect) -> Callable[[Any], Any]:
    process = type_.dialect_impl(dialect).bind_processor(dialect)
    return process if process is not None else (lambda value: value)


@functools.lru_cache(maxsize=8)
def _sqlite_processors(dialect: Dialect) -> tuple[Callable[[Any], Any], ...]:
    """How SQLAlchemy's types write and read values on this dialect, so raw statements store exactly what
    the ORM and Core store (timestamps, dates, JSON): looked up once per engine, not per group."""
    timestamp, json_type = sa.DateTime(timezone=True), sa.JSON()
    return (
        _processor(timestamp, dialect),
        _processor(sa.Date(), dialect),
        _processor(json_type, dialect),
        timestamp.dialect_impl(dialect).result_processor(dialect, None) or (lambda value: value),
        json_type.dialect_impl(dialect).result_processor(dialect, None) or (lambda value: value),
    )
