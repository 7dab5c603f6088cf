"""Receipts and credit notes, and the billing profile they are made out to.

Every completed top-up gets a receipt in the transaction that credits it (payments.flow.credit_checkout),
so a receipt exists exactly when the credit was posted. A refund (and a payment reversed after it was
credited) gets a credit note that refers to the purchase's receipt, in the transaction that takes the
credits back. Chargebacks get none: the bank reversed the payment, we did not refund it (a won one
returns the credits, a lost one leaves the receipt standing for money we no longer have: the dispute
itself is the record).

Numbers: two series per deployment, receipts `R-000001`, `R-000002`... and credit notes `CN-000001`...,
each without gaps and never reused. A number is taken from its `document_counter` row with
`UPDATE ... SET last_number = last_number + 1 RETURNING` in the issuing transaction, as its last write:
the row lock queues concurrent issuers until the holder commits (PostgreSQL), SQLite has one writer, and
a rollback gives the number back. No database sequence (they skip numbers on rollback).

A document is immutable once issued: the billing name and address, amounts, payment method (brand and
last four only) and provider reference are copied onto its row, so a later edit of the billing profile
changes no old receipt and its PDF (receipt_pdf.py) is the same bytes whenever it is rendered.

Framework-free.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from .billing_profile import PROFILE_FIELDS, BillingDetails, get_profile, table_of
from .db import as_utc
from .models import DocumentCounter, PaymentMethod, Receipt

RECEIPT, CREDIT_NOTE = "receipt", "credit_note"
DOCUMENTED_TYPES = ("purchase", "refund")  # the ledger entry types a receipt or credit note belongs to
PREFIXES = {RECEIPT: "R-", CREDIT_NOTE: "CN-"}
TITLES = {RECEIPT: "Receipt", CREDIT_NOTE: "Credit note"}
PROVIDER_NAMES = {"stripe": "Stripe", "lemonsqueezy": "Lemon Squeezy"}
CARD_BRANDS = {
    "visa": "Visa",
    "mastercard": "Mastercard",
    "amex": "American Express",
    "discover": "Discover",
    "diners": "Diners Club",
    "jcb": "JCB",
    "unionpay": "UnionPay",
    "cartes_bancaires": "Cartes Bancaires",
}
_NUMBER = re.compile(r"(?i)(R|CN)-?0*([1-9][0-9]{0,17})")


# -- numbers ------------------------------------------------------------------------------------


def display_number(kind: str, number: int) -> str:
    """'R-000012', 'CN-000003'."""
    return f"{PREFIXES[kind]}{number:06d}"


def parse_number(text: str) -> tuple[str, int] | None:
    """'R-000012' (or 'r12', 'CN-3') -> (kind, number); None when it is not one."""
    match = _NUMBER.fullmatch(text.strip())
    if match is None:
        return None
    return (RECEIPT if match.group(1).upper() == "R" else CREDIT_NOTE), int(match.group(2))


def next_number(conn: Connection, series: str) -> int:
    """The next number of `series`, taken in the caller's transaction (see the module's docstring)."""
    t = table_of(DocumentCounter)
    number = conn.execute(
        sa.update(t).where(t.c.series == series).values(last_number=t.c.last_number + 1).returning(t.c.last_number)
    ).scalar()
    if number is None:
        raise RuntimeError(f"no document counter {series!r}: apply the migrations (orcapulse-billing init-db)")
    return int(number)


def fmt_price(units: int, currency: str = "usd") -> str:
    """'$1,000.00 USD', '-$30.00 USD' (whole cents: what was paid)."""
    value = (Decimal(units) / 10_000).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    return f"{'-' if value < 0 else ''}${abs(value):,.2f} {currency.upper()}"


def fmt_credits(units: int) -> str:
    """'1,100.00 credits' (4 places when there is a fraction of a cent)."""
    value = Decimal(units) / 10_000
    places = Decimal("0.01") if value == value.quantize(Decimal("0.01")) else Decimal("0.0001")
    return f"{value.quantize(places):,} credits"


# -- issuing ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CardLabel:
    """What a receipt may say about a card: its brand and last four digits, nothing else."""

    brand: str
    last4: str


def card_text(brand: str, last4: str) -> str:
    return f"{CARD_BRANDS.get(brand.lower(), brand.title())} ending in {last4}"


def describe(mode: str, package_id: str | None, amount: int) -> str:
    """The line a receipt prints for what was bought (alembic 0014 says the same for older purchases)."""
    if mode == "auto":
        return "Prepaid credits - auto-recharge"
    if package_id:
        return f"Prepaid credits - ${Decimal(amount) / 10_000:,.0f} package"
    return "Prepaid credits - custom amount"


def saved_card(conn: Connection, organization_id: int, payment_method_id: object) -> CardLabel | None:
    """The brand and last four of one of the organization's saved cards, by its provider id (as an
    event names it; anything but a non-empty string finds none)."""
    if not isinstance(payment_method_id, str) or not payment_method_id:
        return None
    t = table_of(PaymentMethod)
    row = conn.execute(
        sa.select(t.c.brand, t.c.last4).where(
            t.c.organization_id == organization_id, t.c.provider_id == payment_method_id
        )
    ).first()
    return CardLabel(str(row.brand), str(row.last4)) if row is not None else None


def _billing_columns(details: BillingDetails) -> dict[str, str]:
    return {f"billing_{k}" if k != "name" else "billing_name": v for k, v in details.as_dict().items()}


def issue_receipt(
    conn: Connection,
    purchase: Row[Any],
    *,
    entry_id: int | None,
    provider_reference: str | None,
    card: CardLabel | None,
) -> int:
    """The receipt of a purchase just credited (`purchase`: its checkout_session row), in the caller's
    transaction, numbered last (the counter's row lock is held only until the commit). Its id."""
    t = table_of(Receipt)
    existing = conn.execute(
        sa.select(t.c.id).where(t.c.checkout_session_id == purchase.id, t.c.kind == RECEIPT)
    ).scalar()
    if existing is not None:  # one per purchase, whatever path credits it
        return int(existing)
    details, _ = get_profile(conn, purchase.organization_id)
    provider = PROVIDER_NAMES.get(purchase.provider, purchase.provider)
    if card is not None:
        method = card_text(card.brand, card.last4)
    elif purchase.mode in ("quick", "auto"):
        method = f"Saved card via {provider}"
    elif purchase.provider == "stripe":
        method = "Card via Stripe Checkout"
    else:
        method = f"Paid via {provider} Checkout"
    values = {
        "kind": RECEIPT,
        "organization_id": purchase.organization_id,
        "checkout_session_id": purchase.id,
        "ledger_entry_id": entry_id,
        "description": describe(purchase.mode, purchase.package_id, int(purchase.amount)),
        "amount": int(purchase.amount),
        "bonus": int(purchase.bonus),
        "currency": str(purchase.currency),
        "provider": purchase.provider,
        "provider_reference": provider_reference or purchase.payment_intent_id or purchase.provider_id,
        "payment_method": method[:100],
        "payment_brand": card.brand[:32] if card else None,
        "payment_last4": card.last4[:4] if card else None,
        **_billing_columns(details),
        "issued_at": datetime.now(UTC).replace(microsecond=0),
    }
    values["number"] = next_number(conn, RECEIPT)
    return int(conn.execute(sa.insert(t).values(**values).returning(t.c.id)).scalar_one())


def issue_credit_note(
    conn: Connection,
    purchase: Row[Any],
    *,
    entry_id: int | None,
    amount: int,
    bonus: int,
    reason: str,
) -> int | None:
    """A credit note for `amount` units of the purchase's price refunded (and `bonus` units of its
    bonus taken back with them), referring to the purchase's receipt; in the caller's transaction,
    numbered last. Negative amounts: a refund that failed, cancelling (part of) an earlier note.
    None when nothing moved."""
    if amount == 0:
        return None
    t = table_of(Receipt)
    receipt = conn.execute(sa.select(t).where(t.c.checkout_session_id == purchase.id, t.c.kind == RECEIPT)).first()
    details, _ = get_profile(conn, purchase.organization_id)
    method = receipt.payment_method if receipt is not None else f"via {PROVIDER_NAMES.get(purchase.provider)}"
    referred = f" of receipt {display_number(RECEIPT, receipt.number)}" if receipt is not None else ""
    values = {
        "kind": CREDIT_NOTE,
        "organization_id": purchase.organization_id,
        "checkout_session_id": purchase.id,
        "refers_to_id": receipt.id if receipt is not None else None,
        "ledger_entry_id": entry_id,
        "reason": reason[:100],
        "description": f"{reason}{referred}"[:200],
        "amount": amount,
        "bonus": bonus,
        "currency": str(purchase.currency),
        "provider": purchase.provider,
        "provider_reference": purchase.payment_intent_id or purchase.provider_id,
        "payment_method": method[:100],
        "payment_brand": receipt.payment_brand if receipt is not None else None,
        "payment_last4": receipt.payment_last4 if receipt is not None else None,
        **_billing_columns(details),
        "issued_at": datetime.now(UTC).replace(microsecond=0),
    }
    values["number"] = next_number(conn, CREDIT_NOTE)
    return int(conn.execute(sa.insert(t).values(**values).returning(t.c.id)).scalar_one())


# -- reading ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Document:
    """A receipt or credit note as its row has it (money in units)."""

    id: int
    kind: str
    number: int
    organization_id: int
    checkout_session_id: int
    refers_to_id: int | None
    refers_to_number: str | None
    ledger_entry_id: int | None
    reason: str | None
    description: str
    amount: int
    bonus: int
    currency: str
    provider: str
    provider_reference: str | None
    payment_method: str
    billing: BillingDetails
    issued_at: datetime

    @property
    def display_number(self) -> str:
        return display_number(self.kind, self.number)

    @property
    def title(self) -> str:
        return TITLES[self.kind]

    @property
    def filename(self) -> str:
        return f"orcapulse-{self.kind.replace('_', '-')}-{self.display_number}.pdf"


def _document(row: Row[Any], refers_to_number: int | None) -> Document:
    return Document(
        id=row.id,
        kind=row.kind,
        number=int(row.number),
        organization_id=row.organization_id,
        checkout_session_id=row.checkout_session_id,
        refers_to_id=row.refers_to_id,
        refers_to_number=display_number(RECEIPT, refers_to_number) if refers_to_number is not None else None,
        ledger_entry_id=row.ledger_entry_id,
        reason=row.reason,
        description=row.description,
        amount=int(row.amount),
        bonus=int(row.bonus),
        currency=row.currency,
        provider=row.provider,
        provider_reference=row.provider_reference,
        payment_method=row.payment_method,
        billing=BillingDetails(**{name: getattr(row, f"billing_{name}") for name in PROFILE_FIELDS}),
        issued_at=as_utc(row.issued_at),
    )


def _documents(conn: Connection, where: Iterable[sa.ColumnElement[bool]], limit: int | None = None) -> list[Document]:
    t = table_of(Receipt)
    ref = t.alias("ref")
    query = (
        sa.select(t, ref.c.number.label("ref_number"))
        .select_from(t.outerjoin(ref, ref.c.id == t.c.refers_to_id))
        .where(*where)
        .order_by(t.c.issued_at.desc(), t.c.id.desc())
    )
    if limit is not None:
        query = query.limit(limit)
    return [_document(row, row.ref_number) for row in conn.execute(query)]


def get_document(conn: Connection, document_id: int, organization_id: int | None = None) -> Document | None:
    """One document by id; with `organization_id`, only if it is that organization's."""
    t = table_of(Receipt)
    where = [t.c.id == document_id]
    if organization_id is not None:
        where.append(t.c.organization_id == organization_id)
    found = _documents(conn, where)
    return found[0] if found else None


def find_by_number(conn: Connection, kind: str, number: int) -> Document | None:
    t = table_of(Receipt)
    found = _documents(conn, [t.c.kind == kind, t.c.number == number])
    return found[0] if found else None


def list_documents(
    conn: Connection, organization_id: int, *, limit: int = 100, kind: str | None = None, before: int | None = None
) -> list[Document]:
    """The organization's receipts and credit notes, newest first; `before`: only those listed after
    that document (the last of the previous page)."""
    t = table_of(Receipt)
    where = [t.c.organization_id == organization_id]
    if kind is not None:
        where.append(t.c.kind == kind)
    if before is not None:
        after = conn.execute(
            sa.select(t.c.issued_at, t.c.id).where(t.c.id == before, t.c.organization_id == organization_id)
        ).first()
        if after is None:
            return []
        where.append(
            sa.tuple_(t.c.issued_at, t.c.id)
            < sa.tuple_(sa.literal(after.issued_at, t.c.issued_at.type), sa.literal(after.id))
        )
    return _documents(conn, where, limit)


def documents_for_entries(conn: Connection, entry_ids: Iterable[int]) -> dict[int, tuple[int, str]]:
    """Ledger entry id -> (document id, its number) for the entries that have one (history rows)."""
    ids = sorted({int(i) for i in entry_ids})
    if not ids:
        return {}
    t = table_of(Receipt)
    rows = conn.execute(
        sa.select(t.c.ledger_entry_id, t.c.id, t.c.kind, t.c.number).where(t.c.ledger_entry_id.in_(ids))
    )
    return {int(r.ledger_entry_id): (int(r.id), display_number(r.kind, int(r.number))) for r in rows}
