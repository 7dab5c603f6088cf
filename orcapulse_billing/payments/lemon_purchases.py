"""Buying credits through Lemon Squeezy's checkout overlay: the checkout we create carries our
reference in `checkout_data.custom`; the signed `order_created` webhook credits it once, and
`order_refunded` posts each refunded delta once (with the bonus share). Lemon Squeezy signs no timestamp
and retries, so events are deduplicated by order and event (and refunded total). An order first
delivered as `pending` is evaluated again when it is delivered as paid (its event id is fixed per
order); a refund that overtakes its order waits for it; a paid order that matches nothing of ours, or
whose amount or currency differs, goes to the needs-attention list."""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlmodel import col

from ..auth import Principal
from ..config import Settings
from ..ledger import Ledger
from ..models import CheckoutSession, Organization
from ..money import to_units
from .events import FINAL, Outcome, event_outcome, needs_attention, process_event
from .flow import Choice, credit_checkout, now, payment_mismatch, table_of
from .lemonsqueezy_gateway import LemonOrder, LemonSqueezyGateway, order_from
from .takebacks import refund_to

PROVIDER = "lemonsqueezy"


class LemonPurchases:
    def __init__(self, engine: Engine, ledger: Ledger, gateway: LemonSqueezyGateway, settings: Settings):
        self.engine, self.ledger, self.gateway, self.settings = engine, ledger, gateway, settings

    def start_checkout(
        self, principal: Principal, choice: Choice, *, ip: str | None, redirect_url: str
    ) -> dict[str, str]:
        reference = "ls_" + secrets.token_hex(12)
        checkout = self.gateway.create_checkout(
            amount_cents=choice.cents,
            redirect_url=redirect_url,
            product_name=f"OrcaPulse credits - {choice.label}",
            custom={
                "organization_id": str(principal.organization_id),
                "user_id": str(principal.user_id),
                "checkout_ref": reference,
                "package_id": choice.package_id or "custom",
            },
        )
        with self.ledger.transaction() as conn:
            conn.execute(
                sa.insert(CheckoutSession).values(
                    organization_id=principal.organization_id,
                    user_id=principal.user_id,
                    provider=PROVIDER,
                    provider_id=reference,
                    mode="payment",
                    package_id=choice.package_id,
                    amount=to_units(choice.credits),
                    bonus=to_units(choice.bonus),
                    status="open",
                    url=checkout.url,
                    actor_ip=ip,
                    created_at=now(),
                )
            )
        return {"session_id": reference, "url": checkout.url}

    def checkout_status(self, organization_id: int, reference: str) -> str | None:
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(col(CheckoutSession.status)).where(
                    col(CheckoutSession.organization_id) == organization_id,
                    col(CheckoutSession.provider) == PROVIDER,
                    col(CheckoutSession.provider_id) == reference,
                )
            ).scalar()

    def handle_webhook(self, body: Mapping[str, Any], payload: str | None = None) -> str:
        meta = body.get("meta") or {}
        event_name = str(meta.get("event_name") or "")
        data = body.get("data") or {}
        if data.get("type") != "orders":
            return "ignored"
        order = order_from(data, meta.get("custom_data") or {})
        event_id = f"{event_name}:{order.id}"
        if event_name == "order_refunded":
            event_id += f":{order.refunded_cents}"  # each refunded total once
        if event_outcome(self.engine, PROVIDER, event_id) in FINAL:
            return "replay"
        return process_event(
            self.ledger,
            PROVIDER,
            event_id,
            event_name,
            body,
            lambda conn, _eid, kind, obj: self._apply(conn, kind, obj),
            payload=payload or json.dumps(dict(body)),
        )

    def _apply(self, conn: Connection, event_name: str, body: Mapping[str, Any]) -> Outcome:
        meta = body.get("meta") or {}
        order = order_from(body.get("data") or {}, meta.get("custom_data") or {})
        t = table_of(CheckoutSession)
        if event_name == "order_created":
            raw_org = str(order.custom_data.get("organization_id") or "")
            org_id = int(raw_org) if raw_org.isdigit() else None
            known_org = (
                org_id is not None
                and conn.execute(sa.select(col(Organization.id)).where(col(Organization.id) == org_id)).first()
            )
            row = (
                conn.execute(
                    sa.select(t).where(
                        t.c.provider == PROVIDER,
                        t.c.provider_id == order.custom_data.get("checkout_ref"),
                        t.c.organization_id == org_id,
                    )
                ).first()
                if known_org
                else None
            )
            if row is None:
                if order.status == "paid":
                    return self._attention(
                        conn, order, "unknown_checkout", "a paid order that matches no checkout of ours"
                    )
                return Outcome("rejected", "no checkout of ours matches this order")
            if order.status != "paid":
                return Outcome("pending", f"order status {order.status}", row.organization_id)
            mismatch = payment_mismatch(row, order.total_cents, order.currency)
            if mismatch:
                return self._attention(
                    conn,
                    order,
                    "amount_mismatch",
                    mismatch,
                    row.organization_id,
                )
            if (
                credit_checkout(
                    self.ledger,
                    conn,
                    row,
                    provider_reference=order.id,
                    metadata={
                        "feature": "checkout_overlay",
                        "lemonSqueezyOrderId": order.id,
                        "lemonSqueezyCheckoutRef": row.provider_id,
                    },
                )
                is None
            ):
                return Outcome("duplicate", "already credited", row.organization_id)
            return Outcome("processed", "credited", row.organization_id)
        if event_name == "order_refunded":
            row = conn.execute(
                sa.select(t).where(
                    t.c.provider == PROVIDER, t.c.payment_intent_id == order.id, t.c.status == "completed"
                )
            ).first()
            if row is None:  # the order may not be credited yet: evaluated again when it is
                return Outcome("waiting", "no credited purchase of ours matches this order yet", None, order.id)
            return refund_to(
                self.ledger,
                conn,
                row,
                order.refunded_cents,
                key=f"lemonsqueezy-refund:{order.id}",
                metadata={"lemonSqueezyOrderId": order.id},
            )
        return Outcome("ignored")

    def _attention(
        self, conn: Connection, order: LemonOrder, reason: str, detail: str, organization_id: int | None = None
    ) -> Outcome:
        from ..services import get_notifier

        notifier = get_notifier(self.engine)
        return needs_attention(
            conn,
            lambda key, subject: notifier.notify_operator(key, subject, subject + "\n"),
            provider=PROVIDER,
            reference=order.id,
            reason=reason,
            detail=f"order {order.id}: {detail}",
            organization_id=organization_id,
            amount_cents=order.total_cents,
            currency=order.currency,
        )
