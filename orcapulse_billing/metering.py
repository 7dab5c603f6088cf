"""Metering: may an operation start, and what did a finished one cost.

The spec's `checkCredits` middleware as two calls. `check` refuses new operations when the available
balance (the balance minus active holds, holds.py) is at or below zero. `record_usage` posts the
deduction after the operation has finished: a failed operation is never charged, and a completed one
is always charged, with no floor: past minus the grace limit the balance goes below it as debt, which
blocks new operations and holds until it is paid. Charges are exact over time: what
does not add up to a whole ledger unit yet is carried per account and operation
(`usage_remainders`), so usage in small pieces is never free and never charged more than it cost.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from .budgets import BudgetExceeded, count_posted, open_gate
from .history import billing_session
from .ledger import NO_FLOOR, IdempotencyConflict, Ledger, PostedEntry, Posting, find_entry, get_account
from .models import BillingSession, EntryType
from .money import from_units
from .pricing import RATE_CARD, SESSION_COMPONENTS, openai_rate
from .usage_remainders import (
    SESSION_PARTS,
    apportion,
    carry,
    lock_remainder,
    lock_usage_keys,
    record_uncharged,
    store_remainder,
    uncharged_report,
)
from .value_type import value_type

SESSION_OPERATIONS = {"voice_pipeline": "pipeline", "voice_realtime": "realtime", "chat": "chat"}
OPENAI_OPERATIONS = {"openai_input_tokens": "input", "openai_output_tokens": "output"}
OPERATIONS = tuple(RATE_CARD) + tuple(SESSION_OPERATIONS) + tuple(OPENAI_OPERATIONS)
STATUSES = ("completed", "failed")
# Completed work is always recorded: usage posts with this floor (no floor), so a balance past minus
# the grace limit goes below it as debt instead of the platform giving the work away.
DEBT_FLOOR = NO_FLOOR


class MeteringError(ValueError):
    """Bad usage input (unknown operation or model, bad quantity or session)."""


@value_type
class SessionInfo:
    id: str
    agent_id: str | None = None
    agent_name: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    transcript: str | None = None
    recording_url: str | None = None
    analysis: dict[str, Any] | None = None  # JSON object


@value_type
class Charge:
    cost: Decimal  # full precision; the ledger rounds half-up to 4 places
    category: str
    description: str
    breakdown: dict[str, Decimal] = field(default_factory=dict)


def _qty(quantity: Decimal) -> str:
    return f"{quantity.normalize():f}"


def price(
    operation: str, quantity: Decimal, *, markup_percent: Decimal, model: str | None = None, agent: str | None = None
) -> Charge:
    if quantity <= 0:
        raise MeteringError("quantity must be positive")
    if operation in SESSION_OPERATIONS:
        architecture = SESSION_OPERATIONS[operation]
        breakdown = SESSION_COMPONENTS[architecture].breakdown(quantity)
        cost = sum(breakdown.values(), Decimal(0))
        who = agent or "unknown agent"
        if architecture == "chat":
            if quantity != quantity.to_integral_value():
                raise MeteringError("a chat is counted in whole messages")
            return Charge(cost, "chat", f"Chat session - {who} - {_qty(quantity)} messages", breakdown)
        return Charge(cost, "ai_call", f"Voice call session - {who} - {_qty(quantity)} min", breakdown)
    if operation in OPENAI_OPERATIONS:
        per_million = openai_rate(model, OPENAI_OPERATIONS[operation])
        if per_million is None:
            raise MeteringError(f"unknown OpenAI model {model!r}")
        provider_cost = per_million * quantity / Decimal(1_000_000)
        cost = provider_cost * (1 + markup_percent / 100)
        kind = OPENAI_OPERATIONS[operation]
        return Charge(
            cost,
            "llm_tokens",
            f"OpenAI {model} - {_qty(quantity)} {kind} tokens",
            {"provider_cost": provider_cost, "markup": cost - provider_cost},
        )
    rate = RATE_CARD.get(operation)
    if rate is None:
        raise MeteringError(f"unknown operation {operation!r}; one of: {', '.join(OPERATIONS)}")
    unit = rate.unit if quantity == 1 else rate.unit + ("" if rate.unit.endswith("characters") else "s")
    return Charge(rate.cost(quantity), rate.category, f"{rate.label} - {_qty(quantity)} {unit}")


@dataclass(frozen=True)
class CheckResult:
    allowed: bool  # the available balance is above zero and no hard-stopped budget would be passed
    balance_units: int
    estimated_cost: Decimal
    available_units: int  # the balance minus active holds
    over_budget: BudgetExceeded | None = None  # the hard-stopped budget the estimate would pass


def check(
    engine: Engine,
    organization_id: int,
    operation: str,
    estimated_quantity: Decimal,
    *,
    markup_percent: Decimal,
    model: str | None = None,
    api_key_id: int | None = None,
    user_id: int | None = None,
) -> CheckResult:
    """May a new operation start? Not when the available balance is at or below zero, nor when its
    estimate would take a hard-stopped spend budget of the organization, of `api_key_id` or of `user_id`
    past its amount (the usage report would then be refused: better to know before the work is done).
    A read: nothing is locked or written, so a concurrent posting may still change the answer."""
    from .holds import ceil_units, reserved_units  # holds prices with this module

    charge = price(operation, estimated_quantity, markup_percent=markup_percent, model=model)
    over_budget = None
    with engine.connect() as conn:
        acct = get_account(conn, organization_id=organization_id)
        available = acct.balance_units - reserved_units(conn, acct.id)
        gate = open_gate(conn, acct.id, lock=False)
        if gate is not None:
            try:
                gate.check(ceil_units(charge.cost), at=datetime.now(UTC), api_key_id=api_key_id, user_id=user_id)
            except BudgetExceeded as exc:
                over_budget = exc
    return CheckResult(available > 0 and over_budget is None, acct.balance_units, charge.cost, available, over_budget)


@dataclass(frozen=True)
class UsageResult:
    """`charged`: this report's key has a ledger entry (`entry`; `entry.replayed` on a replay). A report
    whose cost did not yet add up to a whole ledger unit is not charged: its cost waits in the remainder.
    `charge` is the report's own price (its `cost` exact); what was posted is `entry.amount`."""

    charged: bool
    entry: PostedEntry | None
    charge: Charge
    session_id: str | None
    replayed: bool = False  # the idempotency key was seen before: nothing was changed


