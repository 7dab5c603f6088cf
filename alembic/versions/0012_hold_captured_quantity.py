"""A captured hold remembers the quantity it was captured with, so that a capture sent again with another
quantity is a conflict even when the first cost less than a unit and posted no entry

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02
"""

import sqlalchemy as sa

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("credit_hold", schema=None) as batch_op:
        batch_op.add_column(sa.Column("captured_quantity", sa.String(length=40), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("credit_hold", schema=None) as batch_op:
        batch_op.drop_column("captured_quantity")
