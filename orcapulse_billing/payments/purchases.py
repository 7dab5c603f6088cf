"""The purchase flow: packages and custom amounts, hosted checkout, saved cards, one-click
purchases and provider events, posting to the ledger exactly once.

Framework-free. Provider calls happen outside database transactions; each credit is posted with
an idempotency key derived from what the provider (or the caller) identifies it by, and the
checkout row we created is the only thing an event can credit, with amounts checked against it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, TypeAlias

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import SQLModel, col

from ..auth import Principal, audit
from ..config import Settings
from ..ledger import DbRow, Ledger, PostedEntry, Posting, find_entry, get_account
from ..models import CheckoutSession, CreditSource, EntryType, Organization, PaymentMethod, WebhookEvent
from ..money import MoneyError, parse_amount, to_units
from ..pricing import CUSTOM_MAX, CUSTOM_MIN, PACKAGES
from .stripe_gateway import Card, PaymentError, StripeGateway

log = logging.getLogger(__name__)
UNITS_PER_CENT = 100  # ledger units are ten-thousandths of a credit; 1 credit = 100 cents

# What applying a provider event did: outcome, detail, and the organization it concerned.
EventOutcome: TypeAlias = tuple[str, str | None, int | None]


def table_of(model: type[SQLModel]) -> sa.Table:
    """A table model's Core `Table`, i.e. its `__table__` (which SQLModel does not declare to type checkers)."""
    table = sa.inspect(model).local_table
    if not isinstance(table, sa.Table):
        raise TypeError(f"{model.__name__} is not mapped to a table")
    return table


class PurchaseError(ValueError):
    """Bad purchase input (unknown package, amount out of range, no saved card...)."""

    def __init__(self, code: str, message: str, status: int = 400):
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


@dataclass(frozen=True)
class Choice:
    package_id: str | None
    price: Decimal  # USD, whole cents
    credits: Decimal
    bonus: Decimal
    bonus_percent: Decimal

    @property
    def cents(self) -> int:
        return int(self.price * 100)

    @property
    def label(self) -> str:
        return f"${self.price:,.2f}"


def choose(settings: Settings, package_id: str | None = None, amount: str | Decimal | None = None) -> Choice:
    """A package, or a custom amount from $1 to $100 in whole cents; exactly one of them."""
    if (package_id is None) == (amount is None):
        raise PurchaseError("invalid_request", "give either package_id or amount")
    if amount is None:  # so package_id is not None
        package = next((p for p in PACKAGES if p.id == package_id), None)
        if package is None:
            raise PurchaseError("invalid_request", f"unknown package {package_id!r}")
        percent = settings.package_bonus_percent.get(package.id, Decimal(0))
        bonus = (package.credits * percent / 100).quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP)
        return Choice(package.id, package.price, package.credits, bonus, percent)
    try:
        value = parse_amount(amount, max_places=2)
    except MoneyError as exc:
        raise PurchaseError("invalid_amount", f"amount: {exc} (whole cents)") from None
    if not CUSTOM_MIN <= value <= CUSTOM_MAX:
        raise PurchaseError(
            "invalid_amount", f"a custom amount must be between ${CUSTOM_MIN:,.2f} and ${CUSTOM_MAX:,.2f}"
        )
    return Choice(None, value, value, Decimal(0), Decimal(0))


def return_urls(backend_base: str) -> tuple[str, str]:
    """Where the checkout window lands: the backend's return page, which closes the window."""
    base = backend_base.rstrip("/")
    return (
        f"{base}/api/credits/checkout-return?status=success&session_id={{CHECKOUT_SESSION_ID}}",
        f"{base}/api/credits/checkout-return?status=cancel",
    )


def _now() -> datetime:
    return datetime.now(UTC)