def record_usage(
    ledger: Ledger,
    organization_id: int,
    *,
    operation: str,
    quantity: Decimal,
    status: str,
    idempotency_key: str,
    markup_percent: Decimal,
    model: str | None = None,
    session: SessionInfo | None = None,
    actor_user_id: int | None = None,
    actor_ip: str | None = None,
    created_at: datetime | None = None,
    api_key_id: int | None = None,
) -> UsageResult:
    """Charge a finished operation exactly: never free, never more than its exact cost.

    Per account and operation the part of a credit below one ledger unit (a ten-thousandth) is carried
    in `usage_remainder`. For each report: total = carried remainder + exact cost; the report is charged
    floor(total) units and carries the rest (0 <= rest < 1 unit). So what an account+operation has been
    charged is always floor(its cumulative exact cost) in units: within one unit of the exact sum, never
    above it. A report whose floor is 0 posts no entry; its key goes to `usage_report` so that a replay
    does not add its cost twice. One report's charge may differ from its own cost rounded half-up: it can
    be one unit more (the carried remainder completed a unit) or one unit less (its fraction is carried).

    Everything happens in one ledger transaction, under the lock of the remainder row (PostgreSQL:
    `SELECT ... FOR UPDATE`; SQLite: `BEGIN IMMEDIATE`), so concurrent reports of one account+operation
    queue and none reads a stale remainder. A completed operation is never refused for the balance: it
    posts with no floor (`DEBT_FLOOR`), past minus the grace limit as debt. A replayed key returns the
    first result and changes nothing.

    A session's row stores its charged total split into parts (base, llm, stt, tts) that add up to it.
    `created_at` backdates the entry (imports, the demo seed); live reports leave it unset.
    Spend budgets (budgets.py) count the charge for the organization, `api_key_id` and `actor_user_id`;
    a hard-stopped budget it would pass raises BudgetExceeded and nothing is written.
    """
    charge, metadata = priced_report(
        operation, quantity, status, markup_percent=markup_percent, model=model, session=session
    )
    if status == "failed":
        return UsageResult(False, None, charge, None)  # never charge a failed operation
    session_id = session.id if session else None
    with ledger.transaction() as conn:
        account_id = get_account(conn, organization_id=organization_id).id
        lock_usage_keys(conn, account_id, [idempotency_key])  # first: reports of this key queue here
        carried = lock_remainder(conn, account_id, operation)  # then reports of this operation
        earlier = find_entry(conn, account_id, f"usage:{idempotency_key}")
        if earlier is not None:
            _check_same_report(earlier, charge, metadata, idempotency_key)
            return UsageResult(True, earlier, charge, session_id, replayed=True)
        said = _fingerprint(charge, metadata)
        seen, earlier_said = uncharged_report(conn, account_id, idempotency_key)
        if seen:
            _check_same_uncharged(earlier_said, said, idempotency_key)
            return UsageResult(False, None, charge, session_id, replayed=True)
        if session is not None and billing_session(conn, account_id, session.id) is not None:
            raise already_billed(session.id)
        entry, units = post_charge(
            ledger,
            conn,
            account_id,
            operation,
            carried,
            charge,
            metadata,
            ledger_key=f"usage:{idempotency_key}",
            actor_user_id=actor_user_id,
            actor_ip=actor_ip,
            created_at=created_at,
            api_key_id=api_key_id,
        )
        if entry is not None and entry.replayed:  # the same key committed meanwhile under another operation's lock
            return UsageResult(True, entry, charge, session_id, replayed=True)
        if entry is None:
            record_uncharged(conn, account_id, idempotency_key, created_at, said)
        if session is not None:
            when = entry.created_at if entry else created_at or datetime.now(UTC)
            row = session_row(account_id, entry, units, when, operation, quantity, charge, session)
            conn.execute(sa.insert(BillingSession).values(row))
    return UsageResult(entry is not None, entry, charge, session_id)


