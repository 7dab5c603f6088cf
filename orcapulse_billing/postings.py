"""What a posting is, how it is checked, and what became of it: the ledger's value types and errors.

`prepare` checks a `Posting` and turns it into the write path's `Write` in ledger units (the one place
an amount is rounded); `outcome` turns what the write path did with it into a `PostedEntry` or the
posting's own `LedgerError`. `ledger.py` re-exports all of it; callers import from there.

Plain Python: nothing here imports Reflex or touches the database.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

from .db import as_utc
from .ledger_write import NO_ACCOUNT, POSTED, REFUSED, Applied, Write
from .models import ENTRY_KINDS, CreditSource, EntryType
from .money import MoneyError, from_units, parse_amount, to_units
from .value_type import value_type

MAX_AMOUNT = Decimal("1000000000")  # one billion credits in a single posting is a bug, not a sale
NO_FLOOR_UNITS = -(2**62)
NO_FLOOR = from_units(NO_FLOOR_UNITS)  # a posting that may go below zero as debt (money already gone)


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


_M = TypeVar("_M")
# `EntryType(x)` and `CreditSource(x)` as look-ups (a batch prepares a thousand postings): by member or value.
_ENTRY_TYPES: dict[object, EntryType] = {key: t for t in EntryType for key in (t, t.value)}
_CREDIT_SOURCES: dict[object, CreditSource] = {key: c for c in CreditSource for key in (c, c.value)}


def _member(members: Mapping[object, _M], value: object) -> _M | None:
    try:
        return members.get(value)
    except TypeError:  # unhashable: no member either
        return None


def grant_priority(source: str | None) -> int:
    return GRANT_PRIORITY.get(source or "", PAID_PRIORITY)


@value_type
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


@value_type
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


def entry_from_mapping(m: Mapping[Any, Any], *, replayed: bool = False) -> PostedEntry:
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


def prepare(p: Posting, default_floor: int) -> Write:
    """Checks a posting and puts it in ledger units, or raises InvalidPosting; `default_floor` (units) is
    the floor of a debit that names none."""
    entry_type = _member(_ENTRY_TYPES, p.type)
    if entry_type is None:
        raise InvalidPosting(f"unknown entry type {p.type!r}")
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
        credit_source = _member(_CREDIT_SOURCES, source or _DEFAULT_SOURCE.get(entry_type))
        if credit_source is None:
            raise InvalidPosting(f"unknown credit source {p.source!r}")
        source = credit_source.value
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
        floor = default_floor
    else:
        floor = to_units(p.floor)
    created_at = as_utc(p.created_at) if p.created_at else datetime.now(UTC)
    return Write(
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
        priority=grant_priority(source),
        expires_at=as_utc(p.expires_at) if p.expires_at else None,
        checkout_session_id=p.checkout_session_id,
        from_grant=p.from_grant,
    )


def outcome(w: Write, applied: Applied) -> PostedEntry | LedgerError:
    """A posting's result from what the write path did with it."""
    if applied.status == POSTED:  # the entry is the Write, as written
        assert applied.written is not None
        entry_id, seq, before = applied.written
        return PostedEntry(
            id=entry_id,
            account_id=w.account_id,
            seq=seq,
            type=w.type,
            source=w.source,
            amount_units=w.amount,
            balance_before_units=before,
            balance_after_units=before + w.amount,
            description=w.description,
            category=w.category,
            metadata=dict(w.metadata),
            actor_user_id=w.actor_user_id,
            actor_ip=w.actor_ip,
            idempotency_key=w.idempotency_key,
            created_at=w.created_at,  # already UTC
        )
    if applied.status == REFUSED:
        return InsufficientCredits(from_units(applied.balance or 0), from_units(w.amount), from_units(w.floor))
    if applied.status == NO_ACCOUNT:
        return AccountNotFound(f"no credit account {w.account_id}")
    entry = entry_from_mapping(applied.entry or {}, replayed=True)
    mine = (w.type, w.amount, w.source, w.category, w.description)
    theirs = (entry.type, entry.amount_units, entry.source, entry.category, entry.description)
    if mine != theirs:
        return IdempotencyConflict(f"idempotency key {w.idempotency_key!r} was already used with different parameters")
    return entry
