"""Stripe webhook events: checkouts, saved-card charges, refunds, failed refunds and chargebacks.

Stripe delivers at least once, late, out of order and concurrently. `events.process_event` makes each
apply once; here each kind finds the payment of ours it concerns and moves money through `flow` and
`takebacks`. What the provider holds *now* (a charge's refunded total, a PaymentIntent's status) is read
before the write transaction for the events whose snapshot may be stale.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..ledger import DbRow
from ..models import CheckoutSession
from ..receipts import CardLabel, saved_card
from .events import FINAL, Outcome, event_outcome, needs_attention, process_event
from .flow import after_commit, credit_checkout, feature_of, hold_for_operator, payment_mismatch, table_of
from .stripe_gateway import Card, PaymentError
from .takebacks import close_dispute, open_dispute, refund_to, reverse_payment

if TYPE_CHECKING:
    from .stripe_purchases import StripePurchases

log = logging.getLogger(__name__)


@dataclass
class Prefetched:
    """What was read from Stripe for one event, before its transaction."""

    card: Card | None = None
    refunded_cents: int | None = None  # the charge's amount_refunded now
    intent_status: str | None = None  # the PaymentIntent's status now


class StripeEvents:
    def __init__(self, purchases: StripePurchases):
        self.purchases = purchases
        self.ledger, self.gateway = purchases.ledger, purchases.gateway

    def handle(self, event: Mapping[str, Any], payload: str | None = None) -> str:
        event_id, kind = event.get("id"), str(event.get("type", ""))
        obj = (event.get("data") or {}).get("object") or {}
        if not event_id:
            return "ignored"
        if event_outcome(self.purchases.engine, "stripe", event_id) in FINAL:
            return "replay"
        prefetched = self._prefetch(kind, obj)  # provider calls before the write transaction

        def apply(conn: Connection, eid: str, k: str, o: Mapping[str, Any]) -> Outcome:
            return self._apply(conn, eid, k, o, prefetched if eid == event_id else Prefetched())

        return process_event(
            self.ledger, "stripe", event_id, kind, obj, apply, payload=payload or json.dumps(dict(event))
        )

    # -- before the transaction ------------------------------------------------------------------

    def _prefetch(self, kind: str, obj: Mapping[str, Any]) -> Prefetched:
        """Best effort, except that an outage raises, so that Stripe delivers the event again."""
        found = Prefetched()
        try:
            if kind == "checkout.session.completed" and obj.get("mode") == "setup" and obj.get("setup_intent"):
                found.card = self.gateway.card_from_setup_intent(obj["setup_intent"])
            elif (
                kind in ("checkout.session.completed", "checkout.session.async_payment_succeeded")
                and obj.get("payment_status") == "paid"
                and obj.get("payment_intent")
            ):
                found.card = self.gateway.card_from_payment_intent(obj["payment_intent"])
            elif kind in ("charge.refunded", "charge.refund.updated"):
                charge_id = obj.get("id") if kind == "charge.refunded" else obj.get("charge")
                if charge_id:
                    found.refunded_cents = int(self.gateway.charge(str(charge_id)).get("amount_refunded") or 0)
            elif kind in ("payment_intent.payment_failed", "checkout.session.async_payment_failed"):
                intent = obj.get("id") if kind.startswith("payment_intent.") else obj.get("payment_intent")
                if intent:
                    found.intent_status = self.gateway.payment_intent(str(intent)).status
        except PaymentError as exc:
            if exc.retryable:
                raise
            log.warning("could not read %s of %s from Stripe: %s", kind, obj.get("id"), exc.message)
        return found

    # -- in the transaction --------------------------------------------------------------------------

    def _apply(self, conn: Connection, event_id: str, kind: str, obj: Mapping[str, Any], pre: Prefetched) -> Outcome:
        if kind.startswith("checkout.session."):
            return self._checkout(conn, kind, obj, pre)
        if kind in ("payment_intent.succeeded", "payment_intent.payment_failed"):
            return self._intent(conn, kind, obj, pre)
        if kind in ("charge.refunded", "charge.refund.updated"):
            return self._refund(conn, event_id, kind, obj, pre)
        if kind.startswith("charge.dispute."):
            return self._dispute(conn, kind, obj)
        return Outcome("ignored")

    def _attention(self, conn: Connection, reference: str, reason: str, detail: str, **kw: Any) -> Outcome:
        return needs_attention(
            conn,
            self.purchases.notify_operator,
            provider="stripe",
            reference=reference,
            reason=reason,
            detail=detail,
            **kw,
        )

    def _checkout(self, conn: Connection, kind: str, obj: Mapping[str, Any], pre: Prefetched) -> Outcome:
        t = table_of(CheckoutSession)
        row = conn.execute(sa.select(t).where(t.c.provider == "stripe", t.c.provider_id == obj.get("id"))).first()
        paid = obj.get("payment_status") == "paid"
        if row is None:
            if paid:
                return self._attention(
                    conn,
                    str(obj.get("id")),
                    "unknown_checkout",
                    "a paid Checkout Session that matches no checkout of ours",
                    amount_cents=_int(obj.get("amount_total")),
                    currency=str(obj.get("currency") or ""),
                )
            return Outcome("rejected", "unknown checkout session")
        org = row.organization_id
        if (obj.get("metadata") or {}).get("organization_id") != str(org):
            return Outcome("rejected", "organization does not match our session", org)
        if kind == "checkout.session.completed" and row.mode == "setup":
            if pre.card is not None:
                self.purchases._save_card_in(conn, org, pre.card)
            conn.execute(sa.update(t).where(t.c.id == row.id).values(status="completed"))
            return Outcome("processed", "card saved", org)
        if kind in ("checkout.session.completed", "checkout.session.async_payment_succeeded"):
            if not paid:
                return Outcome("pending", "payment not confirmed yet", org)
            mismatch = payment_mismatch(row, _int(obj.get("amount_total")), obj.get("currency"))
            if mismatch:
                return self._attention(
                    conn,
                    str(obj.get("payment_intent") or row.provider_id),
                    "amount_mismatch",
                    f"Checkout Session {row.provider_id}: {mismatch}",
                    organization_id=org,
                    amount_cents=_int(obj.get("amount_total")),
                    currency=str(obj.get("currency") or ""),
                )
            credited = credit_checkout(
                self.ledger,
                conn,
                row,
                provider_reference=obj.get("payment_intent"),
                metadata={
                    "feature": "checkout",
                    "stripeCheckoutSessionId": row.provider_id,
                    "stripePaymentIntentId": obj.get("payment_intent"),
                },
                card=CardLabel(pre.card.brand, pre.card.last4) if pre.card is not None else None,
            )
            if credited is None:
                return Outcome("duplicate", "already credited", org)
            if pre.card is not None:
                self.purchases._save_card_in(conn, org, pre.card, make_default=False)
            return Outcome("processed", "credited", org)
        if kind == "checkout.session.async_payment_failed":
            if row.status == "completed":
                return self._failed_after_credit(conn, row, pre, "the delayed payment failed")
            conn.execute(sa.update(t).where(t.c.id == row.id, t.c.status == "open").values(status="failed"))
            return Outcome("processed", "payment failed", org)
        if kind == "checkout.session.expired":
            conn.execute(sa.update(t).where(t.c.id == row.id, t.c.status == "open").values(status="expired"))
            return Outcome("processed", "expired", org)
        return Outcome("ignored", None, org)

    def _intent(self, conn: Connection, kind: str, obj: Mapping[str, Any], pre: Prefetched) -> Outcome:
        t = table_of(CheckoutSession)
        intent_id = str(obj.get("id") or "")
        key = (obj.get("metadata") or {}).get("orcapulse_key")
        row = None
        if key:
            row = conn.execute(sa.select(t).where(t.c.provider == "stripe", t.c.idempotency_key == key)).first()
        if row is None:
            row = conn.execute(sa.select(t).where(t.c.provider == "stripe", t.c.payment_intent_id == intent_id)).first()
        if row is None:
            if key and kind == "payment_intent.succeeded":
                return self._attention(
                    conn,
                    intent_id,
                    "unknown_payment",
                    f"a succeeded PaymentIntent carrying our key {key} that matches no payment of ours",
                    amount_cents=_int(obj.get("amount")),
                    currency=str(obj.get("currency") or ""),
                )
            return Outcome("ignored")  # a hosted checkout's intent: its checkout.session events credit it
        org = row.organization_id
        if row.mode not in ("quick", "auto"):
            return Outcome("ignored", "credited through its Checkout Session", org)
        if kind == "payment_intent.succeeded":
            mismatch = payment_mismatch(row, _int(obj.get("amount")), obj.get("currency"))
            if mismatch:
                hold_for_operator(conn, row.id, mismatch)
                return self._attention(
                    conn,
                    intent_id,
                    "amount_mismatch",
                    mismatch,
                    organization_id=org,
                    amount_cents=_int(obj.get("amount")),
                    currency=str(obj.get("currency") or ""),
                )
            credited = credit_checkout(
                self.ledger,
                conn,
                row,
                provider_reference=intent_id,
                metadata={"feature": feature_of(row), "stripePaymentIntentId": intent_id},
                card=saved_card(conn, org, obj.get("payment_method")),
            )
            return Outcome("processed", "credited", org) if credited is not None else Outcome("duplicate", None, org)
        # payment_intent.payment_failed
        if row.status == "completed":
            return self._failed_after_credit(conn, row, pre, "the payment failed after it was credited")
        reason = ((obj.get("last_payment_error") or {}).get("message")) or "the card was declined"
        marked = conn.execute(
            sa.update(t)
            .where(t.c.id == row.id, t.c.status.in_(("charging", "unknown")))
            .values(status="failed", error=str(reason)[:300])
        ).rowcount
        return (
            Outcome("processed", "payment failed", org)
            if marked
            else Outcome("duplicate", f"already {row.status}", org)
        )

    def _failed_after_credit(self, conn: Connection, row: DbRow, pre: Prefetched, reason: str) -> Outcome:
        """A failure reported for a payment we credited: Stripe's current word decides. A stale event
        (the payment did succeed) changes nothing; a real failure takes the credits back."""
        if pre.intent_status is None:
            return Outcome("rejected", "could not confirm the payment's status with Stripe", row.organization_id)
        if pre.intent_status == "succeeded":
            return Outcome("duplicate", "stale: the payment succeeded", row.organization_id)
        return reverse_payment(
            self.ledger, conn, row, reason=reason, metadata={"stripePaymentIntentId": row.payment_intent_id}
        )

    def _purchase_of(self, conn: Connection, payment_intent: str | None) -> DbRow | None:
        if not payment_intent:
            return None
        t = table_of(CheckoutSession)
        return conn.execute(
            sa.select(t).where(
                t.c.provider == "stripe",
                t.c.payment_intent_id == payment_intent,
                t.c.status.in_(("completed", "reversed")),
            )
        ).first()

    def _refund(self, conn: Connection, event_id: str, kind: str, obj: Mapping[str, Any], pre: Prefetched) -> Outcome:
        intent = obj.get("payment_intent")
        row = self._purchase_of(conn, intent)
        if row is None:  # the purchase may not be credited yet: evaluated again when it is
            return Outcome("waiting", "no credited purchase of ours matches this charge yet", None, intent)
        if kind == "charge.refund.updated":
            if obj.get("status") not in ("failed", "canceled"):
                return Outcome("ignored", None, row.organization_id)
            if pre.refunded_cents is None:  # evaluated again when Stripe delivers it again (it retries)
                return Outcome(
                    "pending", "the charge's refunded total could not be read from Stripe", row.organization_id
                )
        authoritative = pre.refunded_cents is not None
        cents = pre.refunded_cents if pre.refunded_cents is not None else _int(obj.get("amount_refunded"))
        return refund_to(
            self.ledger,
            conn,
            row,
            cents,
            key=f"stripe-refund:{event_id}",
            authoritative=authoritative,
            metadata={
                "stripeChargeId": obj.get("id") if kind == "charge.refunded" else obj.get("charge"),
                "stripePaymentIntentId": intent,
            },
        )

    def _dispute(self, conn: Connection, kind: str, obj: Mapping[str, Any]) -> Outcome:
        intent = obj.get("payment_intent")
        row = self._purchase_of(conn, intent)
        if row is None:
            return Outcome("waiting", "no credited purchase of ours matches this dispute yet", None, intent)
        dispute_id, status = str(obj.get("id")), str(obj.get("status") or "")
        meta = {"stripePaymentIntentId": intent, "stripeChargeId": obj.get("charge"), "reason": obj.get("reason")}
        if kind == "charge.dispute.closed":
            closed = close_dispute(self.ledger, conn, row, dispute_id=dispute_id, status=status, metadata=meta)
            if closed is not None:
                return closed
        elif kind != "charge.dispute.created":
            return Outcome("ignored", None, row.organization_id)
        outcome = open_dispute(
            self.ledger,
            conn,
            row,
            dispute_id=dispute_id,
            amount_cents=_int(obj.get("amount")),
            status=status if kind == "charge.dispute.closed" else "open",
            metadata=meta,
        )
        if outcome.detail == "disputed":
            org = row.organization_id
            amount = Decimal(_int(obj.get("amount"))) / 100
            after_commit(conn, lambda: self._email_dispute(org, dispute_id, amount))
        return outcome

    def _email_dispute(self, organization_id: int, dispute_id: str, amount: Decimal) -> None:
        from ..services import get_notifier

        get_notifier(self.purchases.engine).notify_owners(
            organization_id,
            "payment_disputed",
            f"dispute:{dispute_id}",
            "A payment was disputed: its credits were taken back",
            f"Your bank disputed a payment of ${amount:,.2f}. Its credits (and their volume bonus) were taken "
            "back, which may leave the balance below zero, and auto-recharge is paused. If the dispute is "
            "decided in your favour, the credits return.\n",
        )


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return -1
