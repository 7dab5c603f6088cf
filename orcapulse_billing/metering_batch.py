"""Bulk usage ingestion: up to 1,000 usage reports of one organization in one ledger transaction.

`record_usage_batch` gives every report the result `metering.record_usage` would have given it, called
once per report in order: the same carry per account and operation (`usage_remainder`), the same ledger
keys (`usage:<key>`), the same `usage_report` fingerprints for reports that charged nothing, the same
`billing_session` rows. Each report has its own result: charged, replayed (its key was seen before,
also earlier in the same batch: nothing changed), not charged (a failed operation, or a cost still below
one ledger unit, carried in the remainder), or refused with its own error (bad input, an idempotency
conflict, a session already billed, a posting the ledger refused), without affecting the others.

The database work is done in bulk, a fixed number of statements per batch whatever its size: the
account; the remainder rows of the batch's operations, created if missing and locked in one statement
each (in the order of their names, see `usage_remainders.lock_remainders`); the earlier entries, uncharged
reports and billed sessions of all its keys and session ids, one query each; every posting in one
`Ledger.post_batch_in`; then the remainders, uncharged reports and sessions, one statement each. Prices
and carries are computed in Python in between.

When the ledger answers a posting otherwise than planned (it refused it, or another transaction posted
the same key first, under another operation's lock), the carries planned after it would be wrong: the
transaction is rolled back and the batch planned again, with that posting's error as its result (a key
posted meanwhile is then found as a replay). So is a batch that met a unique index (the same session or
key reported concurrently): the next attempt reads what the other transaction committed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from .billing_profile import table_of
from .budgets import is_budgeted, open_gate
from .db import insert_many, one_of
from .ledger import IdempotencyConflict, Ledger, LedgerError, PostedEntry, Posting, find_entries, get_account
from .metering import (
    DEBT_FLOOR,
    Charge,
    MeteringError,
    SessionInfo,
    UsageResult,
    _check_same_report,
    _check_same_uncharged,
    _fingerprint,
    already_billed,
    priced_report,
    session_row,
    with_api_key,
)
from .models import BillingSession, EntryType
from .money import from_units
from .usage_remainders import (
    carry,
    drop_remainders,
    lock_remainders,
    lock_usage_keys,
    record_uncharged_many,
    store_remainders,
    uncharged_reports,
)
from .value_type import value_type

MAX_EVENTS = 1000
ATTEMPTS = 4  # each attempt after the first knows more (a refused posting, a key or session committed meanwhile)
Status = Literal["charged", "not_charged", "replayed", "refused"]
_sessions = table_of(BillingSession)


@value_type
class UsageEvent:
    """One usage report, as `record_usage` takes it."""

    operation: str
    quantity: Decimal
    status: str
    idempotency_key: str
    model: str | None = None
    session: SessionInfo | None = None
    created_at: datetime | None = None  # backdates the entry (imports); live reports leave it unset


@value_type
class BatchResult:
    """One report's result. `charge` is its price (None: refused before it could be priced); `entry` the
    entry it posted (charged) or its key's first entry (replayed, when that posted one); `error` why it
    was refused (a MeteringError, or the LedgerError its posting or key met)."""

    status: Status
    charge: Charge | None
    entry: PostedEntry | None = None
    session_id: str | None = None
    error: MeteringError | LedgerError | None = None

    def usage(self) -> UsageResult:
        """What `record_usage` returns for this report (which raises the error of a refused one)."""
        if self.error is not None or self.charge is None:
            raise self.error or MeteringError("refused")
        charged = self.status == "charged" or (self.status == "replayed" and self.entry is not None)
        return UsageResult(charged, self.entry, self.charge, self.session_id, replayed=self.status == "replayed")


@dataclass
class _Report:
    """A completed report that was priced, waiting for the database."""

    index: int
    event: UsageEvent
    charge: Charge
    metadata: dict[str, str]
    said: str | None = None  # its fingerprint, computed when needed

    @property
    def fingerprint(self) -> str:
        if self.said is None:
            self.said = _fingerprint(self.charge, self.metadata)
        return self.said

    @property
    def session_id(self) -> str | None:
        return self.event.session.id if self.event.session else None


@dataclass
class _Planned:
    report: _Report
    units: int  # what it charges (0: nothing, its cost waits in the remainder)
    posting: int | None  # its place in the postings


class _Replan(Exception):
    """The ledger answered a posting otherwise than planned: roll back and plan again."""


def record_usage_batch(
    ledger: Ledger,
    organization_id: int,
    events: Sequence[UsageEvent],
    *,
    markup_percent: Decimal,
    actor_user_id: int | None = None,
    actor_ip: str | None = None,
    api_key_id: int | None = None,
) -> list[BatchResult]:
    """Records up to 1,000 usage reports of one organization in one ledger transaction, each as
    `record_usage` would in order, each with its own result (in the order of `events`). Raises only for
    the batch as a whole: MeteringError for more than 1,000 events, AccountNotFound for the organization.
    Spend budgets are checked per report, in order: one that would pass a hard-stopped budget is refused
    (`budget_exceeded`) and the reports after it are judged on the spend without it."""
    if len(events) > MAX_EVENTS:
        raise MeteringError(f"a batch has at most {MAX_EVENTS} usage events, not {len(events)}")
    results: list[BatchResult | None] = [None] * len(events)
    reports: list[_Report] = []
    for i, event in enumerate(events):
        try:
            charge, metadata = priced_report(
                event.operation,
                event.quantity,
                event.status,
                markup_percent=markup_percent,
                model=event.model,
                session=event.session,
            )
        except MeteringError as exc:
            results[i] = BatchResult("refused", None, error=exc)
            continue
        if event.status == "failed":
            results[i] = BatchResult("not_charged", charge)  # never charge a failed operation
        else:
            reports.append(_Report(i, event, charge, metadata))
    barred: dict[int, LedgerError] = {}  # reports whose posting the ledger refused in an earlier attempt
    for attempt in range(1, ATTEMPTS + 1):
        try:
            with ledger.transaction() as conn:
                done = _record(ledger, conn, organization_id, reports, barred, actor_user_id, actor_ip, api_key_id)
        except (_Replan, IntegrityError):
            if attempt == ATTEMPTS:
                raise
            continue
        for i, result in done.items():
            results[i] = result
        return [r for r in results if r is not None]
    raise AssertionError("unreachable")


def _record(
    ledger: Ledger,
    conn: Connection,
    organization_id: int,
    reports: list[_Report],
    barred: dict[int, LedgerError],
    actor_user_id: int | None,
    actor_ip: str | None,
    api_key_id: int | None,
) -> dict[int, BatchResult]:
    """One attempt, inside the ledger transaction: read and lock, plan, post, store."""
    account_id = get_account(conn, organization_id=organization_id).id
    if not reports:
        return {}
    keys = {r.event.idempotency_key for r in reports}
    lock_usage_keys(conn, account_id, keys)  # before the remainders, as a single report does
    carried, created = lock_remainders(conn, account_id, {r.event.operation for r in reports})
    budgeted = is_budgeted(conn, account_id)
    gate = open_gate(conn, account_id) if budgeted else None  # with budgets: the account row locked now
    now = datetime.now(UTC)
    posted = find_entries(conn, account_id, [f"usage:{k}" for k in keys])
    uncharged = uncharged_reports(conn, account_id, keys)
    billed = _billed_sessions(conn, account_id, {r.session_id for r in reports if r.session_id})

    done: dict[int, BatchResult] = {}
    first: dict[str, _Planned] = {}  # key -> the report of this batch that used it first
    repeats: list[tuple[_Report, _Planned]] = []  # later reports of a key that posts in this batch
    plan: list[_Planned] = []
    postings: list[Posting] = []
    remainder = dict(carried)
    for r in reports:
        key, sid = r.event.idempotency_key, r.session_id
        try:
            earlier = posted.get(f"usage:{key}")
            if earlier is not None:
                _check_same_report(earlier, r.charge, r.metadata, key)
                done[r.index] = BatchResult("replayed", r.charge, earlier, sid)
            elif key in uncharged:
                _check_same_uncharged(uncharged[key], r.fingerprint, key)
                done[r.index] = BatchResult("replayed", r.charge, None, sid)
            elif key in first:
                if first[key].units > 0:
                    repeats.append((r, first[key]))  # checked against its entry once it is posted
                else:
                    _check_same_uncharged(first[key].report.fingerprint, r.fingerprint, key)
                    done[r.index] = BatchResult("replayed", r.charge, None, sid)
            elif sid is not None and sid in billed:
                raise already_billed(sid)
            elif r.index in barred:
                raise barred[r.index]
            else:
                units, rest = carry(remainder[r.event.operation], r.charge.cost)
                at = r.event.created_at or now
                if units > 0 and gate is not None:  # BudgetExceeded refuses this report alone
                    gate.admit(units, at=at, api_key_id=api_key_id, user_id=actor_user_id)
                remainder[r.event.operation] = rest
                planned = _Planned(r, units, len(postings) if units > 0 else None)
                if units > 0:
                    postings.append(_posting(account_id, r, units, actor_user_id, actor_ip, api_key_id, at))
                plan.append(planned)
                first[key] = planned
                if sid is not None:
                    billed.add(sid)
        except (MeteringError, LedgerError) as exc:
            done[r.index] = BatchResult("refused", r.charge, None, sid, error=exc)

    outcomes = ledger.post_batch_in(conn, postings) if postings else []
    unplanned = False
    for p in plan:
        outcome = outcomes[p.posting] if p.posting is not None else None
        if isinstance(outcome, LedgerError):
            barred[p.report.index] = outcome
            unplanned = True
        elif outcome is not None and outcome.replayed:
            unplanned = True  # its key was posted meanwhile: the next attempt finds it
    if unplanned:
        raise _Replan
    if gate is not None:
        gate.flush()
    elif postings and is_budgeted(conn, account_id):  # set meanwhile (read under the row lock now)
        raise _Replan

    entries: dict[int, PostedEntry] = {}
    for p in plan:
        entry = outcomes[p.posting] if p.posting is not None else None
        assert entry is None or isinstance(entry, PostedEntry)
        if entry is not None:
            entries[p.report.index] = entry
        done[p.report.index] = BatchResult(
            "charged" if entry is not None else "not_charged", p.report.charge, entry, p.report.session_id
        )
    for r, p in repeats:
        entry = replace(entries[p.report.index], replayed=True)
        try:
            _check_same_report(entry, r.charge, r.metadata, r.event.idempotency_key)
            done[r.index] = BatchResult("replayed", r.charge, entry, r.session_id)
        except IdempotencyConflict as exc:
            done[r.index] = BatchResult("refused", r.charge, None, r.session_id, error=exc)

    store_remainders(conn, account_id, {p.report.event.operation: remainder[p.report.event.operation] for p in plan})
    record_uncharged_many(
        conn,
        account_id,
        [
            (p.report.event.idempotency_key, p.report.event.created_at, p.report.fingerprint)
            for p in plan
            if not p.units
        ],
    )
    _insert_sessions(conn, account_id, plan, entries)
    # as record_usage, whose refusal rolls back the remainder row it created: no row for an operation
    # whose reports were all refused
    kept = {r.event.operation for r in reports if done[r.index].status != "refused"}
    drop_remainders(conn, account_id, created - kept)
    return done


def _posting(
    account_id: int,
    r: _Report,
    units: int,
    actor_user_id: int | None,
    actor_ip: str | None,
    api_key_id: int | None,
    at: datetime,
) -> Posting:
    """The same posting as `metering.post_charge` makes."""
    return Posting(
        account_id,
        EntryType.usage,
        -from_units(units),
        r.charge.description,
        category=r.charge.category,
        metadata=with_api_key(r.metadata, api_key_id),
        actor_user_id=actor_user_id,
        actor_ip=actor_ip,
        idempotency_key=f"usage:{r.event.idempotency_key}",
        floor=DEBT_FLOOR,
        created_at=at,
    )


def _insert_sessions(conn: Connection, account_id: int, plan: list[_Planned], entries: dict[int, PostedEntry]) -> None:
    now = datetime.now(UTC)
    rows = []
    for p in plan:
        event = p.report.event
        if event.session is None:
            continue
        entry = entries.get(p.report.index)
        when = entry.created_at if entry else event.created_at or now
        rows.append(
            session_row(
                account_id, entry, p.units, when, event.operation, event.quantity, p.report.charge, event.session
            )
        )
    insert_many(conn, _sessions, rows)


def _billed_sessions(conn: Connection, account_id: int, session_ids: set[str]) -> set[str]:
    if not session_ids:
        return set()
    return set(
        conn.execute(
            sa.select(_sessions.c.external_id).where(
                _sessions.c.account_id == account_id, one_of(conn, _sessions.c.external_id, session_ids)
            )
        ).scalars()
    )
