"""Organizations, users, memberships and API keys: the identity side the ledger hangs off.

Plain Python over SQLModel; the CLI, the seed and (later) the REST API and Reflex states call it.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from .db import writer
from .ledger import Ledger, Posting
from .models import ApiKey, CreditAccount, CreditSource, EntryType, Membership, Organization, Role, User

_hasher = PasswordHasher()
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
API_KEY_PREFIX = "opb_"
WELCOME_DESCRIPTION = "Welcome credit - New organization bonus"


class AccountsError(ValueError):
    """Bad input to an identity operation (duplicate, unknown, malformed)."""


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def hash_api_key(key: str) -> str:
    # API keys carry 256 bits of randomness, so a fast hash is enough (no dictionary to attack).
    return hashlib.sha256(key.encode()).hexdigest()


def create_organization(
    engine: Engine, ledger: Ledger, name: str, *, welcome_credit: Decimal, created_at: datetime | None = None
) -> Organization:
    """Create the organization, its credit account and its welcome credit in one transaction."""
    name = (name or "").strip()
    if not name or len(name) > 200:
        raise AccountsError("organization name must be 1 to 200 characters")
    now = created_at or datetime.now(UTC)
    with ledger.transaction() as conn:
        with Session(bind=conn) as session:
            if session.exec(select(Organization).where(Organization.name == name)).first():
                raise AccountsError(f"organization {name!r} already exists")
            org = Organization(name=name, created_at=now)
            session.add(org)
            session.flush()
            account = CreditAccount(organization_id=org.id, created_at=now, updated_at=now)
            session.add(account)
            session.flush()
            session.expunge_all()
        if welcome_credit > 0:
            ledger.post_in(
                conn,
                Posting(
                    account_id=account.id,
                    type=EntryType.bonus,
                    source=CreditSource.welcome,
                    amount=welcome_credit,
                    description=WELCOME_DESCRIPTION,
                    idempotency_key="welcome",
                    created_at=now,
                ),
            )
    return org


def find_organization(engine: Engine, ref: str | int) -> Organization:
    """By numeric id or exact name."""
    with Session(writer(engine)) as session:
        org = None
        if isinstance(ref, int) or str(ref).isdigit():
            org = session.get(Organization, int(ref))
        if org is None:
            org = session.exec(select(Organization).where(Organization.name == str(ref))).first()
        if org is None:
            raise AccountsError(f"no organization {ref!r}")
        return org


def account_id_for(engine: Engine, organization_id: int) -> int:
    with engine.connect() as conn:
        account_id = conn.execute(
            sa.select(CreditAccount.id).where(CreditAccount.organization_id == organization_id)
        ).scalar()
    if account_id is None:
        raise AccountsError(f"organization {organization_id} has no credit account")
    return account_id


def add_user(
    engine: Engine, org: Organization, email: str, role: str, password: str | None = None
) -> tuple[User, str | None]:
    """Add a member to an organization, creating the user if new. Returns the user and, when a
    password was generated, that password (shown once)."""
    email = (email or "").strip().lower()
    if not _EMAIL.match(email):
        raise AccountsError(f"not an email address: {email!r}")
    try:
        role = Role(role).value
    except ValueError:
        raise AccountsError(f"role must be one of owner, admin, member (got {role!r})") from None
    generated = None
    now = datetime.now(UTC)
    with Session(writer(engine)) as session:
        user = session.exec(select(User).where(User.email == email)).first()
        if user is None:
            if password is None:
                password = generated = secrets.token_urlsafe(12)
            if len(password) < 8:
                raise AccountsError("password must be at least 8 characters")
            user = User(email=email, password_hash=hash_password(password), created_at=now)
            session.add(user)
            session.flush()
        elif password is not None:
            raise AccountsError(f"user {email} already exists; their password is unchanged")
        existing = session.exec(
            select(Membership).where(Membership.user_id == user.id, Membership.organization_id == org.id)
        ).first()
        if existing:
            raise AccountsError(f"{email} is already a member of {org.name!r} ({existing.role})")
        session.add(Membership(user_id=user.id, organization_id=org.id, role=role, created_at=now))
        session.commit()
        session.refresh(user)
        return user, generated


@dataclass(frozen=True)
class NewApiKey:
    key: str  # shown once, never stored
    prefix: str
    id: int


def create_api_key(engine: Engine, email: str) -> NewApiKey:
    email = (email or "").strip().lower()
    with Session(writer(engine)) as session:
        user = session.exec(select(User).where(User.email == email)).first()
        if user is None:
            raise AccountsError(f"no user {email!r}")
        key = API_KEY_PREFIX + secrets.token_urlsafe(32)
        row = ApiKey(
            user_id=user.id,
            prefix=key[: len(API_KEY_PREFIX) + 6],
            key_hash=hash_api_key(key),
            created_at=datetime.now(UTC),
        )
        session.add(row)
        session.commit()
        return NewApiKey(key=key, prefix=row.prefix, id=row.id)
