"""Identity and access: organizations, users and their roles, API keys, sign-in sessions, the audit log."""

from __future__ import annotations

from datetime import datetime
from enum import Enum

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from .common import JsonType, _ts


class Role(str, Enum):
    owner = "owner"
    admin = "admin"
    member = "member"


class Organization(SQLModel, table=True):
    __tablename__ = "organization"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(sa_column=sa.Column(sa.String(200), nullable=False, unique=True))
    created_at: datetime = _ts(nullable=False)
    stripe_customer_id: str | None = Field(default=None, sa_column=sa.Column(sa.String(100), nullable=True))


class User(SQLModel, table=True):
    __tablename__ = "app_user"

    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(sa_column=sa.Column(sa.String(320), nullable=False, unique=True))
    password_hash: str = Field(sa_column=sa.Column(sa.String(200), nullable=False))
    created_at: datetime = _ts(nullable=False)


class Membership(SQLModel, table=True):
    __tablename__ = "membership"
    __table_args__ = (sa.UniqueConstraint("user_id", "organization_id", name="uq_membership_user_org"),)

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(sa_column=sa.Column(sa.Integer, sa.ForeignKey("app_user.id"), nullable=False))
    organization_id: int = Field(
        sa_column=sa.Column(sa.Integer, sa.ForeignKey("organization.id"), nullable=False, index=True)
    )
    role: str = Field(sa_column=sa.Column(sa.String(16), nullable=False))
    created_at: datetime = _ts(nullable=False)


class ApiKey(SQLModel, table=True):
    """A key acts as its user, with that user's role. `scopes` (comma-separated, see
    accounts.SCOPES) adds what a role alone does not allow a key: `usage:write` reports usage.
    A key made through the REST API is bound to the organization it was made in; one made by the
    CLI without `--org` acts in any of its user's organizations."""

    __tablename__ = "api_key"

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(sa_column=sa.Column(sa.Integer, sa.ForeignKey("app_user.id"), nullable=False, index=True))
    organization_id: int | None = Field(
        default=None, sa_column=sa.Column(sa.Integer, sa.ForeignKey("organization.id"), nullable=True, index=True)
    )
    name: str | None = Field(default=None, sa_column=sa.Column(sa.String(100), nullable=True))
    scopes: str = Field(default="", sa_column=sa.Column(sa.String(200), nullable=False, server_default=""))
    prefix: str = Field(sa_column=sa.Column(sa.String(16), nullable=False))
    key_hash: str = Field(sa_column=sa.Column(sa.String(64), nullable=False, unique=True))
    created_at: datetime = _ts(nullable=False)
    last_used_at: datetime | None = _ts(nullable=True)
    revoked_at: datetime | None = _ts(nullable=True)


class AuthSession(SQLModel, table=True):
    """A signed-in browser. Only the token's hash is stored; the token rides in an HttpOnly cookie."""

    __tablename__ = "auth_session"

    id: int | None = Field(default=None, primary_key=True)
    token_hash: str = Field(sa_column=sa.Column(sa.String(64), nullable=False, unique=True))
    user_id: int = Field(sa_column=sa.Column(sa.Integer, sa.ForeignKey("app_user.id"), nullable=False, index=True))
    organization_id: int = Field(sa_column=sa.Column(sa.Integer, sa.ForeignKey("organization.id"), nullable=False))
    created_at: datetime = _ts(nullable=False)
    expires_at: datetime = _ts(nullable=False)
    revoked_at: datetime | None = _ts(nullable=True)
    ip: str | None = Field(default=None, sa_column=sa.Column(sa.String(45), nullable=True))
    user_agent: str | None = Field(default=None, sa_column=sa.Column(sa.String(300), nullable=True))


class AuditLog(SQLModel, table=True):
    """Settings changes and sign-ins: who, what, when, from where. (Credit changes carry the same on
    their ledger entries.)"""

    __tablename__ = "audit_log"
    __table_args__ = (sa.Index("ix_audit_log_org_created", "organization_id", "created_at"),)

    id: int | None = Field(default=None, primary_key=True)
    organization_id: int | None = Field(
        default=None, sa_column=sa.Column(sa.Integer, sa.ForeignKey("organization.id"), nullable=True)
    )
    user_id: int | None = Field(
        default=None, sa_column=sa.Column(sa.Integer, sa.ForeignKey("app_user.id"), nullable=True)
    )
    action: str = Field(sa_column=sa.Column(sa.String(64), nullable=False))
    details: dict = Field(default_factory=dict, sa_column=sa.Column(JsonType, nullable=False))
    ip: str | None = Field(default=None, sa_column=sa.Column(sa.String(45), nullable=True))
    created_at: datetime = _ts(nullable=False)
