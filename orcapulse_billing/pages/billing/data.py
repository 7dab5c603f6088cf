"""The billing page's reads: what the page shows, read through the same services as the REST API
(ledger.get_account, history, metering's billing sessions) in one read transaction, in a worker
thread, and turned into display-ready strings. Money is formatted here from exact integer units,
never carried as floats (the chart's bar heights aside). No Reflex state here: the state calls
these through the module (`data._load`), so a test can replace one of them in place.
"""

from __future__ import annotations

import time
from collections.abc import Hashable
from datetime import UTC, date, datetime, timedelta

import sqlalchemy as sa

from ...config import get_settings
from ...db import get_engine
from ...grants import consumed_by, day_label, soonest_expiry
from ...history import HistoryQuery, billing_session, entries_after, entry_detail, history_page, usage_summary
from ...holds import reserved_units
from ...ledger import get_account
from ...low_balance import current_threshold
from ...models import CheckoutSession, Organization
from ...money import fmt4, fmt_balance, fmt_money4, fmt_signed_amount, from_units, to_units
from ...receipts import DOCUMENTED_TYPES, documents_for_entries
from ...services import get_auto_recharger
from ...state import SharedReads

CHART_DAYS = 30
TYPE_BADGES = {
    "purchase": "Top-up",
    "bonus": "Top-up",
    "usage": "Usage",
    "refund": "Refund",
    "dispute": "Dispute",
    "expiry": "Expired",
    "adjustment": "Adjustment",
}
CATEGORY_LABELS = {
    "ai_call": "AI calls",
    "call_recording": "Recording",
    "whatsapp": "WhatsApp",
    "sms": "SMS",
    "email": "Email",
    "transcription": "Transcription",
    "tts": "TTS",
    "llm_tokens": "LLM tokens",
    "chat": "Chat",
    "phone_rental": "Phone numbers",
    "other": "Other",
}


def format_when(value: datetime) -> str:
    """'Jan 15, 2024 14:30' (UTC)."""
    v = value.astimezone(UTC)
    return f"{v:%b} {v.day}, {v:%Y %H:%M}"


def _row(item, documents: dict[int, tuple[int, str]] | None = None) -> dict[str, str]:
    """`documents`: entry id -> (receipt or credit note id, its number), for the rows that have one."""
    document = (documents or {}).get(item.id)
    return {
        "receipt": str(document[0]) if document else "",
        "receipt_number": document[1] if document else "",
        "id": str(item.id),
        "when": format_when(item.created_at),
        "type": item.type,
        "badge": TYPE_BADGES.get(item.type, item.type.title()),
        "description": item.description,
        "amount": fmt_signed_amount(item.amount_units),
        "credit": "1" if item.amount_units > 0 else "",
        "balance_after": fmt_money4(item.balance_after_units),
        "session_id": item.usage_session_id or "",
        "category": item.category or "",
    }


def day_start(day: str) -> datetime | None:
    """'2026-11-01' -> 2026-11-01T00:00:00Z; '' -> None. The page's dates are whole UTC days."""
    return datetime.combine(date.fromisoformat(day), datetime.min.time(), UTC) if day else None


def history_query(type_filter: str, date_from: str = "", date_to: str = "", order: str = "newest") -> HistoryQuery:
    """The page's filters as a history query: from the start of `date_from` to the end of `date_to`
    (both included, UTC)."""
    end = day_start(date_to)
    after = end + timedelta(days=1) if end and end.date() < date.max else None
    return HistoryQuery(type_filter, day_start(date_from), after, order)


