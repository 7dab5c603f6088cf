"""Provider events, applied exactly once, with outcomes that may still change.

Every event is stored with its raw body. Its outcome is final once it moved money or was judged
(`processed`, `duplicate`, `ignored`, `rejected`, `needs_attention`): a redelivery is a replay. Two
outcomes are not final: `pending` (the provider has not confirmed the payment yet) and `waiting`
(it refers to a purchase of ours that is not credited yet, such as a refund that overtook its
purchase). Those are evaluated again when the provider delivers the event again, and a `waiting`
event also when the purchase it waits for is credited, in that same transaction.

Money that arrived but matches nothing we may credit (an unknown checkout, an amount or a currency
that differs) goes to the needs-attention list and the operator is emailed; it is never dropped.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from ..db import writer
from ..ledger import Ledger
from ..models import AttentionItem, WebhookEvent
from .flow import after_commit, now, run_after_commit, table_of

log = logging.getLogger(__name__)
REOPENED = ("pending", "waiting")
FINAL = ("processed", "duplicate", "ignored", "rejected", "needs_attention")


class Outcome(NamedTuple):
    outcome: str
    detail: str | None = None
    organization_id: int | None = None
    reference: str | None = None  # for `waiting`: the payment it waits for


# Applies one event (id, type, object) inside the caller's transaction.
Apply = Callable[[Connection, str, str, Mapping[str, Any]], Outcome]


def event_outcome(engine: Engine, provider: str, event_id: str) -> str | None:
    t = table_of(WebhookEvent)
    with engine.connect() as conn:
        found: str | None = conn.execute(
            sa.select(t.c.outcome).where(t.c.provider == provider, t.c.event_id == event_id)
        ).scalar()
        return found


def process_event(
    ledger: Ledger,
    provider: str,
    event_id: str,
    kind: str,
    obj: Mapping[str, Any],
    apply: Apply,
    *,
    payload: str | None = None,
) -> str:
    """Records the event and applies it in one transaction. A replay of a final outcome, or a
    concurrent duplicate delivery (which waits on the unique index, then finds it), changes nothing."""
    t = table_of(WebhookEvent)
    with ledger.transaction() as conn:
        try:
            with conn.begin_nested():
                conn.execute(
                    sa.insert(t).values(
                        provider=provider,
                        event_id=event_id,
                        type=kind,
                        outcome="received",
                        payload=payload,
                        received_at=now(),
                    )
                )
        except IntegrityError:
            stored = conn.execute(
                sa.select(t.c.outcome).where(t.c.provider == provider, t.c.event_id == event_id).with_for_update()
            ).scalar()
            if stored not in REOPENED:
                return "replay"
        result = apply(conn, event_id, kind, obj)
        _store(conn, provider, event_id, result, payload)
        _apply_waiting(conn, provider, apply)
        actions = run_after_commit(conn)
    for action in actions:
        action()
    log.info("%s event %s %s: %s %s", provider, event_id, kind, result.outcome, result.detail or "")
    return result.outcome


def _store(conn: Connection, provider: str, event_id: str, result: Outcome, payload: str | None) -> None:
    t = table_of(WebhookEvent)
    values: dict[str, Any] = {
        "outcome": result.outcome,
        "detail": (result.detail or "")[:500] or None,
        "organization_id": result.organization_id,
        "reference": result.reference,
        "updated_at": now(),
    }
    if payload is not None:
        values["payload"] = payload
    conn.execute(sa.update(t).where(t.c.provider == provider, t.c.event_id == event_id).values(**values))


def _apply_waiting(conn: Connection, provider: str, apply: Apply) -> None:
    """Events that waited for a payment this transaction credited are applied now, in it."""
    t = table_of(WebhookEvent)
    while conn.info.get("credited_references"):
        references = conn.info.pop("credited_references")
        waiting = conn.execute(
            sa.select(t.c.event_id, t.c.type, t.c.payload)
            .where(t.c.provider == provider, t.c.outcome == "waiting", t.c.reference.in_(references))
            .order_by(t.c.id)
            .with_for_update()
        ).all()
        for event in waiting:
            body = json.loads(event.payload or "{}")
            obj = ((body.get("data") or {}).get("object") or {}) if provider == "stripe" else body
            result = apply(conn, event.event_id, event.type, obj)
            _store(conn, provider, event.event_id, result, None)
            log.info("%s event %s %s re-evaluated: %s", provider, event.event_id, event.type, result.outcome)


def needs_attention(
    conn: Connection,
    notify: Callable[[str, str], object],
    *,
    provider: str,
    reference: str,
    reason: str,
    detail: str,
    organization_id: int | None = None,
    amount_cents: int | None = None,
    currency: str | None = None,
) -> Outcome:
    """Keeps a paid payment we could not credit for an operator (once per reference and reason) and
    emails them after the commit."""
    t = table_of(AttentionItem)
    try:
        with conn.begin_nested():
            conn.execute(
                sa.insert(t).values(
                    provider=provider,
                    reference=reference,
                    reason=reason,
                    detail=detail[:500],
                    organization_id=organization_id,
                    amount_cents=amount_cents,
                    currency=currency,
                    created_at=now(),
                )
            )
    except IntegrityError:
        return Outcome("needs_attention", detail, organization_id)  # already on the list
    after_commit(
        conn,
        lambda: notify(
            f"attention:{provider}:{reference}:{reason}",
            f"{provider} payment {reference} needs attention: {detail}",
        ),
    )
    log.warning("%s payment %s needs attention: %s", provider, reference, detail)
    return Outcome("needs_attention", detail, organization_id)


def attention_items(engine: Engine, *, include_resolved: bool = False) -> list[dict[str, Any]]:
    t = table_of(AttentionItem)
    query = sa.select(t).order_by(t.c.id)
    if not include_resolved:
        query = query.where(t.c.resolved_at.is_(None))
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


def resolve_attention(engine: Engine, item_id: int) -> bool:
    t = table_of(AttentionItem)
    with writer(engine).begin() as conn:
        return bool(
            conn.execute(
                sa.update(t).where(t.c.id == item_id, t.c.resolved_at.is_(None)).values(resolved_at=now())
            ).rowcount
        )
