"""The demo organisation: an owner, a member, a few purchases and a few weeks of varied usage,
so a first run shows a page worth looking at. Deterministic (fixed random seed) and run once."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sqlalchemy.engine import Engine

from .accounts import AccountsError, account_id_for, add_user, create_organization, find_organization
from .db import writer
from .ledger import Ledger, Posting
from .metering import SessionInfo, record_usage
from .models import EntryType
from .notice_sweep import mark_judged

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


def seed_demo(
    engine: Engine,
    ledger: Ledger,
    *,
    welcome_credit: Decimal,
    markup_percent: Decimal = Decimal(20),
    now: datetime | None = None,
) -> SeedResult:
    try:
        org = find_organization(engine, DEMO_ORG)
        return SeedResult(False, org.id, 0)
    except AccountsError:
        pass
    now = now or datetime.now(UTC)
    start = (now - timedelta(days=DEMO_DAYS)).replace(hour=9, minute=0, second=0, microsecond=0)
    org = create_organization(engine, ledger, DEMO_ORG, welcome_credit=welcome_credit, created_at=start)
    add_user(engine, org, DEMO_OWNER[0], "owner", DEMO_OWNER[1])
    add_user(engine, org, DEMO_MEMBER[0], "member", DEMO_MEMBER[1])
    account_id = account_id_for(engine, org.id)
    count = 0
    for item in _demo_activity(account_id, start, now):
        if isinstance(item, Posting):
            ledger.post(item)
        else:
            record_usage(ledger, org.id, markup_percent=markup_percent, **item)
        count += 1
    with writer(engine).begin() as conn:  # history: the notice sweep starts after it
        mark_judged(conn, account_id)
    return SeedResult(True, org.id, count)


def _demo_activity(account_id: int, start: datetime, now: datetime):
    """Purchases as ledger postings; usage as metering reports (sessions with their breakdowns)."""
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
            yield _demo_usage(rng, at, key())


TRANSCRIPT = (
    "Agent: Thanks for calling, how can I help?\nCaller: I'd like to move my appointment to Friday.\n"
    "Agent: Done - Friday at 10:00. Anything else?\nCaller: No, thank you!"
)


def _demo_usage(rng: random.Random, at: datetime, idem: str) -> dict:
    """One metering report, as the platform's services would send it."""
    kind = rng.choices(
        [
            "voice_pipeline",
            "voice_realtime",
            "chat",
            "sms_twilio",
            "whatsapp",
            "email",
            "transcription_deepgram",
            "tts_elevenlabs",
        ],
        weights=[30, 10, 15, 15, 10, 8, 7, 5],
    )[0]
    agent = rng.choice(["agent_abc123", "agent_xyz789", "agent_sales01", "agent_support7"])
    report = {"operation": kind, "status": "completed", "idempotency_key": idem, "created_at": at}
    if kind in ("voice_pipeline", "voice_realtime", "chat"):
        voice = kind != "chat"
        quantity = Decimal(rng.randint(3, 160)) / 10 if voice else Decimal(rng.randint(3, 60))
        seconds = int(quantity * 60) if voice else 120
        report["quantity"] = quantity
        report["session"] = SessionInfo(
            id=f"sess_{idem.split(':')[1]}",
            agent_id=agent,
            agent_name=AGENT_NAMES[agent],
            started_at=at - timedelta(seconds=seconds),
            ended_at=at,
            transcript=TRANSCRIPT if voice else None,
            recording_url=f"https://recordings.orcapulse.local/{idem.split(':')[1]}.mp3" if voice else None,
            analysis={"sentiment": rng.choice(["positive", "neutral"]), "resolved": rng.choice(["yes", "no"])}
            if voice
            else None,
        )
        return report
    quantity = Decimal(rng.randint(500, 6000)) if kind == "tts_elevenlabs" else Decimal(rng.randint(1, 40))
    if kind == "email":
        quantity *= 25
    report["quantity"] = quantity
    return report


AGENT_NAMES = {
    "agent_abc123": "Front desk",
    "agent_xyz789": "Support chat",
    "agent_sales01": "Sales outreach",
    "agent_support7": "After-hours support",
}