def priced_report(
    operation: str,
    quantity: Decimal,
    status: str,
    *,
    markup_percent: Decimal,
    model: str | None = None,
    session: SessionInfo | None = None,
) -> tuple[Charge, dict[str, str]]:
    """A usage report's input checked and priced: (its charge, what its entry says). MeteringError for
    bad input (status, a session ending before it starts, operation, model or quantity)."""
    if status not in STATUSES:
        raise MeteringError(f"status must be one of {', '.join(STATUSES)}")
    if session is not None and session.ended_at and session.started_at and session.ended_at < session.started_at:
        raise MeteringError("a session cannot end before it starts")
    charge = price(
        operation, quantity, markup_percent=markup_percent, model=model, agent=session.agent_id if session else None
    )
    metadata = usage_metadata(operation, quantity, model)
    if session is not None:
        metadata["usage_session_id"] = session.id
    return charge, metadata


def already_billed(session_id: str) -> MeteringError:
    return MeteringError(f"session {session_id!r} was already billed")


def usage_metadata(operation: str, quantity: Decimal, model: str | None) -> dict[str, str]:
    """What a usage entry says about the operation (a usage report's and a captured hold's alike)."""
    metadata = {"provider": _provider(operation), "feature": operation, "quantity": _qty(quantity)}
    if model:
        metadata["model"] = model
    return metadata


def post_charge(
    ledger: Ledger,
    conn: Connection,
    account_id: int,
    operation: str,
    carried: Decimal,
    charge: Charge,
    metadata: dict[str, str],
    *,
    ledger_key: str,
    actor_user_id: int | None = None,
    actor_ip: str | None = None,
    created_at: datetime | None = None,
    api_key_id: int | None = None,
    enforce_budgets: bool = True,
) -> tuple[PostedEntry | None, int]:
    """Inside the caller's ledger transaction, after `lock_remainder` gave `carried`: posts
    floor(carried + cost) units of completed usage with no floor (it may leave debt) and stores the
    rest. Returns (the entry or None when nothing reached a whole unit, the units charged). A replayed
    `ledger_key` changes nothing (the remainder is left as it is). The charge counts for the spend
    budgets; with `enforce_budgets`, one it would take past a hard-stopped budget raises BudgetExceeded."""
    units, rest = carry(carried, charge.cost)
    entry = None
    if units > 0:
        when = created_at or datetime.now(UTC)
        entry = ledger.post_in(
            conn,
            Posting(
                account_id,
                EntryType.usage,
                -from_units(units),
                charge.description,
                category=charge.category,
                metadata=with_api_key(metadata, api_key_id),
                actor_user_id=actor_user_id,
                actor_ip=actor_ip,
                idempotency_key=ledger_key,
                floor=DEBT_FLOOR,
                created_at=when,
            ),
        )
        if entry.replayed:
            return entry, units
        count_posted(
            conn, account_id, units, at=when, api_key_id=api_key_id, user_id=actor_user_id, enforce=enforce_budgets
        )
    store_remainder(conn, account_id, operation, rest)
    return entry, units


