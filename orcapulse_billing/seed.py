"""The demo organisation: an owner, a member, a few purchases and a few weeks of varied usage,
so a first run shows a page worth looking at. Deterministic (fixed random seed) and run once."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal

from sqlalchemy.engine import Engine

from .accounts import AccountsError, account_id_for, add_user, create_organization, find_organization
from .ledger import Ledger, Posting
from .models import EntryType
from .pricing import RATE_CARD, session_cost

DEMO_ORG = "Demo Org"
DEMO_OWNER = ("owner@demo.orcapulse.test", "demo-owner-pass")
DEMO_MEMBER = ("member@demo.orcapulse.test", "demo-member-pass")
DEMO_DAYS = 28
PURCHASES = {0: Decimal(50), 13: Decimal(200), 24: Decimal(50)}  # day -> package


@dataclass(frozen=True)
class SeedResult:
    created: bool
    organization_id: int
    entries: int


def seed_demo(engine: Engine, ledger: Ledger, *, welcome_credit: Decimal, now: datetime | None = None) -> SeedResult:
    try:
        org = find_organization(engine, DEMO_ORG)
        return SeedResult(False, org.id, 0)
    except AccountsError:
        pass
    now = now or datetime.now(timezone.utc)
    start = (now - timedelta(days=DEMO_DAYS)).replace(hour=9, minute=0, second=0, microsecond=0)
    org = create_organization(engine, ledger, DEMO_ORG, welcome_credit=welcome_credit, created_at=start)
    add_user(engine, org, DEMO_OWNER[0], "owner", DEMO_OWNER[1])
    add_user(engine, org, DEMO_MEMBER[0], "member", DEMO_MEMBER[1])
    account_id = account_id_for(engine, org.id)
    postings = list(_demo_postings(account_id, start, now))
    for posting in postings:
        ledger.post(posting)
    return SeedResult(True, org.id, len(postings))


def _demo_postings(account_id: int, start: datetime, now: datetime):
    rng = random.Random(2026)
    n = 0

    def key() -> str:
        nonlocal n
        n += 1
        return f"seed:{n}"

    for day in range(DEMO_DAYS):
        day_start = start + timedelta(days=day)
        if day in PURCHASES:
            amount = PURCHASES[day]
            yield Posting(
                account_id=account_id,
                type=EntryType.purchase,
                amount=amount,
                description=f"Credit top-up via Stripe - ${amount:,.2f}",
                metadata={"provider": "stripe", "feature": "checkout", "demo": True},
                idempotency_key=key(),
                created_at=day_start + timedelta(minutes=5),
            )
        minute = 30
        for _ in range(rng.randint(4, 10)):
            minute += rng.randint(10, 70)
            at = day_start + timedelta(minutes=minute)
            if at >= now:
                return
            yield _demo_usage(account_id, rng, at, key())


def _demo_usage(account_id: int, rng: random.Random, at: datetime, idem: str) -> Posting:
    kind = rng.choices(
        ["pipeline", "realtime", "chat", "sms_twilio", "whatsapp", "email", "transcription_deepgram", "tts_elevenlabs"],
        weights=[30, 10, 15, 15, 10, 8, 7, 5],
    )[0]
    agent = rng.choice(["agent_abc123", "agent_xyz789", "agent_sales01", "agent_support7"])
    if kind in ("pipeline", "realtime"):
        minutes = Decimal(rng.randint(3, 160)) / 10
        cost, breakdown = session_cost(kind, minutes)
        return Posting(
            account_id=account_id, type=EntryType.usage, amount=-cost, category="ai_call",
            description=f"Voice call session - {agent} - {minutes} min",
            metadata={"provider": "orcapulse", "feature": f"voice_{kind}", "agent_id": agent,
                      "architecture": kind, "duration_minutes": str(minutes),
                      "breakdown": {k: str(v) for k, v in breakdown.items()}},
            idempotency_key=idem, created_at=at,
        )
    if kind == "chat":
        messages = rng.randint(3, 60)
        cost, breakdown = session_cost("chat", Decimal(messages))
        return Posting(
            account_id=account_id, type=EntryType.usage, amount=-cost, category="chat",
            description=f"Chat session - {agent} - {messages} messages",
            metadata={"provider": "openai", "feature": "chat", "agent_id": agent, "architecture": "chat",
                      "message_count": messages, "breakdown": {k: str(v) for k, v in breakdown.items()}},
            idempotency_key=idem, created_at=at,
        )
    rate = RATE_CARD[kind]
    quantity = Decimal(rng.randint(1, 40)) if kind != "tts_elevenlabs" else Decimal(rng.randint(500, 6000))
    text = {
        "sms_twilio": f"SMS via Twilio - {quantity} segments",
        "whatsapp": f"WhatsApp messages - {quantity} messages",
        "email": f"Email campaign - {quantity * 25} recipients",
        "transcription_deepgram": f"Transcription (Deepgram) - {quantity} min",
        "tts_elevenlabs": f"Text-to-speech (ElevenLabs) - {quantity} characters",
    }[kind]
    if kind == "email":
        quantity *= 25
    return Posting(
        account_id=account_id, type=EntryType.usage, amount=-rate.cost(quantity), category=rate.category,
        description=text, metadata={"provider": kind.split("_")[-1], "feature": kind, "quantity": str(quantity)},
        idempotency_key=idem, created_at=at,
    )
