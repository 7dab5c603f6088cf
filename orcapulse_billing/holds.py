"""Holds: credits reserved for an operation in progress (a call), so that calls running at the same
time cannot together spend more than the account has.

* The **available** balance is the balance minus the active holds (`credit_account.held`).
* `place_hold` prices the estimate (metering's `price`, rounded up to a whole unit) and reserves it
  with ONE conditional UPDATE of the account row (`held = held + amount WHERE balance - held > 0 AND
  balance - held - amount >= floor`), which also queues concurrent holds on that row: they can never
  together reserve more than the rule allows. The rule is the grace rule of `check` and
  `record_usage`: an operation may start only while the available balance is above zero, and its hold
  must fit within the available balance plus the grace limit (floor: minus `GRACE_LIMIT`). Debt (an
  available balance at or below zero) blocks every new hold until it is paid.
* `capture` posts the actual cost as a usage entry (the same description, category and metadata as a
  usage report, keyed `hold:<id>`), with no floor: a completed operation is always recorded, even past
  the hold and past the grace limit (debt). It releases the whole hold in the same transaction.
* `release` gives the hold back (the operation failed: nothing is charged).
* Holds expire `HOLD_TTL_SECONDS` after they were placed: `expire_holds` (a job every minute, and
  lazily for an account before each of its new holds) releases them. A hold captured after it
  expired is still charged (the work was done); one released after it expired stays expired.

Each call is one ledger transaction, idempotent: a hold's key is unique per account (a replay returns
the same hold; the same key with another operation or estimate is a conflict), and a capture or
release of a hold already settled that way returns the first outcome; settled the other way it is a
conflict. Lock order, everywhere: hold rows, then the usage remainder, then the account row.

Plain Python and SQLAlchemy Core: nothing here imports Reflex.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, Decimal
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from .budgets import BudgetExceeded, open_gate
from .db import as_utc, at_or_now
from .ledger import Ledger, LedgerError, PostedEntry, find_entry, get_account
from .metering import Charge, _qty, post_charge, price, usage_metadata
from .models import CreditHold
from .money import UNITS_PER_CREDIT, fmt4
from .usage_remainders import lock_remainder

log = logging.getLogger(__name__)
DEFAULT_TTL_SECONDS = 900
ACTIVE, CAPTURED, RELEASED, EXPIRED = "active", "captured", "released", "expired"
_hold = cast(sa.Table, sa.inspect(CreditHold).local_table)
_TS = sa.DateTime(timezone=True)


class HoldError(LedgerError):
    code = "hold_error"


class HoldNotFound(HoldError):
    code = "not_found"


class HoldConflict(HoldError):
    """The key was used for another hold, or the hold was already settled the other way."""

    code = "conflict"


class HoldRefused(HoldError):
    """The hold does not fit: the available balance is at or below zero, or too small."""

    code = "insufficient_credits"

    def __init__(self, available_units: int, needed_units: int, grace_units: int):
        self.available_units, self.needed_units, self.grace_units = available_units, needed_units, grace_units
        if available_units <= 0:
            why = "the available balance is at or below zero: pay the debt or add credits before starting operations"
        else:
            why = f"the hold does not fit within the available balance plus the grace limit ({fmt4(grace_units)})"
        super().__init__(f"insufficient credits: available {fmt4(available_units)}, needed {fmt4(needed_units)}; {why}")


@dataclass(frozen=True)
class Hold:
    id: int
    account_id: int
    operation: str
    model: str | None
    estimated_quantity: str
    amount_units: int
    status: str
    idempotency_key: str
    captured_entry_id: int | None
    actor_user_id: int | None
    expires_at: datetime
    created_at: datetime
    settled_at: datetime | None
    captured_quantity: str | None = None


@dataclass(frozen=True)
class Placed:
    hold: Hold
    organization_id: int
    available_units: int  # after this hold (on a replay: now)
    replayed: bool = False


@dataclass(frozen=True)
class Settled:
    """A capture or release. `released_units`: what this call gave back to the available balance (0
    on a replay, and for a hold that had expired)."""

    hold: Hold
    organization_id: int
    entry: PostedEntry | None  # a capture's usage entry (None: its cost did not reach a whole unit yet)
    charge: Charge | None
    released_units: int
    replayed: bool = False


def _hold_from(row: Any) -> Hold:
    m = row._mapping
    return Hold(
        id=m["id"],
        account_id=m["account_id"],
        operation=m["operation"],
        model=m["model"],
        estimated_quantity=m["estimated_quantity"],
        amount_units=m["amount"],
        status=m["status"],
        idempotency_key=m["idempotency_key"],
        captured_entry_id=m["captured_entry_id"],
        actor_user_id=m["actor_user_id"],
        expires_at=as_utc(m["expires_at"]),
        created_at=as_utc(m["created_at"]),
        settled_at=as_utc(m["settled_at"]) if m["settled_at"] is not None else None,
        captured_quantity=m["captured_quantity"],
    )


def ceil_units(cost: Decimal) -> int:
    """A reservation covers its estimate: whole units, rounded up."""
    return int((cost * UNITS_PER_CREDIT).to_integral_value(rounding=ROUND_CEILING))


# -- reads ---------------------------------------------------------------------------------------


def reserved_units(conn: Connection, account_id: int, now: datetime | None = None) -> int:
    """What the account's active holds reserve now (holds past their expiry no longer count, even
    before the sweep releases them)."""
    total = conn.execute(
        sa.select(sa.func.coalesce(sa.func.sum(_hold.c.amount), 0)).where(
            _hold.c.account_id == account_id, _hold.c.status == ACTIVE, _hold.c.expires_at > at_or_now(now)
        )
    ).scalar_one()
    return int(total)


def active_holds(conn: Connection, account_id: int, now: datetime | None = None) -> list[Hold]:
    rows = conn.execute(
        sa.select(_hold)
        .where(_hold.c.account_id == account_id, _hold.c.status == ACTIVE, _hold.c.expires_at > at_or_now(now))
        .order_by(_hold.c.id)
    ).all()
    return [_hold_from(r) for r in rows]


def hold_organization(conn: Connection, hold_id: int) -> int | None:
    """The organization whose account holds this hold (None: no such hold); for the operator CLI,
    which names a hold by its id alone."""
    return conn.execute(
        sa.text(
            "SELECT a.organization_id FROM credit_hold h JOIN credit_account a ON a.id = h.account_id WHERE h.id = :h"
        ),
        {"h": hold_id},
    ).scalar()


def held_units(conn: Connection, account_id: int) -> int:
    """The account row's `held`: what active holds reserve, expired ones not yet swept included."""
    return int(conn.execute(sa.text("SELECT held FROM credit_account WHERE id = :a"), {"a": account_id}).scalar_one())


