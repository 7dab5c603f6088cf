"""Buying credits through Lemon Squeezy's checkout overlay: the checkout we create carries our
reference in `checkout_data.custom`; the signed `order_created` webhook credits it once, and
`order_refunded` posts each refunded delta once. Lemon Squeezy signs no timestamp and retries, so
events are deduplicated by order and event (and refunded total)."""

from __future__ import annotations

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
from .lemonsqueezy_gateway import LemonOrder, LemonSqueezyGateway, order_from
from .purchases import (
    UNITS_PER_CENT,
    Choice,
    EventOutcome,
    _now,
    credit_checkout,
    event_seen,
    process_event,
    refund_checkout,
    table_of,
)

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
                    created_at=_now(),
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

    def handle_webhook(self, body: Mapping[str, Any]) -> str:
        meta = body.get("meta") or {}
        event_name = str(meta.get("event_name") or "")
        data = body.get("data") or {}
        if data.get("type") != "orders":
            return "ignored"
        order = order_from(data, meta.get("custom_data") or {})
        event_id = f"{event_name}:{order.id}"
        if event_name == "order_refunded":
            event_id += f":{order.refunded_cents}"  # each refunded total once
        if event_seen(self.engine, PROVIDER, event_id):
            return "replay"
        return process_event(
            self.ledger, PROVIDER, event_id, event_name, lambda conn: self._apply(conn, event_name, order)
        )

    def _apply(self, conn: Connection, event_name: str, order: LemonOrder) -> EventOutcome:
        t = table_of(CheckoutSession)
        if event_name == "order_created":
            org_id = order.custom_data.get("organization_id")
            if not (
                org_id
                and str(org_id).isdigit()
                and conn.execute(sa.select(col(Organization.id)).where(col(Organization.id) == int(org_id))).first()
            ):
                return "rejected", "unknown organization", None
            row = conn.execute(
                sa.select(t).where(
                    t.c.provider == PROVIDER,
                    t.c.provider_id == order.custom_data.get("checkout_ref"),
                    t.c.organization_id == int(org_id),
                )
            ).first()
            if row is None:
                return "rejected", "no checkout of ours matches this order", int(org_id)
            if order.status != "paid":
                return "pending", f"order status {order.status}", row.organization_id
            if order.total_cents * UNITS_PER_CENT != row.amount:
                return "rejected", "amount does not match our checkout", row.organization_id
            if not credit_checkout(
                self.ledger,
                conn,
                row,
                provider_reference=order.id,
                metadata={
                    "feature": "checkout_overlay",
                    "lemonSqueezyOrderId": order.id,
                    "lemonSqueezyCheckoutRef": row.provider_id,
                },
            ):
                return "duplicate", "already credited", row.organization_id
            return "processed", "credited", row.organization_id
        if event_name == "order_refunded":
            row = conn.execute(
                sa.select(t).where(
                    t.c.provider == PROVIDER, t.c.payment_intent_id == order.id, t.c.status == "completed"
                )
            ).first()
            if row is None:
                return "rejected", "no purchase of ours matches this order", None
            return refund_checkout(
                self.ledger,
                conn,
                row,
                order.refunded_cents,
                key=f"lemonsqueezy-refund:{order.id}",
                metadata={"lemonSqueezyOrderId": order.id},
            )
        return "ignored", None, None