def _load(
    organization_id: int,
    type_filter: str,
    page: int,
    page_size: int,
    date_from: str = "",
    date_to: str = "",
    order: str = "newest",
) -> dict:
    """Everything the page shows, in one read transaction (runs in a worker thread). `read_at`: when
    the read began (wall clock), so that an older read never replaces a newer one (figures.Figures)."""
    settings = get_settings()
    read_at = time.time()
    now = datetime.now(UTC)
    query = history_query(type_filter, date_from, date_to, order)
    with get_engine().connect() as conn:
        acct = get_account(conn, organization_id=organization_id)
        org_name = conn.execute(sa.select(Organization.name).where(Organization.id == organization_id)).scalar()
        result = history_page(conn, acct.id, query, page=page, page_size=page_size)
        if result.items == [] and page > result.total_pages:  # the page vanished (filter changed elsewhere)
            result = history_page(conn, acct.id, query, page=result.total_pages, page_size=page_size)
        # receipts and credit notes of the page's purchases and refunds (one indexed probe)
        documents = documents_for_entries(conn, [i.id for i in result.items if i.type in DOCUMENTED_TYPES])
        spend = usage_summary(conn, acct.id, now - timedelta(days=CHART_DAYS), None)
        # saved-card charges whose answer was lost: shown as being confirmed until they settle
        pending = conn.execute(
            sa.select(CheckoutSession.amount)
            .where(
                CheckoutSession.organization_id == organization_id,
                CheckoutSession.status.in_(("charging", "unknown")),
            )
            .order_by(CheckoutSession.id)
        ).scalars()
        pending_labels = [fmt_balance(units) for units in pending]
        reserved = reserved_units(conn, acct.id)  # active holds: available = balance - reserved
        expiring = soonest_expiry(conn, acct.id)  # the active grant that expires first
        # the organization's own low-balance threshold (low_balance.py), else the deployment's
        threshold = current_threshold(conn, organization_id, to_units(settings.low_balance_threshold)).units
    return {
        "read_at": read_at,
        "full_at": read_at,  # when the last whole read began (_load_newer keeps it)
        "pending": ", ".join(pending_labels),
        "org_name": org_name or "",
        "balance_units": acct.balance_units,
        "reserved_units": reserved,
        "expiring": _expiring(expiring),
        "added_units": acct.lifetime_added_units,
        "consumed_units": acct.lifetime_consumed_units,
        "transactions": acct.transaction_count,
        "threshold_units": threshold,
        "grace_units": to_units(settings.grace_limit),
        "rows": [_row(i, documents) for i in result.items],
        "page": result.page,
        "total": result.total,
        "total_pages": result.total_pages,
        **_spend([(r.category, r.amount_units, r.count) for r in spend]),
        "auto": get_auto_recharger(get_engine()).get(organization_id),
    }


def _expiring(soonest: tuple | None) -> str:
    return f"{from_units(soonest[0]):,.2f} credits expire on {day_label(soonest[1])}" if soonest else ""


def _spend(units: list[tuple[str, int, int]]) -> dict:
    """The 30-day chart from (category, amount consumed in units, count), largest first."""
    units = sorted(((c, a, n) for c, a, n in units if n), key=lambda r: (-r[1], r[0]))
    return {
        "spend_units": units,
        "spend": [
            {
                "category": CATEGORY_LABELS.get(category, category),
                "amount": fmt_money4(amount),
                "count": f"({count:,})",
                # every figure shown as text comes from the exact string above
                "value": float(from_units(amount)),  # ok: the chart's bar height only
            }
            for category, amount, count in units
        ],
        "spend_total": fmt_balance(sum(amount for _, amount, _ in units)),
    }


