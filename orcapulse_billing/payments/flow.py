"""What every payment provider's purchase flow shares: choosing what to buy, and crediting a payment
of ours to the ledger exactly once.

Framework-free. Provider calls happen outside database transactions. The row we wrote for a payment
(`CheckoutSession`) is the only thing that can be credited: one conditional UPDATE moves it to
`completed` in the same transaction as its ledger postings, so whichever path gets there first (the
caller, a webhook, the reconcile job) credits it and every other path finds it done.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

from .. import webhooks
from ..config import Settings
from ..ledger import DbRow, Ledger, PostedEntry, Posting, find_entry, get_account
from ..models import CheckoutSession, CreditSource, EntryType
from ..money import MoneyError, fmt4, parse_amount
from ..pricing import CUSTOM_MAX, CUSTOM_MIN, PACKAGES
from ..receipts import CardLabel, issue_receipt

UNITS_PER_CENT = 100  # ledger units are ten-thousandths of a credit; 1 credit = 100 cents
PROVIDER_NAMES = {"stripe": "Stripe", "lemonsqueezy": "Lemon Squeezy"}
# the states of a payment of ours that a confirmed payment may still credit
CREDITABLE = ("open", "failed", "charging", "unknown")


def table_of(model: type[SQLModel]) -> sa.Table:
    """A table model's Core `Table`, i.e. its `__table__` (which SQLModel does not declare to type checkers)."""
    table = sa.inspect(model).local_table
    if not isinstance(table, sa.Table):
        raise TypeError(f"{model.__name__} is not mapped to a table")
    return table


def now() -> datetime:
    return datetime.now(UTC)


def after_commit(conn: Connection, action: Callable[[], object]) -> None:
    """Runs `action` once the caller's transaction has committed (emails: never inside the write
    transaction, which on SQLite holds the one writer lock). See `run_after_commit`."""
    conn.info.setdefault("after_commit", []).append(action)


def run_after_commit(conn: Connection) -> list[Callable[[], object]]:
    return list(conn.info.pop("after_commit", []))


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


def credit_postings(
    account_id: int,
    credits_units: int,
    bonus_units: int,
    *,
    provider: str,
    key: str,
    label: str,
    metadata: Mapping[str, Any],
    actor_user_id: int | None,
    actor_ip: str | None,
    package_id: str | None,
    auto_recharge: bool = False,
    checkout_session_id: int | None = None,
) -> list[Posting]:
    provider_name = PROVIDER_NAMES.get(provider, provider)
    meta = {**metadata, "provider": provider, "package": package_id}
    if auto_recharge:
        meta["autoRecharge"] = True
    postings = [
        Posting(
            account_id,
            EntryType.purchase,
            Decimal(credits_units) / 10_000,
            f"Credit top-up via {provider_name} - {label}",
            source=CreditSource.purchase,
            metadata=meta,
            actor_user_id=actor_user_id,
            actor_ip=actor_ip,
            idempotency_key=key,
            checkout_session_id=checkout_session_id,  # its grants: taken first by its refunds
        )
    ]
    if bonus_units:
        postings.append(
            Posting(
                account_id,
                EntryType.bonus,
                Decimal(bonus_units) / 10_000,
                f"Volume bonus - {label} package",
                source=CreditSource.bonus,
                metadata=meta,
                actor_user_id=actor_user_id,
                actor_ip=actor_ip,
                idempotency_key=f"{key}:bonus",
                checkout_session_id=checkout_session_id,
            )
        )
    return postings


def credit_key(row: DbRow, provider_reference: str | None) -> str:
    """The ledger key of a payment's credit. Saved-card charges are keyed by their PaymentIntent (what
    the provider and the reconcile job know them by); hosted checkouts by their session or order."""
    if row.mode in ("quick", "auto") and provider_reference:
        return f"{row.provider}:{provider_reference}"
    return f"{row.provider}:{row.provider_id}"