# -- place ---------------------------------------------------------------------------------------

_RESERVE = sa.text(
    "UPDATE credit_account SET held = held + :amount "
    "WHERE id = :account_id AND balance - held > 0 AND balance - held - :amount >= :floor "
    "RETURNING balance - held"
)
_AVAILABLE = sa.text("SELECT balance - held FROM credit_account WHERE id = :account_id")
_GIVE_BACK = sa.text("UPDATE credit_account SET held = held - :amount WHERE id = :account_id")


def place_hold(
    ledger: Ledger,
    organization_id: int,
    operation: str,
    estimated_quantity: Decimal,
    idempotency_key: str,
    markup_percent: Decimal,
    model: str | None = None,
    actor_user_id: int | None = None,
    *,
    ttl_seconds: int = DEFAULT_TTL_SECONDS,
    now: datetime | None = None,
    api_key_id: int | None = None,
) -> Placed:
    """Reserves the estimated cost, or raises HoldRefused (nothing written). MeteringError for an
    unknown operation or model or a bad quantity; HoldConflict for a key used for another hold;
    BudgetExceeded when the month's spend plus the estimate would pass a hard-stopped spend budget of
    the organization, `api_key_id` or `actor_user_id` (other active holds are not counted against
    budgets: a budget counts what was charged)."""
    charge = price(operation, estimated_quantity, markup_percent=markup_percent, model=model)
    if not 0 < len(idempotency_key) <= 200:
        raise HoldError("idempotency key must be 1 to 200 characters")
    amount = ceil_units(charge.cost)
    when = at_or_now(now)
    quantity = _qty(estimated_quantity)
    for attempt in (1, 2):
        try:
            with ledger.transaction() as conn:
                account_id = get_account(conn, organization_id=organization_id).id
                earlier = _by_key(conn, account_id, idempotency_key)
                if earlier is not None:
                    if (earlier.operation, earlier.model, earlier.estimated_quantity) != (operation, model, quantity):
                        raise HoldConflict(f"idempotency key {idempotency_key!r} was already used for another hold")
                    available = conn.execute(_AVAILABLE, {"account_id": account_id}).scalar_one()
                    return Placed(earlier, organization_id, int(available), replayed=True)
                _expire_account(conn, account_id, when)  # committed even when the hold is refused
                refused: LedgerError | None = _over_budget(conn, account_id, amount, when, api_key_id, actor_user_id)
                if refused is None:
                    available = conn.execute(
                        _RESERVE, {"amount": amount, "account_id": account_id, "floor": ledger.default_floor}
                    ).scalar()
                    if available is None:
                        refused = HoldRefused(
                            int(conn.execute(_AVAILABLE, {"account_id": account_id}).scalar_one()),
                            amount,
                            -ledger.default_floor,
                        )
                    else:
                        row = conn.execute(
                            sa.insert(_hold)
                            .values(
                                account_id=account_id,
                                operation=operation,
                                model=model,
                                estimated_quantity=quantity,
                                amount=amount,
                                status=ACTIVE,
                                idempotency_key=idempotency_key,
                                actor_user_id=actor_user_id,
                                expires_at=when + timedelta(seconds=ttl_seconds),
                                created_at=when,
                            )
                            .returning(*_hold.c)
                        ).one()
                        return Placed(_hold_from(row), organization_id, int(available))
            raise refused
        except IntegrityError:
            # a concurrent request committed this key first; ours rolled back whole: now a replay
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _over_budget(
    conn: Connection, account_id: int, amount: int, when: datetime, api_key_id: int | None, user_id: int | None
) -> BudgetExceeded | None:
    """The refusal of a hard-stopped spend budget the hold's estimate would pass (None: it fits)."""
    gate = open_gate(conn, account_id)
    try:
        if gate is not None:
            gate.check(amount, at=when, api_key_id=api_key_id, user_id=user_id)
    except BudgetExceeded as exc:
        return exc
    return None


