"""API key scopes: `usage:write` to report usage; existing keys keep what their user's role allowed
(keys of owners and admins get `usage:write`, members' keys none: read only). Keys also get an
optional name and, when made through the REST API, the organization they were made in.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-09
"""

import sqlalchemy as sa

from alembic import context, op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# Keys whose user is an owner or admin of some organization. At use the key's scopes are also
# limited to what the user's role in the organization it acts in allows (auth.principal_for_api_key).
_WRITERS = "user_id IN (SELECT user_id FROM membership WHERE role IN ('owner', 'admin'))"


def upgrade() -> None:
    with op.batch_alter_table("api_key", schema=None) as batch_op:
        batch_op.add_column(sa.Column("organization_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("name", sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column("scopes", sa.String(length=200), server_default="", nullable=False))
        batch_op.create_index(batch_op.f("ix_api_key_organization_id"), ["organization_id"], unique=False)
        batch_op.create_foreign_key("fk_api_key_organization_id", "organization", ["organization_id"], ["id"])

    op.execute(f"UPDATE api_key SET scopes = 'usage:write' WHERE {_WRITERS}")
    if context.is_offline_mode():
        return
    conn = op.get_bind()
    writers = conn.execute(sa.text(f"SELECT count(*) FROM api_key WHERE revoked_at IS NULL AND {_WRITERS}")).scalar()
    readers = conn.execute(sa.text("SELECT count(*) FROM api_key WHERE revoked_at IS NULL AND scopes = ''")).scalar()
    if writers or readers:
        print(
            f"upgrade note (0009, API key scopes): {writers} active key(s) of owners and admins got usage:write "
            f"and keep reporting usage; {readers} active key(s) of members got no scope and are now read only "
            "(usage reports with them answer 403 insufficient_scope; create a usage:write key with "
            "`orcapulse-billing create-api-key EMAIL --scope usage:write` for an owner or admin)"
        )


def downgrade() -> None:
    with op.batch_alter_table("api_key", schema=None) as batch_op:
        batch_op.drop_constraint("fk_api_key_organization_id", type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_api_key_organization_id"))
        batch_op.drop_column("scopes")
        batch_op.drop_column("name")
        batch_op.drop_column("organization_id")
