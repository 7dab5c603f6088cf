"""Usage reports that charged nothing remember what they said, so that their key sent again with a
different report is refused as a conflict instead of answered as a replay

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""

import sqlalchemy as sa

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("usage_report", schema=None) as batch_op:
        batch_op.add_column(sa.Column("fingerprint", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("usage_report", schema=None) as batch_op:
        batch_op.drop_column("fingerprint")
