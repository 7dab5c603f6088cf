"""What usage owes below one ledger unit, kept per account and operation until it adds up.

The ledger posts whole units (ten-thousandths of a credit). A report is charged floor(carried + exact
cost) units and the rest, 0 <= rest < 1 unit, is carried to the next report of the same account and
operation (`usage_remainder`, exact decimal text in credits). Reports that charged nothing keep their
idempotency key in `usage_report`, so a replay does not carry their cost twice.

All functions run inside the caller's ledger transaction (`Ledger.transaction()`); `lock_usage_keys`
must come first, then `lock_remainder`, so concurrent reports of one key, and of one account+operation,
queue. Plain Python and SQLAlchemy Core.
"""

from __future__ import annotations

import zlib
from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime
from decimal import ROUND_FLOOR, Context, Decimal, DivisionByZero, Inexact, InvalidOperation, Overflow

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .billing_profile import table_of
from .db import dialect_insert, insert_many, json_keys, one_of
from .models import UsageRemainder, UsageReport
from .money import UNITS_PER_CREDIT

SESSION_PARTS = ("base", "llm", "stt", "tts")  # the cost columns of `billing_session`, in tie-break order

REMAINDER_CHARS = 64  # usage_remainder.remainder is a String(64)
_remainder = sa.inspect(UsageRemainder).local_table
_report = table_of(UsageReport)
_CREATE_REMAINDER = sa.text(
    "INSERT INTO usage_remainder (account_id, operation, remainder, updated_at) "
    "VALUES (:account_id, :operation, '0', :now) ON CONFLICT (account_id, operation) DO NOTHING"
).bindparams(sa.bindparam("now", type_=sa.DateTime(timezone=True)))


KEY_LOCK_BUCKETS = 64  # per account; a batch of 1,000 keys takes at most 64 advisory locks, not 1,000
_LOCK_KEY_BUCKETS = sa.text(
    "SELECT pg_advisory_xact_lock(CAST(:account_id AS integer), b) FROM (SELECT unnest(CAST(:buckets AS integer[])) AS b) AS k"
)


def lock_usage_keys(conn: Connection, account_id: int, keys: Collection[str]) -> None:
    """Makes reports that use the same idempotency key on one account queue, whatever their operations.

    The remainder row serialises reports of one account+operation only: without this, one key reused for
    two operations at once could be checked by both before either wrote it, and both be recorded (one
    charged, the other carried as uncharged). PostgreSQL: transaction-scoped advisory locks on (account,
    bucket of the key), in the two-integer key space that the jobs' one-bigint locks never use, taken in
    ascending bucket order (one statement over a sorted array) before any other lock, so batches and
    single reports never deadlock; unrelated keys sharing a bucket merely queue, as they would at the
    account row when they post. SQLite: `BEGIN IMMEDIATE` already holds the database's write lock."""
    if conn.dialect.name != "postgresql" or not keys:
        return
    buckets = sorted({zlib.crc32(key.encode()) % KEY_LOCK_BUCKETS for key in keys})
    conn.execute(_LOCK_KEY_BUCKETS, {"account_id": account_id, "buckets": buckets}).all()


def lock_remainder(conn: Connection, account_id: int, operation: str) -> Decimal:
    """The carried remainder (credits), its row created if missing and locked until the transaction ends.

    PostgreSQL: a concurrent report of the same account+operation waits at the INSERT (a row not yet
    committed) or at `FOR UPDATE` (a committed one) until this transaction ends, then reads the new
    value. SQLite has no row locks: its `BEGIN IMMEDIATE` already holds the database's write lock.
    """
    conn.execute(_CREATE_REMAINDER, {"account_id": account_id, "operation": operation, "now": datetime.now(UTC)})
    text = conn.execute(
        sa.select(_remainder.c.remainder)
        .where(_remainder.c.account_id == account_id, _remainder.c.operation == operation)
        .with_for_update()
    ).scalar_one()
    return Decimal(text)


def lock_remainders(
    conn: Connection, account_id: int, operations: Collection[str]
) -> tuple[dict[str, Decimal], set[str]]:
    """`lock_remainder` for several operations of one account at once (a batch of reports): the missing
    rows are created by one statement and all of them locked by another, in the order of their names (the
    only order anyone locks several in, so batches never deadlock each other; a single report locks one).
    Returns (carried remainder per operation, the operations whose row this call created)."""
    names = sorted(set(operations))
    if not names:
        return {}, set()
    now = datetime.now(UTC)
    insert = dialect_insert(conn, _remainder).values(
        [{"account_id": account_id, "operation": op, "remainder": "0", "updated_at": now} for op in names]
    )
    created = set(
        conn.execute(
            insert.on_conflict_do_nothing(index_elements=["account_id", "operation"]).returning(_remainder.c.operation)
        )
        .scalars()
        .all()
    )
    rows = conn.execute(
        sa.select(_remainder.c.operation, _remainder.c.remainder)
        .where(_remainder.c.account_id == account_id, _remainder.c.operation.in_(names))
        .order_by(_remainder.c.operation)
        .with_for_update()
    ).all()
    carried = {op: Decimal(text) for op, text in rows}
    if len(carried) != len(names):
        raise RuntimeError(f"usage remainders of account {account_id} missing after creating them")
    return carried, created


def store_remainder(conn: Connection, account_id: int, operation: str, remainder: Decimal) -> None:
    conn.execute(
        sa.update(UsageRemainder)
        .where(_remainder.c.account_id == account_id, _remainder.c.operation == operation)
        .values(remainder=_remainder_text(remainder), updated_at=datetime.now(UTC))
    )


