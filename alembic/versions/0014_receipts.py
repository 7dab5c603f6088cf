"""Receipts and credit notes: a gapless number per series and deployment (`document_counter`), the
billing profile receipts are made out to, each document's copy of what it says (immutable), and email
attachments (a receipt's PDF goes out with the purchase email)

Completed purchases from before this revision get their receipts here, numbered in the order they were
completed, made out to the organization's name as it is now (no address), dated when they completed.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-02
"""

from decimal import Decimal

import sqlalchemy as sa

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
PROVIDER_NAMES = {"stripe": "Stripe", "lemonsqueezy": "Lemon Squeezy"}


def _address_columns(prefix: str) -> list[sa.Column]:
    return [
        sa.Column(f"{prefix}address_line1", sa.String(length=200), server_default="", nullable=False),
        sa.Column(f"{prefix}address_line2", sa.String(length=200), server_default="", nullable=False),
        sa.Column(f"{prefix}city", sa.String(length=100), server_default="", nullable=False),
        sa.Column(f"{prefix}region", sa.String(length=100), server_default="", nullable=False),
        sa.Column(f"{prefix}postal_code", sa.String(length=32), server_default="", nullable=False),
        sa.Column(f"{prefix}country", sa.String(length=100), server_default="", nullable=False),
        sa.Column(f"{prefix}tax_id", sa.String(length=64), server_default="", nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "billing_profile",
        sa.Column("organization_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        *_address_columns(""),
        sa.Column("updated_by_user_id", sa.Integer(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["organization_id"], ["organization.id"]),
        sa.ForeignKeyConstraint(["updated_by_user_id"], ["app_user.id"]),
        sa.PrimaryKeyConstraint("organization_id"),
    )
    counter = op.create_table(
        "document_counter",
        sa.Column("series", sa.String(length=16), nullable=False),
        sa.Column("last_number", sa.BigInteger(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("series"),
    )
    receipt = op.create_table(
        "receipt",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("number", sa.BigInteger(), nullable=False),
        sa.Column("organization_id", sa.Integer(), nullable=False),
        sa.Column("checkout_session_id", sa.Integer(), nullable=False),
        sa.Column("refers_to_id", sa.Integer(), nullable=True),
        sa.Column("ledger_entry_id", BigId, nullable=True),
        sa.Column("reason", sa.String(length=100), nullable=True),
        sa.Column("description", sa.String(length=200), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("bonus", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("provider", sa.String(length=16), nullable=False),
        sa.Column("provider_reference", sa.String(length=100), nullable=True),
        sa.Column("payment_method", sa.String(length=100), nullable=False),
        sa.Column("payment_brand", sa.String(length=32), nullable=True),
        sa.Column("payment_last4", sa.String(length=4), nullable=True),
        sa.Column("billing_name", sa.String(length=200), nullable=False),
        *_address_columns("billing_"),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["checkout_session_id"], ["checkout_session.id"]),
        sa.ForeignKeyConstraint(["ledger_entry_id"], ["ledger_entry.id"]),
        sa.ForeignKeyConstraint(["organization_id"], ["organization.id"]),
        sa.ForeignKeyConstraint(["refers_to_id"], ["receipt.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("kind", "number", name="uq_receipt_kind_number"),
        sa.UniqueConstraint("ledger_entry_id"),
    )
    op.create_index("ix_receipt_org_issued", "receipt", ["organization_id", "issued_at", "id"], unique=False)
    op.create_index(
        "uq_receipt_one_per_purchase",
        "receipt",
        ["checkout_session_id"],
        unique=True,
        sqlite_where=sa.text("kind = 'receipt'"),
        postgresql_where=sa.text("kind = 'receipt'"),
    )
    op.create_table(
        "email_attachment",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("email_id", sa.Integer(), nullable=False),
        sa.Column("filename", sa.String(length=200), nullable=False),
        sa.Column("content_type", sa.String(length=100), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["email_id"], ["email_outbox.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_email_attachment_email_id"), "email_attachment", ["email_id"], unique=False)
    issued = _backfill(op.get_bind(), receipt)
    op.bulk_insert(counter, [{"series": "receipt", "last_number": issued}, {"series": "credit_note", "last_number": 0}])


def _backfill(conn: sa.engine.Connection, receipt: sa.Table) -> int:
    """Receipts for the purchases completed before this revision, numbered 1..N in completion order."""
    rows = conn.execute(
        sa.text(
            "SELECT c.id, c.organization_id, c.provider, c.provider_id, c.mode, c.package_id, c.amount, c.bonus,"
            " c.currency, c.payment_intent_id, c.completed_at, c.created_at, o.name, a.id AS account_id"
            " FROM checkout_session c JOIN organization o ON o.id = c.organization_id"
            " JOIN credit_account a ON a.organization_id = c.organization_id"
            " WHERE c.status IN ('completed', 'reversed') AND c.amount > 0"
            " ORDER BY COALESCE(c.completed_at, c.created_at), c.id"
        ).columns(completed_at=sa.DateTime(timezone=True), created_at=sa.DateTime(timezone=True))
    ).all()
    number = 0
    for row in rows:
        reference = row.payment_intent_id if row.mode in ("quick", "auto") and row.payment_intent_id else None
        key = f"{row.provider}:{reference or row.provider_id}"
        entry_id = conn.execute(
            sa.text("SELECT id FROM ledger_entry WHERE account_id = :a AND idempotency_key = :k"),
            {"a": row.account_id, "k": key},
        ).scalar()
        if entry_id is None:
            continue  # never credited: no receipt
        number += 1
        name = PROVIDER_NAMES.get(row.provider, row.provider)
        hosted = row.mode not in ("quick", "auto")
        conn.execute(
            sa.insert(receipt).values(
                kind="receipt",
                number=number,
                organization_id=row.organization_id,
                checkout_session_id=row.id,
                ledger_entry_id=entry_id,
                description=_description(row.mode, row.package_id, row.amount),
                amount=row.amount,
                bonus=row.bonus,
                currency=row.currency,
                provider=row.provider,
                provider_reference=row.payment_intent_id or row.provider_id,
                payment_method=(
                    f"Saved card via {name}"
                    if not hosted
                    else ("Card via Stripe Checkout" if row.provider == "stripe" else f"Paid via {name} Checkout")
                ),
                billing_name=row.name,
                issued_at=row.completed_at or row.created_at,
            )
        )
    return number


def _description(mode: str, package_id: str | None, amount: int) -> str:
    """As orcapulse_billing.receipts.describe says it (kept here: a migration does not import app code)."""
    if mode == "auto":
        return "Prepaid credits - auto-recharge"
    if package_id:
        return f"Prepaid credits - ${Decimal(amount) / 10_000:,.0f} package"
    return "Prepaid credits - custom amount"


def downgrade() -> None:
    op.drop_index(op.f("ix_email_attachment_email_id"), table_name="email_attachment")
    op.drop_table("email_attachment")
    op.drop_index("uq_receipt_one_per_purchase", table_name="receipt")
    op.drop_index("ix_receipt_org_issued", table_name="receipt")
    op.drop_table("receipt")
    op.drop_table("document_counter")
    op.drop_table("billing_profile")