def _by_key(conn: Connection, account_id: int, key: str) -> Hold | None:
    row = conn.execute(sa.select(_hold).where(_hold.c.account_id == account_id, _hold.c.idempotency_key == key)).first()
    return _hold_from(row) if row is not None else None


# -- capture and release -------------------------------------------------------------------------


def _lock_hold(conn: Connection, account_id: int, hold_id: int) -> Hold:
    row = conn.execute(
        sa.select(_hold).where(_hold.c.id == hold_id, _hold.c.account_id == account_id).with_for_update()
    ).first()
    if row is None:
        raise HoldNotFound(f"no hold {hold_id} in this organization")
    return _hold_from(row)


def _settle(
    conn: Connection,
    hold: Hold,
    status: str,
    when: datetime,
    entry_id: int | None = None,
    quantity: str | None = None,
) -> Hold:
    row = conn.execute(
        sa.update(_hold)
        .where(_hold.c.id == hold.id)
        .values(status=status, settled_at=when, captured_entry_id=entry_id, captured_quantity=quantity)
        .returning(*_hold.c)
    ).one()
    if hold.status == ACTIVE:  # an expired hold gave its amount back when it expired
        conn.execute(_GIVE_BACK, {"amount": hold.amount_units, "account_id": hold.account_id})
    return _hold_from(row)


def capture(
    ledger: Ledger,
    organization_id: int,
    hold_id: int,
    quantity: Decimal,
    *,
    markup_percent: Decimal,
    actor_user_id: int | None = None,
    actor_ip: str | None = None,
    now: datetime | None = None,
    api_key_id: int | None = None,
) -> Settled:
    """Charges the completed operation's actual `quantity` (priced as the hold's operation and model)
    and releases the whole hold, in one transaction. Never refused for the balance: past the hold and
    past the grace limit the balance goes into debt. Nor by a spend budget: the hold was admitted
    under it and the work is done; the charge counts for the budgets (and their alerts)."""
    when = at_or_now(now)
    with ledger.transaction() as conn:
        account_id = get_account(conn, organization_id=organization_id).id
        hold = _lock_hold(conn, account_id, hold_id)
        charge = price(hold.operation, quantity, markup_percent=markup_percent, model=hold.model)
        metadata = {**usage_metadata(hold.operation, quantity, hold.model), "hold_id": str(hold.id)}
        if hold.status == CAPTURED:
            entry = find_entry(conn, account_id, _capture_key(hold))
            said = hold.captured_quantity or (entry.metadata.get("quantity") if entry is not None else None)
            if said is not None and said != metadata["quantity"]:
                raise HoldConflict(f"hold {hold.id} was already captured with quantity {said}")
            return Settled(hold, organization_id, entry, charge, 0, replayed=True)
        if hold.status == RELEASED:
            raise HoldConflict(f"hold {hold.id} was released (the operation failed): it cannot be captured")
        carried = lock_remainder(conn, account_id, hold.operation)
        entry, _units = post_charge(
            ledger,
            conn,
            account_id,
            hold.operation,
            carried,
            charge,
            metadata,
            ledger_key=_capture_key(hold),
            actor_user_id=actor_user_id,
            actor_ip=actor_ip,
            api_key_id=api_key_id,
            enforce_budgets=False,
        )
        released = hold.amount_units if hold.status == ACTIVE else 0
        settled = _settle(conn, hold, CAPTURED, when, entry.id if entry else None, metadata["quantity"])
    return Settled(settled, organization_id, entry, charge, released)


