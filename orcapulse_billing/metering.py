"""Metering: may an operation start, and what did a finished one cost.

The spec's `checkCredits` middleware as two calls. `check` refuses new operations when the balance
is at or below zero. `record_usage` posts the deduction after the operation has finished: a failed
operation is never charged, and a completed one is charged even into the grace period (down to
minus the grace limit), so calls already running end normally.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from .history import billing_session
from .ledger import Ledger, PostedEntry, Posting, get_account
from .models import BillingSession, EntryType
from .money import to_units
from .pricing import RATE_CARD, SESSION_COMPONENTS, openai_rate

SESSION_OPERATIONS = {"voice_pipeline": "pipeline", "voice_realtime": "realtime", "chat": "chat"}
OPENAI_OPERATIONS = {"openai_input_tokens": "input", "openai_output_tokens": "output"}
OPERATIONS = tuple(RATE_CARD) + tuple(SESSION_OPERATIONS) + tuple(OPENAI_OPERATIONS)
STATUSES = ("completed", "failed")


class MeteringError(ValueError):
    """Bad usage input (unknown operation or model, bad quantity or session)."""


@dataclass(frozen=True)
class SessionInfo:
    id: str
    agent_id: str | None = None
    agent_name: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    transcript: str | None = None
    recording_url: str | None = None
    analysis: dict[str, Any] | None = None  # JSON object


@dataclass(frozen=True)
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
    allowed: bool
    balance_units: int
    estimated_cost: Decimal


def check(
    engine: Engine,
    organization_id: int,
    operation: str,
    estimated_quantity: Decimal,
    *,
    markup_percent: Decimal,
    model: str | None = None,
) -> CheckResult:
    charge = price(operation, estimated_quantity, markup_percent=markup_percent, model=model)
    with engine.connect() as conn:
        acct = get_account(conn, organization_id=organization_id)
    return CheckResult(acct.balance_units > 0, acct.balance_units, charge.cost)


@dataclass(frozen=True)
class UsageResult:
    charged: bool
    entry: PostedEntry | None
    charge: Charge
    session_id: str | None


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
) -> UsageResult:
    """`created_at` backdates the entry (imports, the demo seed); live reports leave it unset."""
    if status not in STATUSES:
        raise MeteringError(f"status must be one of {', '.join(STATUSES)}")
    if session is not None and session.ended_at and session.started_at and session.ended_at < session.started_at:
        raise MeteringError("a session cannot end before it starts")
    charge = price(
        operation, quantity, markup_percent=markup_percent, model=model, agent=session.agent_id if session else None
    )
    if status == "failed":
        return UsageResult(False, None, charge, None)  # never charge a failed operation
    metadata = {"provider": _provider(operation), "feature": operation, "quantity": _qty(quantity)}
    if model:
        metadata["model"] = model
    if session is not None:
        metadata["usage_session_id"] = session.id
    if to_units(charge.cost) == 0:
        return UsageResult(False, None, charge, None)  # below a ten-thousandth of a credit
    with ledger.transaction() as conn:
        account_id = get_account(conn, organization_id=organization_id).id
        entry = ledger.post_in(
            conn,
            Posting(
                account_id,
                EntryType.usage,
                -charge.cost,
                charge.description,
                category=charge.category,
                metadata=metadata,
                actor_user_id=actor_user_id,
                actor_ip=actor_ip,
                idempotency_key=f"usage:{idempotency_key}",
                created_at=created_at,
            ),
        )
        if session is not None and not entry.replayed:
            if billing_session(conn, account_id, session.id) is not None:
                raise MeteringError(f"session {session.id!r} was already billed")
            _insert_session(conn, account_id, entry, operation, quantity, charge, session)
    return UsageResult(True, entry, charge, session.id if session else None)


def _insert_session(
    conn: Connection,
    account_id: int,
    entry: PostedEntry,
    operation: str,
    quantity: Decimal,
    charge: Charge,
    s: SessionInfo,
) -> None:
    architecture = SESSION_OPERATIONS.get(operation)
    parts = {k: to_units(v) for k, v in charge.breakdown.items() if k in ("base", "llm", "stt", "tts")}
    conn.execute(
        sa.insert(BillingSession).values(
            account_id=account_id,
            external_id=s.id,
            ledger_entry_id=entry.id,
            operation=operation,
            agent_id=s.agent_id,
            agent_name=s.agent_name,
            architecture=architecture,
            duration_minutes=_qty(quantity) if architecture in ("pipeline", "realtime") else None,
            message_count=int(quantity) if architecture == "chat" else None,
            started_at=s.started_at,
            ended_at=s.ended_at,
            transcript=s.transcript,
            recording_url=s.recording_url,
            analysis=s.analysis,
            cost_base=parts.get("base", 0),
            cost_llm=parts.get("llm", 0),
            cost_stt=parts.get("stt", 0),
            cost_tts=parts.get("tts", 0),
            cost_total=-entry.amount_units,
            created_at=entry.created_at,
        )
    )


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
