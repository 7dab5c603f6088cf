"""Organizations, users, memberships and API keys: the identity side the ledger hangs off.

Plain Python over SQLModel; the CLI, the seed and (later) the REST API and Reflex states call it.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from .db import as_utc, writer
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
    with Session(engine) as session:
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


# -- API keys and their scopes ---------------------------------------------------------------------

USAGE_WRITE = "usage:write"
SCOPES = {USAGE_WRITE: "report usage (spends the organization's credits)"}
# What each role's keys may carry. A key's scopes are also cut to this at every use, for the role
# its user has in the organization the key acts in (a demoted user's key loses them at once).
ROLE_SCOPES: dict[str, frozenset[str]] = {
    Role.owner.value: frozenset({USAGE_WRITE}),
    Role.admin.value: frozenset({USAGE_WRITE}),
    Role.member.value: frozenset(),
}
_ROLE_RANK = {Role.owner.value: 0, Role.admin.value: 1, Role.member.value: 2}


class UnknownUser(AccountsError):
    """No such user (in that organization)."""


class UnknownApiKey(AccountsError):
    """No such key (in that organization)."""


class ScopeNotAllowed(AccountsError):
    """A scope the user's role may not hold."""


class NotPermitted(AccountsError):
    """The maker may not act on keys of a user with more rights (an admin and an owner's keys)."""


def _check_maker(maker_role: str | None, role: str | None, what: str) -> None:
    if maker_role is not None and _ROLE_RANK.get(role or "", 9) < _ROLE_RANK.get(maker_role, 9):
        raise NotPermitted(f"an {maker_role} cannot {what} of an {role}")


def parse_scopes(values: Iterable[str]) -> tuple[str, ...]:
    """Scopes from repeated values and comma lists ("usage:write", "a,b"): known ones only, sorted, once each."""
    found = {part.strip() for value in values for part in value.split(",") if part.strip()}
    unknown = sorted(found - SCOPES.keys())
    if unknown:
        raise AccountsError(f"unknown scope {unknown[0]!r}; known scopes: {', '.join(SCOPES)}")
    return tuple(sorted(found))


def scopes_of(text: str | None) -> frozenset[str]:
    """The scopes stored in an api_key row (comma-separated text)."""
    return frozenset(part for part in (text or "").split(",") if part)


def allowed_scopes(role: str | None) -> frozenset[str]:
    return ROLE_SCOPES.get(role or "", frozenset())


@dataclass(frozen=True)
class NewApiKey:
    key: str  # shown once, never stored
    prefix: str
    id: int
    scopes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ApiKeyInfo:
    id: int
    prefix: str
    name: str | None
    email: str
    role: str | None  # the user's role in the organization listed
    organization_id: int | None
    scopes: tuple[str, ...]
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


def _roles(conn, user_id: int) -> dict[int, str]:
    rows = conn.execute(
        sa.select(Membership.organization_id, Membership.role).where(Membership.user_id == user_id)
    ).all()
    return {r.organization_id: r.role for r in rows}


def create_api_key(
    engine: Engine,
    email: str,
    scopes: Iterable[str] = (),
    *,
    organization_id: int | None = None,
    name: str | None = None,
    maker_role: str | None = None,
    actor_user_id: int | None = None,
    ip: str | None = None,
) -> NewApiKey:
    """A new key for the user, printed once and stored as a hash. With `organization_id` the key is
    bound to that organization (the user must belong to it); without, it acts in any of the user's
    organizations. A scope the user's role does not allow is refused (ScopeNotAllowed): for an
    unbound key, the user's highest role; the role where the key acts is checked again at every use.
    With `maker_role`, a key that would act with more rights than its maker's is refused (NotPermitted)."""
    from .auth import audit  # auth builds on this module

    email = (email or "").strip().lower()
    wanted = parse_scopes(scopes)
    name = (name or "").strip() or None
    if name is not None and len(name) > 100:
        raise AccountsError("a key's name is at most 100 characters")
    now = datetime.now(UTC)
    with writer(engine).begin() as conn:
        user = conn.execute(sa.select(User.id, User.email).where(User.email == email)).first()
        roles = _roles(conn, user.id) if user else {}
        if user is None or (organization_id is not None and organization_id not in roles):
            raise UnknownUser(f"no user {email!r}" + (" in this organization" if organization_id else ""))
        if organization_id is not None:
            role: str | None = roles[organization_id]
        else:
            role = min(roles.values(), key=lambda r: _ROLE_RANK.get(r, 9), default=None)
        _check_maker(maker_role, role, "make keys")
        refused = [scope for scope in wanted if scope not in allowed_scopes(role)]
        if refused:
            who = f"{email} is a {role}" if role else f"{email} belongs to no organization"
            raise ScopeNotAllowed(f"{who}: only owners' and admins' keys may have {refused[0]}")
        key = API_KEY_PREFIX + secrets.token_urlsafe(32)
        prefix = key[: len(API_KEY_PREFIX) + 6]
        key_id = conn.execute(
            sa.insert(ApiKey).values(
                user_id=user.id,
                organization_id=organization_id,
                name=name,
                scopes=",".join(wanted),
                prefix=prefix,
                key_hash=hash_api_key(key),
                created_at=now,
            )
        ).inserted_primary_key[0]
        audit(
            conn,
            "api_key_created",
            organization_id=organization_id,
            user_id=actor_user_id,
            ip=ip,
            key_id=key_id,
            prefix=prefix,
            email=email,
            scopes=list(wanted),
            via="api" if actor_user_id is not None else "cli",
        )
    return NewApiKey(key, prefix, key_id, wanted)