def store_remainders(conn: Connection, account_id: int, remainders: Mapping[str, Decimal]) -> None:
    """`store_remainder` for several operations of one account, in one statement."""
    if not remainders:
        return
    texts = {op: _remainder_text(r) for op, r in remainders.items()}
    conn.execute(
        sa.update(UsageRemainder)
        .where(_remainder.c.account_id == account_id, _remainder.c.operation.in_(sorted(texts)))
        .values(
            remainder=sa.case(texts, value=_remainder.c.operation, else_=_remainder.c.remainder),
            updated_at=datetime.now(UTC),
        )
    )


def drop_remainders(conn: Connection, account_id: int, operations: Collection[str]) -> None:
    """Deletes rows (of a batch's operations whose reports were all refused: rows `lock_remainders` made)."""
    if operations:
        conn.execute(
            sa.delete(UsageRemainder).where(
                _remainder.c.account_id == account_id, _remainder.c.operation.in_(sorted(operations))
            )
        )


def _remainder_text(remainder: Decimal) -> str:
    text = f"{remainder.normalize():f}"
    if len(text) > REMAINDER_CHARS:
        raise ValueError(f"a remainder of {text} has too many digits to keep exactly")
    return text


# carry's arithmetic: 80 digits, exact or an error (Inexact trapped), never a silent rounding. One shared
# context used through its methods, not `localcontext()` per call (that copies a context each time, and a
# batch carries 1,000 costs); the methods raise on a trapped condition without touching the thread's own.
_EXACT = Context(prec=80, traps=[InvalidOperation, DivisionByZero, Overflow, Inexact])


def carry(carried: Decimal, cost: Decimal) -> tuple[int, Decimal]:
    """(units to charge now, rest to carry in credits): floor(carried + cost) in units, exactly."""
    if cost < 0 or not (0 <= carried * UNITS_PER_CREDIT < 1):
        raise ValueError(f"cannot carry a cost of {cost} over a remainder of {carried}")
    total = _EXACT.multiply(_EXACT.add(carried, cost), UNITS_PER_CREDIT)
    units = int(total.to_integral_value(rounding=ROUND_FLOOR, context=_EXACT))
    return units, _EXACT.divide(_EXACT.subtract(total, units), UNITS_PER_CREDIT)


def uncharged_report(conn: Connection, account_id: int, idempotency_key: str) -> tuple[bool, str | None]:
    """Was this key a report that charged nothing (its cost went to the remainder)? And what it said."""
    row = conn.execute(
        sa.select(_report.c.fingerprint).where(
            _report.c.account_id == account_id, _report.c.idempotency_key == idempotency_key
        )
    ).first()
    return (row is not None, row.fingerprint if row is not None else None)


def uncharged_reports(conn: Connection, account_id: int, idempotency_keys: Collection[str]) -> dict[str, str | None]:
    """`uncharged_report` for several keys in one query: {key: fingerprint} of those that were seen."""
    if not idempotency_keys:
        return {}
    if conn.dialect.name == "postgresql":  # the keys as one JSON array (db.json_keys)
        rows = conn.execute(_UNCHARGED_PG, {"account_id": account_id, "keys": json_keys(idempotency_keys)})
    else:
        rows = conn.execute(
            sa.select(_report.c.idempotency_key, _report.c.fingerprint).where(
                _report.c.account_id == account_id, one_of(conn, _report.c.idempotency_key, idempotency_keys)
            )
        )
    return {key: fingerprint for key, fingerprint in rows}


# one probe of the primary key per key, as ledger.find_entries probes its key index
_UNCHARGED_PG = sa.text(
    "SELECT r.idempotency_key, r.fingerprint FROM json_array_elements_text(CAST(:keys AS json)) AS k(key) "
    "CROSS JOIN LATERAL (SELECT idempotency_key, fingerprint FROM usage_report WHERE account_id = :account_id "
    "AND idempotency_key >= k.key AND idempotency_key <= k.key ORDER BY idempotency_key LIMIT 1) r"
)


def record_uncharged(
    conn: Connection, account_id: int, idempotency_key: str, created_at: datetime | None, fingerprint: str
) -> None:
    record_uncharged_many(conn, account_id, [(idempotency_key, created_at, fingerprint)])


def record_uncharged_many(
    conn: Connection, account_id: int, reports: Sequence[tuple[str, datetime | None, str]]
) -> None:
    """Keeps the keys (with created_at and fingerprint) of reports that charged nothing, in one statement."""
    if not reports:
        return
    now = datetime.now(UTC)
    insert_many(
        conn,
        _report,
        [
            {"account_id": account_id, "idempotency_key": key, "fingerprint": said, "created_at": at or now}
            for key, at, said in reports
        ],
    )


def apportion(total_units: int, exact: Mapping[str, Decimal]) -> dict[str, int]:
    """Split a charged total over exact parts (credits) so the parts add up to it exactly.

    Largest remainder: each part gets floor(its exact units); the units left over go one each to the
    parts with the largest fractions, ties to the earlier part. With total = floor(carried + sum of the
    parts) and carried < 1 unit, the leftover is between 0 and the number of parts with a fraction, so
    every part stays within one unit of its exact value and a part without a fraction is never raised.
    """
    names = list(exact)
    scaled = {k: exact[k] * UNITS_PER_CREDIT for k in names}
    parts = {k: int(scaled[k].to_integral_value(rounding=ROUND_FLOOR)) for k in names}
    leftover = total_units - sum(parts.values())
    fractions = sorted(names, key=lambda k: (-(scaled[k] - parts[k]), names.index(k)))
    with_fraction = [k for k in fractions if scaled[k] != parts[k]]
    if not 0 <= leftover <= len(with_fraction):
        raise ValueError(f"cannot split {total_units} units over parts {dict(exact)}")
    for k in with_fraction[:leftover]:
        parts[k] += 1
    return parts
