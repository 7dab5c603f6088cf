"""What usage owes below one ledger unit, kept per account and operation until it adds up.

The ledger posts whole units (ten-thousandths of a credit). A report is charged floor(carried + exact
cost) units and the rest, 0 <= rest < 1 unit, is carried to the next report of the same account and
operation (`usage_remainder`, exact decimal text in credits). Reports that charged nothing keep their
idempotency key in `usage_report`, so a replay does not carry their cost twice.

All functions run inside the caller's ledger transaction (`Ledger.transaction()`); `lock_remainder`
must come first, so concurrent reports of one account+operation queue on its row. Plain Python and
SQLAlchemy Core.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import ROUND_FLOOR, Decimal, Inexact, localcontext

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .models import UsageRemainder, UsageReport
from .money import UNITS_PER_CREDIT

SESSION_PARTS = ("base", "llm", "stt", "tts")  # the cost columns of `billing_session`, in tie-break order

REMAINDER_CHARS = 64  # usage_remainder.remainder is a String(64)
_remainder = sa.inspect(UsageRemainder).local_table
_report = sa.inspect(UsageReport).local_table
_CREATE_REMAINDER = sa.text(
    "INSERT INTO usage_remainder (account_id, operation, remainder, updated_at) "
    "VALUES (:account_id, :operation, '0', :now) ON CONFLICT (account_id, operation) DO NOTHING"
).bindparams(sa.bindparam("now", type_=sa.DateTime(timezone=True)))


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


def store_remainder(conn: Connection, account_id: int, operation: str, remainder: Decimal) -> None:
    text = f"{remainder.normalize():f}"
    if len(text) > REMAINDER_CHARS:
        raise ValueError(f"a remainder of {text} has too many digits to keep exactly")
    conn.execute(
        sa.update(UsageRemainder)
        .where(_remainder.c.account_id == account_id, _remainder.c.operation == operation)
        .values(remainder=text, updated_at=datetime.now(UTC))
    )


def carry(carried: Decimal, cost: Decimal) -> tuple[int, Decimal]:
    """(units to charge now, rest to carry in credits): floor(carried + cost) in units, exactly."""
    if cost < 0 or not (0 <= carried * UNITS_PER_CREDIT < 1):
        raise ValueError(f"cannot carry a cost of {cost} over a remainder of {carried}")
    with localcontext() as ctx:
        ctx.prec = 80
        ctx.traps[Inexact] = True  # exact or an error, never a silent rounding
        total = (carried + cost) * UNITS_PER_CREDIT
        units = int(total.to_integral_value(rounding=ROUND_FLOOR))
        return units, (total - units) / UNITS_PER_CREDIT


def uncharged_report(conn: Connection, account_id: int, idempotency_key: str) -> tuple[bool, str | None]:
    """Was this key a report that charged nothing (its cost went to the remainder)? And what it said."""
    row = conn.execute(
        sa.select(_report.c.fingerprint).where(
            _report.c.account_id == account_id, _report.c.idempotency_key == idempotency_key
        )
    ).first()
    return (row is not None, row.fingerprint if row is not None else None)


def record_uncharged(
    conn: Connection, account_id: int, idempotency_key: str, created_at: datetime | None, fingerprint: str
) -> None:
    conn.execute(
        sa.insert(UsageReport).values(
            account_id=account_id,
            idempotency_key=idempotency_key,
            fingerprint=fingerprint,
            created_at=created_at or datetime.now(UTC),
        )
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