def _capture_key(hold: Hold) -> str:
    return f"hold:{hold.id}"


def release(ledger: Ledger, organization_id: int, hold_id: int, *, now: datetime | None = None) -> Settled:
    """Gives the hold back (the operation failed or never started): nothing is charged."""
    when = at_or_now(now)
    with ledger.transaction() as conn:
        account_id = get_account(conn, organization_id=organization_id).id
        hold = _lock_hold(conn, account_id, hold_id)
        if hold.status == CAPTURED:
            raise HoldConflict(f"hold {hold.id} was captured (the operation was charged): it cannot be released")
        if hold.status in (RELEASED, EXPIRED):
            return Settled(hold, organization_id, None, None, 0, replayed=True)
        settled = _settle(conn, hold, RELEASED, when)
    return Settled(settled, organization_id, None, None, hold.amount_units)


# -- expiry --------------------------------------------------------------------------------------

_EXPIRE = (
    sa.update(_hold)
    .where(
        _hold.c.account_id == sa.bindparam("acct"),
        _hold.c.status == ACTIVE,
        _hold.c.expires_at <= sa.bindparam("now", type_=_TS),
    )
    .values(status=EXPIRED, settled_at=sa.bindparam("now", type_=_TS))
    .returning(_hold.c.amount)
)


def _expire_account(conn: Connection, account_id: int, now: datetime) -> int:
    """Expires the account's active holds past their time, inside the caller's transaction; returns
    how many."""
    amounts = conn.execute(_EXPIRE, {"acct": account_id, "now": now}).scalars().all()
    if amounts:
        conn.execute(_GIVE_BACK, {"amount": sum(amounts), "account_id": account_id})
    return len(amounts)


def expire_holds(ledger: Ledger, now: datetime | None = None) -> dict[int, int]:
    """Releases every active hold past its expiry, one transaction per account; returns how many
    expired per organization (to announce). Idempotent: a second run finds nothing."""
    when = at_or_now(now)
    with ledger.engine.connect() as conn:
        accounts = conn.execute(
            sa.text(
                "SELECT DISTINCT h.account_id, a.organization_id FROM credit_hold h "
                "JOIN credit_account a ON a.id = h.account_id WHERE h.status = :s AND h.expires_at <= :now"
            ).bindparams(sa.bindparam("now", type_=_TS)),
            {"s": ACTIVE, "now": when},
        ).all()
    expired: dict[int, int] = {}
    for account_id, organization_id in accounts:
        with ledger.transaction() as conn:
            count = _expire_account(conn, account_id, when)
        if count:
            expired[organization_id] = count
    return expired


# -- announcing ----------------------------------------------------------------------------------


def hold_event(organization_id: int, hold: Hold) -> dict[str, Any]:
    """The event bus message for a hold that changed (the page reloads its figures, no toast)."""
    return {"organization_id": organization_id, "type": "hold", "hold_id": hold.id, "status": hold.status}


async def hold_expiry_loop(every_seconds: int = 60) -> None:
    """Lifespan task: every minute, once per deployment (the job lock), expired holds are released
    and the organizations' open tabs told."""
    from .config import get_settings
    from .db import get_engine
    from .jobs import run_once
    from .services import get_event_bus, get_ledger

    def sweep(engine: Engine) -> dict[int, int]:
        with run_once(engine, "hold-expiry", get_settings().redis_url, ttl_seconds=every_seconds) as mine:
            return expire_holds(get_ledger(engine)) if mine else {}

    announce: Callable[[dict[str, Any]], None] = get_event_bus().publish
    while True:
        try:
            expired = await asyncio.to_thread(sweep, get_engine())
            at = datetime.now(UTC).isoformat()  # each round's event differs from the last (the tabs' shared reads)
            for organization_id in expired:
                announce({"organization_id": organization_id, "type": "hold", "status": EXPIRED, "at": at})
        except Exception:  # the next round catches up
            log.exception("hold expiry failed")
        await asyncio.sleep(every_seconds)
