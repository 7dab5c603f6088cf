"""Stripe purchases: customers and saved cards, hosted checkout, and one-click charges of a saved card
(quick purchase, auto-recharge) that can be retried and reconciled.

A saved-card charge is recorded before the provider call (status `charging`) with the idempotency key
every retry reuses and that its PaymentIntent carries in its metadata (`orcapulse_key`), so a charge
whose answer is lost (a timeout, a crash between charge and posting) is found and credited exactly
once by whichever comes first: the retry, the `payment_intent.succeeded` webhook, or the reconcile job.
Provider events are applied by `stripe_events`.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import col

from ..auth import Principal, audit
from ..config import Settings
from ..ledger import DbRow, Ledger, PostedEntry
from ..models import CheckoutSession, Organization, PaymentMethod
from ..money import to_units
from ..receipts import CardLabel
from .events import needs_attention
from .flow import (
    Choice,
    PurchaseError,
    credit_checkout,
    credited_entries,
    feature_of,
    hold_for_operator,
    now,
    payment_mismatch,
    run_after_commit,
    table_of,
)
from .stripe_gateway import Card, PaymentError, StripeGateway

log = logging.getLogger(__name__)
PENDING_MESSAGE = (
    "payment being confirmed: the payment provider did not answer in time. The credits appear as soon as "
    "it confirms the payment; retrying with the same idempotency key never charges twice"
)
STALE_CHARGING = timedelta(minutes=2)  # a `charging` row older than this lost its process


class StripePurchases:
    def __init__(self, engine: Engine, ledger: Ledger, gateway: StripeGateway, settings: Settings):
        self.engine, self.ledger, self.gateway, self.settings = engine, ledger, gateway, settings

    # -- customers and cards ------------------------------------------------------------------

    def customer_for(self, organization_id: int) -> str:
        with self.engine.connect() as conn:
            name, existing = conn.execute(
                sa.select(col(Organization.name), col(Organization.stripe_customer_id)).where(
                    col(Organization.id) == organization_id
                )
            ).one()
        if existing:
            return existing
        # the key names this organization in this installation (ids restart in every database)
        tag = hashlib.sha256(f"{organization_id}:{name}".encode()).hexdigest()[:16]
        customer_id = self.gateway.create_customer(organization_id, name, f"customer-org-{organization_id}-{tag}")
        with self.ledger.transaction() as conn:
            conn.execute(
                sa.update(Organization)
                .where(col(Organization.id) == organization_id, col(Organization.stripe_customer_id).is_(None))
                .values(stripe_customer_id=customer_id)
            )
            stored = conn.execute(
                sa.select(col(Organization.stripe_customer_id)).where(col(Organization.id) == organization_id)
            ).scalar()
        if stored is None:  # not reached: the row now holds our customer id or a concurrent request's
            raise RuntimeError(f"organization {organization_id} has no Stripe customer")
        return stored

    def cards(self, organization_id: int) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(PaymentMethod)
                .where(col(PaymentMethod.organization_id) == organization_id)
                .order_by(col(PaymentMethod.is_default).desc(), col(PaymentMethod.id).desc())
            ).all()
        return [dict(r._mapping) for r in rows]

    def save_card(self, organization_id: int, card: Card, *, make_default: bool = True) -> None:
        with self.ledger.transaction() as conn:
            self._save_card_in(conn, organization_id, card, make_default)

    def remove_card(
        self, organization_id: int, card_id: str, *, user_id: int | None = None, ip: str | None = None
    ) -> None:
        """Detaches the card at Stripe and forgets it; audited with who removed it and from where."""
        t = table_of(PaymentMethod)
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(t).where(t.c.organization_id == organization_id, t.c.provider_id == card_id)
            ).first()
        if row is None:
            raise PurchaseError("not_found", "no such saved card in this organization", status=404)
        self.gateway.detach(card_id)
        with self.ledger.transaction() as conn:
            conn.execute(sa.delete(t).where(t.c.id == row.id))
            if row.is_default:  # the newest remaining card becomes the default
                newest = conn.execute(
                    sa.select(t.c.id).where(t.c.organization_id == organization_id).order_by(t.c.id.desc()).limit(1)
                ).scalar()
                if newest:
                    conn.execute(sa.update(t).where(t.c.id == newest).values(is_default=True))
            audit(
                conn,
                "payment_method_removed",
                organization_id=organization_id,
                user_id=user_id,
                ip=ip,
                card=f"{row.brand} {row.last4}",
            )

    # -- hosted checkout ------------------------------------------------------------------------

    def start_checkout(
        self,
        principal: Principal,
        choice: Choice | None,
        *,
        ip: str | None,
        success_url: str,
        cancel_url: str,
        request_key: str,
    ) -> dict[str, str]:
        """Creates the Stripe Checkout Session (payment mode, or setup mode when `choice` is None)
        and our record of it; returns its id and hosted URL."""
        customer_id = self.customer_for(principal.organization_id)
        mode = "payment" if choice else "setup"
        metadata = {
            "organization_id": str(principal.organization_id),
            "user_id": str(principal.user_id),
            "package_id": (choice.package_id or "custom") if choice else "",
            "mode": mode,
        }
        session_id, url = self.gateway.create_checkout(
            mode=mode,
            customer_id=customer_id,
            amount_cents=choice.cents if choice else None,
            product_name=f"OrcaPulse credits - {choice.label}" if choice else "Save a card",
            metadata=metadata,
            client_reference_id=f"org_{principal.organization_id}",
            success_url=success_url,
            cancel_url=cancel_url,
            idempotency_key=f"checkout-{principal.organization_id}-{request_key}",
        )
        with self.ledger.transaction() as conn:
            exists = conn.execute(
                sa.select(col(CheckoutSession.id)).where(
                    col(CheckoutSession.provider) == "stripe", col(CheckoutSession.provider_id) == session_id
                )
            ).scalar()
            if not exists:
                conn.execute(
                    sa.insert(CheckoutSession).values(
                        organization_id=principal.organization_id,
                        user_id=principal.user_id,
                        provider="stripe",
                        provider_id=session_id,
                        mode=mode,
                        package_id=choice.package_id if choice else None,
                        amount=to_units(choice.credits) if choice else 0,
                        bonus=to_units(choice.bonus) if choice else 0,
                        status="open",
                        url=url,
                        actor_ip=ip,
                        created_at=now(),
                    )
                )
        return {"session_id": session_id, "url": url}

    def checkout_status(self, organization_id: int, session_id: str) -> str | None:
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(col(CheckoutSession.status)).where(
                    col(CheckoutSession.organization_id) == organization_id,
                    col(CheckoutSession.provider) == "stripe",
                    col(CheckoutSession.provider_id) == session_id,
                )
            ).scalar()

    @staticmethod
    def _save_card_in(conn: Connection, organization_id: int, card: Card, make_default: bool = True) -> None:
        t = table_of(PaymentMethod)
        exists = conn.execute(
            sa.select(t.c.id, t.c.is_default).where(t.c.provider == "stripe", t.c.provider_id == card.id)
        ).first()
        has_default = conn.execute(
            sa.select(t.c.id).where(t.c.organization_id == organization_id, t.c.is_default.is_(True))
        ).first()
        make_default = make_default or has_default is None
        if make_default:
            conn.execute(sa.update(t).where(t.c.organization_id == organization_id).values(is_default=False))
        if exists:
            if make_default:
                conn.execute(sa.update(t).where(t.c.id == exists.id).values(is_default=True))
            return
        conn.execute(
            sa.insert(t).values(
                organization_id=organization_id,
                provider="stripe",
                provider_id=card.id,
                brand=card.brand,
                last4=card.last4,
                exp_month=card.exp_month,
                exp_year=card.exp_year,
                is_default=make_default,
                created_at=now(),
            )
        )

    # -- one-click purchase -----------------------------------------------------------------------

    def quick_purchase(
        self,
        principal: Principal,
        choice: Choice,
        *,
        payment_method_id: str | None,
        request_key: str,
        ip: str | None,
        auto_recharge: bool = False,
    ) -> list[PostedEntry]:
        """Charges a saved card and credits it. `request_key` identifies the purchase intent: a double
        click or a retry with it charges at most once and answers with the same entries."""
        cards = self.cards(principal.organization_id)
        card = (
            next((c for c in cards if c["provider_id"] == payment_method_id), None)
            if payment_method_id
            else next((c for c in cards if c["is_default"]), None)
        )
        if card is None:
            raise PurchaseError(
                "no_saved_card" if not payment_method_id else "not_found",
                "no saved card to charge: add one through checkout first",
                status=400 if not payment_method_id else 404,
            )
        mode = "auto" if auto_recharge else "quick"
        key = f"{mode}-{principal.organization_id}-{request_key}"
        row, mine = self._attempt(principal, choice, key, mode, ip)
        if row.status == "completed":
            with self.engine.connect() as conn:
                return credited_entries(conn, row)
        if row.status in ("failed", "reversed", "expired"):
            raise PaymentError("card_declined", row.error or "the payment did not succeed")
        if row.status == "charging" and not mine and row.created_at_age < STALE_CHARGING:
            raise PurchaseError("payment_in_progress", "this purchase is already being processed", status=409)
        customer_id = self.customer_for(principal.organization_id)
        try:
            charge = self.gateway.charge_saved_card(
                customer_id=customer_id,
                payment_method_id=card["provider_id"],
                amount_cents=choice.cents,
                metadata={
                    "organization_id": str(principal.organization_id),
                    "user_id": str(principal.user_id),
                    "package_id": choice.package_id or "custom",
                    "orcapulse_purpose": "auto_recharge" if auto_recharge else "quick_purchase",
                    "orcapulse_key": key,
                },
                idempotency_key=key,
            )
        except PaymentError as exc:
            if exc.retryable:  # no answer: the charge may or may not exist; never say "nothing was charged"
                self._mark(row.id, "unknown", "no answer from the payment provider")
                raise PaymentError("payment_pending", PENDING_MESSAGE, retryable=True) from None
            # a charge awaiting authentication keeps its PaymentIntent: confirming it later credits this row
            self._mark(row.id, "failed", exc.message, payment_intent_id=exc.payment_intent_id)
            raise
        entries = self.settle_charge(
            row.id,
            charge.payment_intent_id,
            amount_cents=charge.amount_cents,
            currency=charge.currency,
            feature=feature_of(row),
            card=CardLabel(str(card["brand"]), str(card["last4"])),
        )
        if entries is None:
            raise PaymentError("payment_pending", PENDING_MESSAGE, retryable=True)
        # this request's own charge, even when its webhook posted it a moment earlier: not a replay
        return [replace(e, replayed=False) for e in entries]

    def _attempt(
        self, principal: Principal, choice: Choice, key: str, mode: str, ip: str | None
    ) -> tuple[_Attempt, bool]:
        """Our record of the charge, written before the provider call (True), or the existing one for
        this key (False)."""
        t = table_of(CheckoutSession)
        mine = False
        with self.ledger.transaction() as conn:
            try:
                with conn.begin_nested():
                    conn.execute(
                        sa.insert(t).values(
                            organization_id=principal.organization_id,
                            user_id=principal.user_id,
                            provider="stripe",
                            provider_id=f"attempt:{key}",
                            idempotency_key=key,
                            mode=mode,
                            package_id=choice.package_id,
                            amount=to_units(choice.credits),
                            bonus=to_units(choice.bonus),
                            currency="usd",
                            status="charging",
                            actor_ip=ip,
                            created_at=now(),
                        )
                    )
                mine = True
            except IntegrityError:
                pass
            row = conn.execute(sa.select(t).where(t.c.provider == "stripe", t.c.idempotency_key == key)).first()
        if row is None:  # the insert met the one-in-flight index: another charge is unsettled
            raise PurchaseError(
                "payment_in_progress",
                "another payment for this organization is still being confirmed; try again in a moment",
                status=409,
            )
        if row.amount != to_units(choice.credits) or row.package_id != choice.package_id:
            raise PurchaseError(
                "idempotency_key_reused", "this idempotency key was used for a different purchase", status=409
            )
        return _Attempt(row), mine

    def _mark(self, row_id: int, status: str, error: str, *, payment_intent_id: str | None = None) -> None:
        t = table_of(CheckoutSession)
        values: dict[str, Any] = {"status": status, "error": error[:300]}
        if payment_intent_id:
            values["payment_intent_id"] = payment_intent_id
        with self.ledger.transaction() as conn:
            conn.execute(sa.update(t).where(t.c.id == row_id, t.c.status.in_(("charging", "unknown"))).values(**values))

    def settle_charge(
        self,
        row_id: int,
        payment_intent_id: str,
        *,
        amount_cents: int,
        currency: str,
        feature: str,
        card: CardLabel | None = None,
    ) -> list[PostedEntry] | None:
        """Credits a succeeded charge of ours once; the entries (also when another path credited it
        first), or None when it cannot be credited safely (it then awaits an operator). `card`: the
        saved card charged, for the receipt (the reconcile job does not know it)."""
        t = table_of(CheckoutSession)
        with self.ledger.transaction() as conn:
            row = conn.execute(sa.select(t).where(t.c.id == row_id).with_for_update()).one()
            entries = None
            mismatch = payment_mismatch(row, amount_cents, currency) if row.status != "completed" else None
            if mismatch:
                needs_attention(
                    conn,
                    self.notify_operator,
                    provider="stripe",
                    reference=payment_intent_id,
                    reason="amount_mismatch",
                    detail=mismatch,
                    organization_id=row.organization_id,
                    amount_cents=amount_cents,
                    currency=currency,
                )
                hold_for_operator(conn, row.id, mismatch)
            elif row.status != "completed":
                entries = credit_checkout(
                    self.ledger,
                    conn,
                    row,
                    provider_reference=payment_intent_id,
                    metadata={"feature": feature, "stripePaymentIntentId": payment_intent_id},
                    card=card,
                )
            if entries is None and row.status == "completed":
                entries = credited_entries(conn, row)
            actions = run_after_commit(conn)
        for action in actions:
            action()
        return entries

    def notify_operator(self, dedupe_key: str, subject: str) -> None:
        from ..services import get_notifier

        get_notifier(self.engine).notify_operator(dedupe_key, subject, subject + "\n")

    # -- webhook events -----------------------------------------------------------------------------

    def handle_event(self, event: Mapping[str, Any], payload: str | None = None) -> str:
        """Applies one verified Stripe event; returns what happened. Replays change nothing."""
        from .stripe_events import StripeEvents

        return StripeEvents(self).handle(event, payload)


class _Attempt:
    """A payment row with its age (a `charging` row whose process died is retried, not waited on)."""

    def __init__(self, row: DbRow):
        self._row = row

    def __getattr__(self, name: str) -> Any:
        return getattr(self._row, name)

    @property
    def created_at_age(self) -> timedelta:
        created: datetime = self._row.created_at
        if created.tzinfo is None:  # SQLite returns naive UTC
            created = created.replace(tzinfo=now().tzinfo)
        return now() - created
