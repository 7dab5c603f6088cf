"""Money integrity: saved-card charges recorded before the call (idempotency key, status), disputes,
raw webhook events whose outcome can change, the needs-attention list, and exact usage remainders

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

import sqlalchemy as sa

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "attention_item",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("provider", sa.String(length=16), nullable=False),
        sa.Column("reference", sa.String(length=100), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("detail", sa.String(length=500), nullable=False),
        sa.Column("organization_id", sa.Integer(), nullable=True),
        sa.Column("amount_cents", sa.BigInteger(), nullable=True),
        sa.Column("currency", sa.String(length=3), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("provider", "reference", "reason", name="uq_attention_item_reference"),
    )
    op.create_table(
        "payment_dispute",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("provider", sa.String(length=16), nullable=False),
        sa.Column("dispute_id", sa.String(length=100), nullable=False),
        sa.Column("checkout_session_id", sa.Integer(), nullable=False),
        sa.Column("organization_id", sa.Integer(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("bonus", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["checkout_session_id"],
            ["checkout_session.id"],
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organization.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("provider", "dispute_id", name="uq_payment_dispute_provider_id"),
    )
    with op.batch_alter_table("payment_dispute", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_payment_dispute_checkout_session_id"), ["checkout_session_id"], unique=False
        )

    op.create_table(
        "usage_remainder",
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("operation", sa.String(length=40), nullable=False),
        sa.Column("remainder", sa.String(length=64), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["credit_account.id"],
        ),
        sa.PrimaryKeyConstraint("account_id", "operation"),
    )
    op.create_table(
        "usage_report",
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("idempotency_key", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["credit_account.id"],
        ),
        sa.PrimaryKeyConstraint("account_id", "idempotency_key"),
    )
    with op.batch_alter_table("checkout_session", schema=None) as batch_op:
        batch_op.add_column(sa.Column("currency", sa.String(length=3), server_default="usd", nullable=False))
        batch_op.add_column(sa.Column("idempotency_key", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("error", sa.String(length=300), nullable=True))
        batch_op.create_index("ix_checkout_session_payment_intent", ["payment_intent_id"], unique=False)
        batch_op.create_index("ix_checkout_session_status", ["status", "created_at"], unique=False)
        batch_op.create_unique_constraint("uq_checkout_session_idempotency_key", ["provider", "idempotency_key"])
        batch_op.create_index(
            "uq_checkout_session_one_in_flight",
            ["organization_id"],
            unique=True,
            sqlite_where=sa.text("status IN ('charging', 'unknown')"),
            postgresql_where=sa.text("status IN ('charging', 'unknown')"),
        )

    with op.batch_alter_table("webhook_event", schema=None) as batch_op:
        batch_op.add_column(sa.Column("reference", sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column("payload", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index("ix_webhook_event_waiting", ["outcome", "reference"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("webhook_event", schema=None) as batch_op:
        batch_op.drop_index("ix_webhook_event_waiting")
        batch_op.drop_column("updated_at")
        batch_op.drop_column("payload")
        batch_op.drop_column("reference")

    with op.batch_alter_table("checkout_session", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_checkout_session_one_in_flight",
            sqlite_where=sa.text("status IN ('charging', 'unknown')"),
            postgresql_where=sa.text("status IN ('charging', 'unknown')"),
        )
        batch_op.drop_constraint("uq_checkout_session_idempotency_key", type_="unique")
        batch_op.drop_index("ix_checkout_session_status")
        batch_op.drop_index("ix_checkout_session_payment_intent")
        batch_op.drop_column("error")
        batch_op.drop_column("idempotency_key")
        batch_op.drop_column("currency")

    op.drop_table("usage_report")
    op.drop_table("usage_remainder")
    with op.batch_alter_table("payment_dispute", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_payment_dispute_checkout_session_id"))

    op.drop_table("payment_dispute")
    op.drop_table("attention_item")
