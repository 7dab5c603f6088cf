"""Per-kind sequence numbers and counters, and the daily usage rollup (fast filtered history and
usage summaries on big accounts). Backfills existing ledgers.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

import sqlalchemy as sa

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

KIND = (
    "CASE type WHEN 'purchase' THEN 'topup' WHEN 'bonus' THEN 'topup' WHEN 'usage' THEN 'usage' "
    "WHEN 'refund' THEN 'refund' ELSE 'adjustment' END"
)
COUNTERS = ("topup", "usage", "refund", "adjustment")


def upgrade() -> None:
    with op.batch_alter_table("credit_account") as batch:
        for kind in COUNTERS:
            batch.add_column(sa.Column(f"{kind}_count", sa.BigInteger(), server_default="0", nullable=False))
    with op.batch_alter_table("ledger_entry") as batch:
        batch.add_column(sa.Column("kind", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("kind_seq", sa.BigInteger(), nullable=True))
    op.execute(f"UPDATE ledger_entry SET kind = {KIND}")
    op.execute(
        "UPDATE ledger_entry SET kind_seq = numbered.n FROM ("
        " SELECT id, ROW_NUMBER() OVER (PARTITION BY account_id, kind ORDER BY seq) AS n FROM ledger_entry"
        ") AS numbered WHERE ledger_entry.id = numbered.id"
    )
    for kind in COUNTERS:
        op.execute(
            f"UPDATE credit_account SET {kind}_count = (SELECT COUNT(*) FROM ledger_entry "
            f"WHERE ledger_entry.account_id = credit_account.id AND ledger_entry.kind = '{kind}')"
        )
    with op.batch_alter_table("ledger_entry") as batch:
        batch.alter_column("kind", existing_type=sa.String(length=16), nullable=False)
        batch.alter_column("kind_seq", existing_type=sa.BigInteger(), nullable=False)
        batch.drop_index("ix_ledger_entry_account_type_seq")
        batch.create_unique_constraint("uq_ledger_entry_account_kind_seq", ["account_id", "kind", "kind_seq"])

    op.create_table(
        "usage_rollup",
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("category", sa.String(length=32), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["credit_account.id"]),
        sa.PrimaryKeyConstraint("account_id", "day", "category"),
    )
    day = (
        "date(created_at)" if op.get_bind().dialect.name == "sqlite" else "CAST(created_at AT TIME ZONE 'UTC' AS DATE)"
    )
    op.execute(
        f"INSERT INTO usage_rollup (account_id, day, category, amount, count) "
        f"SELECT account_id, {day}, COALESCE(category, 'other'), SUM(-amount), COUNT(*) "
        f"FROM ledger_entry WHERE kind = 'usage' GROUP BY account_id, {day}, COALESCE(category, 'other')"
    )


def downgrade() -> None:
    op.drop_table("usage_rollup")
    with op.batch_alter_table("ledger_entry") as batch:
        batch.drop_constraint("uq_ledger_entry_account_kind_seq", type_="unique")
        batch.create_index("ix_ledger_entry_account_type_seq", ["account_id", "type", "seq"])
        batch.drop_column("kind_seq")
        batch.drop_column("kind")
    with op.batch_alter_table("credit_account") as batch:
        for kind in COUNTERS:
            batch.drop_column(f"{kind}_count")
