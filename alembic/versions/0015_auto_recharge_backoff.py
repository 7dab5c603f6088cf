"""Auto-recharge that behaves: the backoff after a decline (`next_attempt_at`, with the decline's
reason), and a charge waiting for the owner's 3-D Secure confirmation (its PaymentIntent and the
provider's page to confirm it on). How many charges were made in the last 24 hours is counted from
the auto-recharge payments themselves (`checkout_session`, mode `auto`), not stored.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-02
"""

import sqlalchemy as sa

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("auto_recharge_policy", schema=None) as batch_op:
        batch_op.add_column(sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("last_error", sa.String(length=300), nullable=True))
        batch_op.add_column(sa.Column("action_payment_intent_id", sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column("action_url", sa.String(length=2000), nullable=True))
    # the auto-recharge charges of the last 24 hours, counted before each new one
    op.create_index(
        "ix_checkout_session_org_mode_created", "checkout_session", ["organization_id", "mode", "created_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_checkout_session_org_mode_created", table_name="checkout_session")
    with op.batch_alter_table("auto_recharge_policy", schema=None) as batch_op:
        batch_op.drop_column("action_url")
        batch_op.drop_column("action_payment_intent_id")
        batch_op.drop_column("last_error")
        batch_op.drop_column("next_attempt_at")