def _load_newer(organization_id: int, base: dict, page_size: int) -> dict | None:
    """_load's result for the first page of the whole history, newest first, from `base` (its result a
    moment ago) and what was posted since: the account's row, the new entries (a range of seq) and the
    soonest expiry, 3 queries instead of _load's 10. Only usage may have been posted since (a top-up
    can settle a pending payment or change auto-recharge: _load reads those); None otherwise, or when
    a page's worth or more was posted."""
    read_at = time.time()
    with get_engine().connect() as conn:
        acct = get_account(conn, organization_id=organization_id)
        posted = acct.transaction_count - base["transactions"]
        if not 0 <= posted < page_size:
            return None
        items = entries_after(conn, acct.id, base["transactions"])
        if len(items) != posted or any(i.type != "usage" for i in items):
            return None
        expiring = soonest_expiry(conn, acct.id)
    spend = {c: [a, n] for c, a, n in base["spend_units"]}
    for item in items:
        counted = spend.setdefault(item.category or "other", [0, 0])
        counted[0] -= item.amount_units
        counted[1] += 1
    total = acct.transaction_count
    return {
        **base,
        "read_at": read_at,
        "balance_units": acct.balance_units,
        "added_units": acct.lifetime_added_units,
        "consumed_units": acct.lifetime_consumed_units,
        "transactions": total,
        "rows": ([_row(i) for i in items] + base["rows"])[:page_size],
        "page": 1,
        "total": total,
        "total_pages": max(1, -(-total // page_size)),
        "expiring": _expiring(expiring),
        **_spend([(c, a, n) for c, (a, n) in spend.items()]),
    }


_live_reads = SharedReads(max_entries=256)


async def _load_after(
    organization_id: int,
    type_filter: str,
    page: int,
    page_size: int,
    date_from: str,
    date_to: str,
    order: str,
    after: Hashable,
) -> dict:
    """_load for a live update (`after`: the committed entry's id) or a catch-up (the account's
    newest seq, tagged): all the tabs of this worker showing the same page (same filters) after the
    same change share one read."""
    view = (organization_id, type_filter, page, page_size, date_from, date_to, order)
    return await _live_reads.get((*view, after), _load, *view)


def _account_head(organization_id: int) -> int:
    """The account's newest entry (its last seq, the transaction count): one row by its key."""
    with get_engine().connect() as conn:
        return get_account(conn, organization_id=organization_id).transaction_count


_heads = SharedReads(max_entries=4096)
HEAD_MAX_AGE = 2.0  # seconds: the heartbeats of a worker's tabs share one read of an account's head


async def _newest_entry(organization_id: int) -> int:
    """_account_head, read at most once per HEAD_MAX_AGE per organization by this worker."""
    return await _heads.get(organization_id, _account_head, organization_id, max_age=HEAD_MAX_AGE)


SOURCE_LABELS = {
    "purchase": "Purchase",
    "bonus": "Volume bonus",
    "welcome": "Welcome credit",
    "manual": "Manual grant",
    "refund": "Refund",
    "promotional": "Promotional credit",
}
# provider references a purchase's or refund's metadata may hold, in the order the panel lists them
REFERENCES = (
    ("stripeCheckoutSessionId", "Stripe checkout session"),
    ("stripePaymentIntentId", "Stripe payment intent"),
    ("stripeChargeId", "Stripe charge"),
    ("lemonSqueezyOrderId", "Lemon Squeezy order"),
    ("lemonSqueezyCheckoutRef", "Lemon Squeezy checkout"),
)


def _load_entry(organization_id: int, entry_id: int) -> dict | None:
    """The row detail panel: the entry as the database has it (never as the tab sent it), balance
    before and after, its source, who made it and from where, its provider references, and for a
    usage charge its billing session. None when the entry is not this organization's."""
    with get_engine().connect() as conn:
        acct = get_account(conn, organization_id=organization_id)
        detail = entry_detail(conn, acct.id, entry_id)
        if detail is None:
            return None
        item = detail.item
        session = billing_session(conn, acct.id, item.usage_session_id) if item.usage_session_id else None
        used = consumed_by(conn, item.id) if item.amount_units < 0 else []  # which grants a debit spent
        documents = documents_for_entries(conn, [item.id]) if item.type in DOCUMENTED_TYPES else {}
    meta = item.metadata
    if detail.actor_email:
        actor = detail.actor_email
    elif meta.get("via") == "cli":
        actor = f"Command line ({meta['operator']})" if meta.get("operator") else "Command line"
    else:
        actor = "System"
    return {
        "row": _row(item, documents),
        "entry": {
            "id": str(item.id),
            "type": TYPE_BADGES.get(item.type, item.type.title()),
            "balance_before": fmt_money4(item.balance_before_units),
            "balance_after": fmt_money4(item.balance_after_units),
            "source": SOURCE_LABELS.get(item.source, item.source.title()) if item.source else "",
            "actor": actor,
            "ip": detail.actor_ip or "",
            "auto_recharge": "Yes" if meta.get("autoRecharge") else "",
        },
        "refs": [{"label": "Credits used", "value": line} for line in used]
        + [{"label": label, "value": str(meta[key])} for key, label in REFERENCES if meta.get(key)],
        "session": _session(session) if session else {},
    }


def _session(row: dict) -> dict[str, str]:
    when = lambda v: format_when(v.replace(tzinfo=v.tzinfo or UTC)) if v else ""  # noqa: E731
    duration = (
        f"{row['duration_minutes']} min"
        if row["duration_minutes"]
        else (f"{row['message_count']} messages" if row["message_count"] is not None else "")
    )
    return {
        "id": row["external_id"],
        "agent": row["agent_name"] or row["agent_id"] or "Unknown agent",
        "agent_id": row["agent_id"] or "",
        "architecture": (row["architecture"] or row["operation"]).title(),
        "duration": duration,
        "base": "$" + fmt4(row["cost_base"]),
        "llm": "$" + fmt4(row["cost_llm"]),
        "stt": "$" + fmt4(row["cost_stt"]),
        "tts": "$" + fmt4(row["cost_tts"]),
        "total": "$" + fmt4(row["cost_total"]),
        "started": when(row["started_at"]),
        "ended": when(row["ended_at"]),
        "billed": when(row["created_at"]),
        "transcript": row["transcript"] or "",
        "recording": row["recording_url"] or "",
        "analysis": "\n".join(f"{k}: {v}" for k, v in (row["analysis"] or {}).items()),
    }
