"""Credit grants (expiry and burn order), what each debit consumed, and holds for operations in
progress. Every existing positive balance becomes one grant (source `migrated`, spent last, no expiry),
so `balance == sum of grant remainders` (plus debt when negative) holds from the start.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02
"""

import sqlalchemy as sa

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "credit_grant",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("entry_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("priority", sa.SmallInteger(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("remaining", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("checkout_session_id", sa.Integer(), nullable=True),
        sa.Column("expiry_notified_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("expired_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("remaining >= 0 AND remaining <= amount", name="ck_credit_grant_remaining"),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["credit_account.id"],
        ),
        sa.ForeignKeyConstraint(
            ["checkout_session_id"],
            ["checkout_session.id"],
        ),
        sa.ForeignKeyConstraint(
            ["entry_id"],
            ["ledger_entry.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("credit_grant", schema=None) as batch_op:
        batch_op.create_index(
            "ix_credit_grant_burn_order", ["account_id", "priority", "expires_at", "id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_credit_grant_entry_id"), ["entry_id"], unique=False)

    op.create_table(
        "credit_hold",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("operation", sa.String(length=40), nullable=False),
        sa.Column("model", sa.String(length=64), nullable=True),
        sa.Column("estimated_quantity", sa.String(length=40), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("idempotency_key", sa.String(length=200), nullable=False),
        sa.Column("captured_entry_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("actor_user_id", sa.Integer(), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("settled_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["credit_account.id"],
        ),
        sa.ForeignKeyConstraint(
            ["captured_entry_id"],
            ["ledger_entry.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("account_id", "idempotency_key", name="uq_credit_hold_account_key"),
    )
    with op.batch_alter_table("credit_hold", schema=None) as batch_op:
        batch_op.create_index("ix_credit_hold_active", ["status", "expires_at"], unique=False)

    op.create_table(
        "grant_consumption",
        sa.Column("entry_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("grant_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["entry_id"],
            ["ledger_entry.id"],
        ),
        sa.ForeignKeyConstraint(
            ["grant_id"],
            ["credit_grant.id"],
        ),
        sa.PrimaryKeyConstraint("entry_id", "grant_id"),
    )
    with op.batch_alter_table("credit_account", schema=None) as batch_op:
        batch_op.add_column(sa.Column("held", sa.BigInteger(), server_default="0", nullable=False))

    # one grant per account for what it holds today
    op.execute(
        sa.text(
            "INSERT INTO credit_grant (account_id, source, priority, amount, remaining, created_at) "
            "SELECT id, 'migrated', 2, balance, balance, CURRENT_TIMESTAMP FROM credit_account WHERE balance > 0"
        )
    )


def downgrade() -> None:
    with op.batch_alter_table("credit_account", schema=None) as batch_op:
        batch_op.drop_column("held")

    op.drop_table("grant_consumption")
    with op.batch_alter_table("credit_hold", schema=None) as batch_op:
        batch_op.drop_index("ix_credit_hold_active")

    op.drop_table("credit_hold")
    with op.batch_alter_table("credit_grant", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_credit_grant_entry_id"))
        batch_op.drop_index("ix_credit_grant_burn_order")

    op.drop_table("credit_grant")