def _keys_of(organization_id: int):
    """The keys that can act in an organization: bound to it, or unbound keys of its members."""
    members = sa.select(Membership.user_id).where(Membership.organization_id == organization_id)
    return sa.or_(
        ApiKey.organization_id == organization_id,
        sa.and_(ApiKey.organization_id.is_(None), ApiKey.user_id.in_(members)),
    )


def list_api_keys(engine: Engine, organization_id: int, *, key_id: int | None = None) -> list[ApiKeyInfo]:
    """The keys that can act in the organization (revoked ones too), newest first; never a secret."""
    query = (
        sa.select(
            ApiKey.id,
            ApiKey.prefix,
            ApiKey.name,
            ApiKey.organization_id,
            ApiKey.scopes,
            ApiKey.created_at,
            ApiKey.last_used_at,
            ApiKey.revoked_at,
            User.email,
            Membership.role,
        )
        .join(User, User.id == ApiKey.user_id)
        .outerjoin(
            Membership, sa.and_(Membership.user_id == ApiKey.user_id, Membership.organization_id == organization_id)
        )
        .where(_keys_of(organization_id))
        .order_by(ApiKey.id.desc())
    )
    if key_id is not None:
        query = query.where(ApiKey.id == key_id)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return [
        ApiKeyInfo(
            id=r.id,
            prefix=r.prefix,
            name=r.name,
            email=r.email,
            role=r.role,
            organization_id=r.organization_id,
            scopes=tuple(sorted(scopes_of(r.scopes))),
            created_at=as_utc(r.created_at),
            last_used_at=as_utc(r.last_used_at) if r.last_used_at else None,
            revoked_at=as_utc(r.revoked_at) if r.revoked_at else None,
        )
        for r in rows
    ]


def revoke_api_key(
    engine: Engine,
    organization_id: int,
    key_id: int,
    *,
    maker_role: str | None = None,
    actor_user_id: int | None = None,
    ip: str | None = None,
) -> bool:
    """Revoke a key that can act in the organization. False when it was revoked already (nothing
    written); UnknownApiKey when there is no such key there; with `maker_role`, NotPermitted for the
    key of a user with more rights."""
    from .auth import audit

    with writer(engine).begin() as conn:
        row = conn.execute(
            sa.select(ApiKey.id, ApiKey.prefix, ApiKey.revoked_at, Membership.role)
            .outerjoin(
                Membership,
                sa.and_(Membership.user_id == ApiKey.user_id, Membership.organization_id == organization_id),
            )
            .where(ApiKey.id == key_id, _keys_of(organization_id))
        ).first()
        if row is None:
            raise UnknownApiKey(f"no API key {key_id} in this organization")
        _check_maker(maker_role, row.role, "revoke the keys")
        if row.revoked_at is not None:
            return False
        conn.execute(sa.update(ApiKey).where(ApiKey.id == key_id).values(revoked_at=datetime.now(UTC)))
        audit(
            conn,
            "api_key_revoked",
            organization_id=organization_id,
            user_id=actor_user_id,
            ip=ip,
            key_id=key_id,
            prefix=row.prefix,
        )
    return True