def _credit_postings(
    account_id: int,
    choice_credits: int,
    bonus: int,
    *,
    provider: str,
    key: str,
    label: str,
    metadata: Mapping[str, Any],
    actor_user_id: int | None,
    actor_ip: str | None,
    package_id: str | None,
    auto_recharge: bool = False,
) -> list[Posting]:
    provider_name = PROVIDER_NAMES.get(provider, provider)
    meta = {**metadata, "provider": provider, "package": package_id}
    if auto_recharge:
        meta["autoRecharge"] = True
    postings = [
        Posting(
            account_id,
            EntryType.purchase,
            Decimal(choice_credits) / 10_000,
            f"Credit top-up via {provider_name} - {label}",
            source=CreditSource.purchase,
            metadata=meta,
            actor_user_id=actor_user_id,
            actor_ip=actor_ip,
            idempotency_key=key,
        )
    ]
    if bonus:
        postings.append(
            Posting(
                account_id,
                EntryType.bonus,
                Decimal(bonus) / 10_000,
                f"Volume bonus - {label} package",
                source=CreditSource.bonus,
                metadata=meta,
                actor_user_id=actor_user_id,
                actor_ip=actor_ip,
                idempotency_key=f"{key}:bonus",
            )
        )
    return postings


PROVIDER_NAMES = {"stripe": "Stripe", "lemonsqueezy": "Lemon Squeezy"}


def event_seen(engine: Engine, provider: str, event_id: str) -> bool:
    with engine.connect() as conn:
        return (
            conn.execute(
                sa.select(col(WebhookEvent.id)).where(
                    col(WebhookEvent.provider) == provider, col(WebhookEvent.event_id) == event_id
                )
            ).first()
            is not None
        )


def process_event(
    ledger: Ledger, provider: str, event_id: str, kind: str, apply: Callable[[Connection], EventOutcome]
) -> str:
    """Records the event once and applies it in the same transaction: a replay, or a concurrent
    duplicate delivery (which meets the unique index), changes nothing."""
    with ledger.transaction() as conn:
        try:
            with conn.begin_nested():
                conn.execute(
                    sa.insert(WebhookEvent).values(
                        provider=provider, event_id=event_id, type=kind, outcome="received", received_at=_now()
                    )
                )
        except IntegrityError:
            return "replay"
        outcome, detail, org_id = apply(conn)
        conn.execute(
            sa.update(WebhookEvent)
            .where(col(WebhookEvent.provider) == provider, col(WebhookEvent.event_id) == event_id)
            .values(outcome=outcome, detail=detail, organization_id=org_id)
        )
    log.info("%s event %s %s: %s %s", provider, event_id, kind, outcome, detail or "")
    return outcome


def credit_checkout(
    ledger: Ledger, conn: Connection, row: DbRow, *, provider_reference: str | None, metadata: Mapping[str, Any]
) -> bool:
    """Marks our checkout completed and posts its purchase (and bonus), once: False if it already was."""
    t = table_of(CheckoutSession)
    claimed = conn.execute(
        sa.update(t)
        .where(t.c.id == row.id, t.c.status.in_(("open", "failed")))
        .values(status="completed", completed_at=_now(), payment_intent_id=provider_reference)
    ).rowcount
    if not claimed:
        return False
    account_id = get_account(conn, organization_id=row.organization_id).id
    for posting in _credit_postings(
        account_id,
        row.amount,
        row.bonus,
        provider=row.provider,
        key=f"{row.provider}:{row.provider_id}",
        label=f"${Decimal(row.amount) / 10_000:,.2f}",
        metadata=metadata,
        actor_user_id=row.user_id,
        actor_ip=row.actor_ip,
        package_id=row.package_id,
    ):
        ledger.post_in(conn, posting)
    return True