def with_api_key(metadata: dict[str, str], api_key_id: int | None) -> dict[str, str]:
    """What a usage entry records: the report's metadata, and the API key that posted it (per-key budgets
    count it). Kept out of the report's own metadata, so a replay from another key is still a replay."""
    return {**metadata, "api_key_id": str(api_key_id)} if api_key_id is not None else metadata


def _fingerprint(charge: Charge, metadata: dict[str, str]) -> str:
    """What a report said (operation, quantity, model, session), for a key that posted no entry."""
    said = json.dumps([charge.category, charge.description.strip(), metadata], sort_keys=True)
    return hashlib.sha256(said.encode()).hexdigest()


def _check_same_report(entry: PostedEntry, charge: Charge, metadata: dict[str, str], key: str) -> None:
    """A key's replay must repeat its report: the posted amount depended on the remainder of the day,
    so the entry is compared on what the report said (operation, quantity, model, session)."""
    said = (entry.type, entry.category, entry.description, {k: entry.metadata.get(k) for k in metadata})
    if said != (EntryType.usage.value, charge.category, charge.description.strip(), metadata):
        raise _conflict(key)


def _check_same_uncharged(earlier_said: str | None, said: str, key: str) -> None:
    """The same check for a key whose report charged nothing: its fingerprint (None: kept before there
    were fingerprints, taken as the same report)."""
    if earlier_said is not None and earlier_said != said:
        raise _conflict(key)


def _conflict(key: str) -> IdempotencyConflict:
    return IdempotencyConflict(f"idempotency key {key!r} was already used with different parameters")


def session_row(
    account_id: int,
    entry: PostedEntry | None,
    total_units: int,
    created_at: datetime,
    operation: str,
    quantity: Decimal,
    charge: Charge,
    s: SessionInfo,
) -> dict[str, Any]:
    """The session's `billing_session` row. A session operation's parts are its charged total split so
    that they add up to it exactly; another operation reported with a session (an SMS of a call) has no
    parts, only a total."""
    architecture = SESSION_OPERATIONS.get(operation)
    if architecture is not None:
        parts = apportion(total_units, {k: charge.breakdown[k] for k in SESSION_PARTS})
    else:
        parts = dict.fromkeys(SESSION_PARTS, 0)
    return {
        "account_id": account_id,
        "external_id": s.id,
        "ledger_entry_id": entry.id if entry else None,
        "operation": operation,
        "agent_id": s.agent_id,
        "agent_name": s.agent_name,
        "architecture": architecture,
        "duration_minutes": _qty(quantity) if architecture in ("pipeline", "realtime") else None,
        "message_count": int(quantity) if architecture == "chat" else None,
        "started_at": s.started_at,
        "ended_at": s.ended_at,
        "transcript": s.transcript,
        "recording_url": s.recording_url,
        "analysis": s.analysis,
        "cost_base": parts["base"],
        "cost_llm": parts["llm"],
        "cost_stt": parts["stt"],
        "cost_tts": parts["tts"],
        "cost_total": total_units,
        "created_at": created_at,
    }


def _provider(operation: str) -> str:
    if operation.startswith("openai"):
        return "openai"
    return {
        "sms_twilio": "twilio",
        "sms_telnyx": "telnyx",
        "transcription_deepgram": "deepgram",
        "tts_elevenlabs": "elevenlabs",
        "whatsapp": "whatsapp",
        "email": "email",
    }.get(operation, "orcapulse")