def credit_checkout(
    ledger: Ledger,
    conn: Connection,
    row: DbRow,
    *,
    provider_reference: str | None,
    metadata: Mapping[str, Any],
    auto_recharge: bool = False,
    card: CardLabel | None = None,
) -> list[PostedEntry] | None:
    """Marks our payment completed and posts its purchase (and bonus), once: None if it already was.
    In the same transaction it issues the purchase's receipt (`card`: the card charged, when known),
    so a receipt exists exactly when the credit was posted. The credited reference is remembered on
    the connection, so events waiting for it run next."""
    t = table_of(CheckoutSession)
    values: dict[str, Any] = {"status": "completed", "completed_at": now(), "error": None}
    if provider_reference:
        values["payment_intent_id"] = provider_reference
        if row.mode in ("quick", "auto"):
            values["provider_id"] = provider_reference  # was the attempt's placeholder
    claimed = conn.execute(sa.update(t).where(t.c.id == row.id, t.c.status.in_(CREDITABLE)).values(**values)).rowcount
    if not claimed:
        return None
    account_id = get_account(conn, organization_id=row.organization_id).id
    entries = [
        ledger.post_in(conn, posting)
        for posting in credit_postings(
            account_id,
            row.amount,
            row.bonus,
            provider=row.provider,
            key=credit_key(row, provider_reference),
            label=f"${Decimal(row.amount) / 10_000:,.2f}",
            metadata={**metadata, **({"purchaseKey": row.idempotency_key} if row.idempotency_key else {})},
            actor_user_id=row.user_id,
            actor_ip=row.actor_ip,
            package_id=row.package_id,
            auto_recharge=auto_recharge or row.mode == "auto",
            checkout_session_id=row.id,
        )
    ]
    issue_receipt(conn, row, entry_id=entries[0].id, provider_reference=provider_reference, card=card)
    webhooks.emit(
        conn,
        row.organization_id,
        "credits.added",
        {
            "organization_id": row.organization_id,
            "purchase_id": row.id,
            "provider": row.provider,
            "provider_reference": provider_reference,
            "auto_recharge": auto_recharge or row.mode == "auto",
            "amount": fmt4(int(row.amount)),
            "bonus": fmt4(int(row.bonus or 0)),
            "credits": fmt4(sum(e.amount_units for e in entries)),
            "balance": fmt4(entries[-1].balance_after_units),
            "ledger_entry_ids": [e.id for e in entries],
        },
        key=f"purchase:{row.id}",
    )
    if provider_reference:
        conn.info.setdefault("credited_references", []).append(provider_reference)
        if row.mode == "auto":  # the charge auto-recharge paused for was confirmed: it resumes
            from .auto_recharge_policy import resume_confirmed

            resume_confirmed(conn, row.organization_id, provider_reference)
    return entries


def credited_entries(conn: Connection, row: Any) -> list[PostedEntry]:
    """The entries a completed payment of ours posted (for an answer to a retried request)."""
    account_id = get_account(conn, organization_id=row.organization_id).id
    key = credit_key(row, row.payment_intent_id)
    found = [find_entry(conn, account_id, k) for k in (key, f"{key}:bonus")]
    return [e for e in found if e is not None]


def payment_mismatch(row: Any, amount_cents: int, currency: Any) -> str | None:
    """Why a payment cannot credit our row: the amount or the currency differs (None: it matches)."""
    if amount_cents * UNITS_PER_CENT != row.amount:
        return f"paid {amount_cents} cents for a purchase of {row.amount // UNITS_PER_CENT} cents"
    if str(currency or "").lower() != row.currency:
        return f"paid in {currency!r}, our purchase is in {row.currency!r}"
    return None


def feature_of(row: Any) -> str:
    """The `feature` a saved-card charge's entries carry."""
    return "auto_recharge" if row.mode == "auto" else "quick_purchase"


def hold_for_operator(conn: Connection, row_id: int, reason: str) -> None:
    """A charge that cannot be credited safely leaves the in-flight states (which block the
    organization's next purchase and would be retried) for `needs_attention`."""
    t = table_of(CheckoutSession)
    conn.execute(
        sa.update(t)
        .where(t.c.id == row_id, t.c.status.in_(("charging", "unknown")))
        .values(status="needs_attention", error=reason[:300])
    )


def bonus_share(row: DbRow, credits_units: int) -> int:
    """The part of a purchase's bonus that goes with `credits_units` of its credits: in proportion,
    rounded down, and all of it with all of the credits."""
    if row.amount <= 0 or credits_units <= 0:
        return 0
    if credits_units >= row.amount:
        return int(row.bonus)
    return int(row.bonus) * credits_units // int(row.amount)
