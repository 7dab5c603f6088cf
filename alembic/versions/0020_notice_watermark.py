"""The notice sweep's watermark per account (`notice_watermark`): how far the sweep has judged the
account's entries for low-balance crossings and documents whose emails and webhooks a worker never
wrote. Existing accounts start at their last entry, so the sweep never judges history that predates it.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-04
"""

import sqlalchemy as sa

from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "notice_watermark",
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("judged_seq", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["credit_account.id"]),
        sa.PrimaryKeyConstraint("account_id"),
    )
    op.execute(
        "INSERT INTO notice_watermark (account_id, judged_seq, updated_at) "
        "SELECT id, transaction_count, CURRENT_TIMESTAMP FROM credit_account"
    )


def downgrade() -> None:
    op.drop_table("notice_watermark")
