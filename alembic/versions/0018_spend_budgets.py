"""Spend budgets: owners' monthly budgets per organization, API key or member (`spend_budget`), their
spend per calendar month (`budget_spend`, moved in each usage posting's transaction) and the account's
`budgeted` flag, which keeps the posting path of accounts without budgets as it was

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-03
"""

import sqlalchemy as sa

from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("credit_account") as batch:
        batch.add_column(sa.Column("budgeted", sa.Boolean(), server_default=sa.false(), nullable=False))
    op.create_table(
        "spend_budget",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("organization_id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("target", sa.String(length=40), nullable=False),
        sa.Column("api_key_id", sa.Integer(), nullable=True),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("hard_stop", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("created_by_user_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["organization_id"], ["organization.id"]),
        sa.ForeignKeyConstraint(["account_id"], ["credit_account.id"]),
        sa.ForeignKeyConstraint(["api_key_id"], ["api_key.id"]),
        sa.ForeignKeyConstraint(["user_id"], ["app_user.id"]),
        sa.ForeignKeyConstraint(["created_by_user_id"], ["app_user.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("account_id", "target", name="uq_spend_budget_account_target"),
    )
    op.create_table(
        "budget_spend",
        sa.Column("budget_id", sa.Integer(), nullable=False),
        sa.Column("month", sa.String(length=7), nullable=False),
        sa.Column("spent", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("alerted", sa.Integer(), server_default="0", nullable=False),
        sa.ForeignKeyConstraint(["budget_id"], ["spend_budget.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("budget_id", "month"),
    )


def downgrade() -> None:
    op.drop_table("budget_spend")
    op.drop_table("spend_budget")
    with op.batch_alter_table("credit_account") as batch:
        batch.drop_column("budgeted")