def refund_checkout(
    ledger: Ledger, conn: Connection, row: DbRow, refunded_cents: int, *, key: str, metadata: Mapping[str, Any]
) -> EventOutcome:
    """Posts what was refunded since the last refund event (the provider reports the running total),
    never more than was bought."""
    refunded_total = min(refunded_cents * UNITS_PER_CENT, row.amount)
    delta = refunded_total - row.refunded
    if delta <= 0:
        return "duplicate", "refund already recorded", row.organization_id
    conn.execute(sa.update(CheckoutSession).where(col(CheckoutSession.id) == row.id).values(refunded=refunded_total))
    account_id = get_account(conn, organization_id=row.organization_id).id
    name = PROVIDER_NAMES.get(row.provider, row.provider)
    ledger.post_in(
        conn,
        Posting(
            account_id,
            EntryType.refund,
            -Decimal(delta) / 10_000,
            f"Refund of credit top-up via {name} - ${Decimal(delta) / 10_000:,.2f}",
            metadata={"provider": row.provider, "feature": "refund", **metadata},
            idempotency_key=f"{key}:{refunded_total}",
            # the money went back to the card: the credits go, even if that takes the balance below zero
            floor=Decimal(-(10**9)),
        ),
    )
    return "processed", "refunded", row.organization_id


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
        customer_id = self.gateway.create_customer(organization_id, name, f"customer-org-{organization_id}")
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
                        created_at=_now(),
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
        key = f"quick:{request_key}"
        with self.engine.connect() as conn:
            account_id = get_account(conn, organization_id=principal.organization_id).id

        def postings_for(pi: str) -> list[Posting]:
            return _credit_postings(
                account_id,
                to_units(choice.credits),
                to_units(choice.bonus),
                provider="stripe",
                key=key,
                label=choice.label,
                metadata={
                    "feature": "auto_recharge" if auto_recharge else "quick_purchase",
                    "stripePaymentIntentId": pi,
                },
                actor_user_id=principal.user_id,
                actor_ip=ip,
                package_id=choice.package_id,
                auto_recharge=auto_recharge,
            )

        # A retry of a request that already went through returns its entries without charging again
        # (Stripe's idempotency key would also return the same PaymentIntent).
        done = self._entries_for_key(account_id, key)
        if done:
            return done
        customer_id = self.customer_for(principal.organization_id)
        charge = self.gateway.charge_saved_card(
            customer_id=customer_id,
            payment_method_id=card["provider_id"],
            amount_cents=choice.cents,
            metadata={
                "organization_id": str(principal.organization_id),
                "user_id": str(principal.user_id),
                "package_id": choice.package_id or "custom",
            },
            idempotency_key=f"quick-{principal.organization_id}-{request_key}",
        )
        with self.ledger.transaction() as conn:
            try:
                with conn.begin_nested():
                    conn.execute(
                        sa.insert(CheckoutSession).values(
                            organization_id=principal.organization_id,
                            user_id=principal.user_id,
                            provider="stripe",
                            provider_id=charge.payment_intent_id,
                            mode="quick",
                            package_id=choice.package_id,
                            amount=to_units(choice.credits),
                            bonus=to_units(choice.bonus),
                            status="completed",
                            payment_intent_id=charge.payment_intent_id,
                            actor_ip=ip,
                            created_at=_now(),
                            completed_at=_now(),
                        )
                    )
            except IntegrityError:
                pass  # the same PaymentIntent, recorded by a concurrent retry
            return [self.ledger.post_in(conn, p) for p in postings_for(charge.payment_intent_id)]

    def _entries_for_key(self, account_id: int, key: str) -> list[PostedEntry]:
        with self.engine.connect() as conn:
            found = [find_entry(conn, account_id, k) for k in (key, f"{key}:bonus")]
        return [e for e in found if e is not None]

    # -- webhook events -----------------------------------------------------------------------------

    def handle_event(self, event: Mapping[str, Any]) -> str:
        """Applies one verified Stripe event; returns what happened. Replays change nothing."""
        event_id, kind = event.get("id"), event.get("type", "")
        obj = (event.get("data") or {}).get("object") or {}
        if not event_id:
            return "ignored"
        if event_seen(self.engine, "stripe", event_id):
            return "replay"
        card = self._card_for(kind, obj)  # provider calls before the write transaction
        return process_event(self.ledger, "stripe", event_id, kind, lambda conn: self._apply(conn, kind, obj, card))

    def _card_for(self, kind: str, obj: Mapping[str, Any]) -> Card | None:
        """The card a completed checkout used, to save for later. Best effort for payments (the credit
        must not wait on it); an outage raises, so that Stripe delivers the event again."""
        try:
            if kind == "checkout.session.completed" and obj.get("mode") == "setup" and obj.get("setup_intent"):
                return self.gateway.card_from_setup_intent(obj["setup_intent"])
            if (
                kind in ("checkout.session.completed", "checkout.session.async_payment_succeeded")
                and obj.get("payment_status") == "paid"
                and obj.get("payment_intent")
            ):
                return self.gateway.card_from_payment_intent(obj["payment_intent"])
        except PaymentError as exc:
            if exc.retryable:
                raise
            log.warning("could not read the card of %s: %s", obj.get("id"), exc.message)
        return None

    def _apply(self, conn: Connection, kind: str, obj: Mapping[str, Any], card: Card | None) -> EventOutcome:
        t = table_of(CheckoutSession)
        if kind.startswith("checkout.session."):
            row = conn.execute(sa.select(t).where(t.c.provider == "stripe", t.c.provider_id == obj.get("id"))).first()
            if row is None:
                return "rejected", "unknown checkout session", None
            if (obj.get("metadata") or {}).get("organization_id") != str(row.organization_id):
                return "rejected", "organization does not match our session", row.organization_id
            if kind == "checkout.session.completed" and row.mode == "setup":
                if card is not None:
                    self._save_card_in(conn, row.organization_id, card)
                conn.execute(sa.update(t).where(t.c.id == row.id).values(status="completed", completed_at=_now()))
                return "processed", "card saved", row.organization_id
            if kind in ("checkout.session.completed", "checkout.session.async_payment_succeeded"):
                if obj.get("payment_status") != "paid":
                    return "pending", "payment not confirmed yet", row.organization_id
                if int(obj.get("amount_total") or -1) * UNITS_PER_CENT != row.amount:
                    return "rejected", "amount does not match our session", row.organization_id
                if not credit_checkout(
                    self.ledger,
                    conn,
                    row,
                    provider_reference=obj.get("payment_intent"),
                    metadata={
                        "feature": "checkout",
                        "stripeCheckoutSessionId": row.provider_id,
                        "stripePaymentIntentId": obj.get("payment_intent"),
                    },
                ):
                    return "duplicate", "already credited", row.organization_id
                if card is not None:
                    self._save_card_in(conn, row.organization_id, card, make_default=False)
                return "processed", "credited", row.organization_id
            if kind == "checkout.session.async_payment_failed":
                conn.execute(sa.update(t).where(t.c.id == row.id, t.c.status == "open").values(status="failed"))
                return "processed", "payment failed", row.organization_id
            if kind == "checkout.session.expired":
                conn.execute(sa.update(t).where(t.c.id == row.id, t.c.status == "open").values(status="expired"))
                return "processed", "expired", row.organization_id
            return "ignored", None, row.organization_id
        if kind == "charge.refunded":
            return self._refund(conn, obj)
        return "ignored", None, None

    def _refund(self, conn: Connection, charge: Mapping[str, Any]) -> EventOutcome:
        t = table_of(CheckoutSession)
        row = conn.execute(
            sa.select(t).where(
                t.c.provider == "stripe",
                t.c.payment_intent_id == charge.get("payment_intent"),
                t.c.status == "completed",
            )
        ).first()
        if row is None:
            return "rejected", "no purchase of ours matches this charge", None
        return refund_checkout(
            self.ledger,
            conn,
            row,
            int(charge.get("amount_refunded") or 0),
            key=f"stripe-refund:{charge.get('id')}",
            metadata={"stripeChargeId": charge.get("id"), "stripePaymentIntentId": charge.get("payment_intent")},
        )

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
                created_at=_now(),
            )
        )

    def failed_payments(self, organization_id: int) -> list[dict[str, Any]]:
        t = table_of(CheckoutSession)
        with self.engine.connect() as conn:
            return [
                dict(r._mapping)
                for r in conn.execute(
                    sa.select(t)
                    .where(t.c.organization_id == organization_id, t.c.status == "failed")
                    .order_by(t.c.id.desc())
                    .limit(5)
                )
            ]
