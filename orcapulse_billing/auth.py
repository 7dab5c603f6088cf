"""Sign-in sessions, API keys and roles. Plain Python: the REST API and the Reflex states both
resolve a `Principal` here and check its role on the server for every privileged action."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.cookies import CookieError, SimpleCookie

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from .accounts import allowed_scopes, hash_api_key, hash_password, scopes_of, verify_password
from .db import as_utc, writer
from .models import ApiKey, AuditLog, AuthSession, Membership, Role, User

SESSION_COOKIE = "opb_session"
# Verifying against a dummy hash when the email is unknown keeps both paths equally slow.
_DUMMY_HASH = hash_password("not-a-real-password")
_ROLE_ORDER = {Role.owner.value: 0, Role.admin.value: 1, Role.member.value: 2}


class AuthError(Exception):
    """Sign-in refused (wrong email or password, or no organization)."""


@dataclass(frozen=True)
class Principal:
    user_id: int
    email: str
    organization_id: int
    role: str
    via: str  # "session" | "api_key"
    # An API key's scopes (accounts.SCOPES) that the role allows in this organization; sessions: none.
    scopes: frozenset[str] = frozenset()
    api_key_id: int | None = None  # the key a request came with (spend budgets count usage per key)

    @property
    def is_owner(self) -> bool:
        return self.role == Role.owner.value

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _now() -> datetime:
    return datetime.now(UTC)


def _membership(conn, user_id: int, organization_id: int | None):
    rows = conn.execute(
        sa.select(Membership.organization_id, Membership.role).where(Membership.user_id == user_id)
    ).all()
    if organization_id is not None:
        rows = [r for r in rows if r.organization_id == organization_id]
    # A user in several organizations signs in to the one where they have the most rights.
    rows.sort(key=lambda r: (_ROLE_ORDER.get(r.role, 9), r.organization_id))
    return rows[0] if rows else None


def audit(conn, action: str, *, organization_id: int | None, user_id: int | None, ip: str | None, **details) -> None:
    conn.execute(
        sa.insert(AuditLog).values(
            organization_id=organization_id, user_id=user_id, action=action, details=details, ip=ip, created_at=_now()
        )
    )


def login(
    engine: Engine, email: str, password: str, *, ttl_hours: int, ip: str | None = None, user_agent: str | None = None
) -> tuple[str, Principal, datetime]:
    """Check the password and open a session. Returns the session token (for the cookie only),
    the principal and the expiry."""
    email = (email or "").strip().lower()
    # The password is checked outside any transaction (it is slow on purpose) and the writes are short
    # transactions of their own: on SQLite no sign-in holds the write lock while hashing, and the
    # audit row of a failed attempt is committed, not rolled back with the failure.
    with engine.connect() as conn:
        user = conn.execute(sa.select(User.id, User.email, User.password_hash).where(User.email == email)).first()
        member = _membership(conn, user.id, None) if user else None
    if not verify_password(user.password_hash if user else _DUMMY_HASH, password or "") or user is None:
        with writer(engine).begin() as conn:
            audit(conn, "login_failed", organization_id=None, user_id=user.id if user else None, ip=ip, email=email)
        raise AuthError("wrong email or password")
    if member is None:
        with writer(engine).begin() as conn:
            audit(conn, "login_refused", organization_id=None, user_id=user.id, ip=ip, reason="no organization")
        raise AuthError("this user belongs to no organization")
    token = secrets.token_urlsafe(32)
    expires = _now() + timedelta(hours=ttl_hours)
    with writer(engine).begin() as conn:
        conn.execute(
            sa.insert(AuthSession).values(
                token_hash=_token_hash(token),
                user_id=user.id,
                organization_id=member.organization_id,
                created_at=_now(),
                expires_at=expires,
                ip=ip,
                user_agent=(user_agent or "")[:300] or None,
            )
        )
        audit(conn, "login", organization_id=member.organization_id, user_id=user.id, ip=ip)
    return token, Principal(user.id, user.email, member.organization_id, member.role, "session"), expires


def logout(engine: Engine, token: str | None, *, ip: str | None = None) -> None:
    if not token:
        return
    with writer(engine).begin() as conn:
        row = conn.execute(
            sa.select(AuthSession.id, AuthSession.user_id, AuthSession.organization_id).where(
                AuthSession.token_hash == _token_hash(token), AuthSession.revoked_at.is_(None)
            )
        ).first()
        if row:
            conn.execute(sa.update(AuthSession).where(AuthSession.id == row.id).values(revoked_at=_now()))
            audit(conn, "logout", organization_id=row.organization_id, user_id=row.user_id, ip=ip)


def principal_for_session(engine: Engine, token: str | None) -> Principal | None:
    """The signed-in principal for a session token, or None (unknown, revoked, expired, or the
    membership is gone: roles are read fresh on every call, never trusted from the session)."""
    if not token:
        return None
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(AuthSession.user_id, AuthSession.organization_id, AuthSession.expires_at, User.email)
            .join(User, User.id == AuthSession.user_id)
            .where(AuthSession.token_hash == _token_hash(token), AuthSession.revoked_at.is_(None))
        ).first()
        if row is None or as_utc(row.expires_at) <= _now():
            return None
        member = _membership(conn, row.user_id, row.organization_id)
    if member is None:
        return None
    return Principal(row.user_id, row.email, row.organization_id, member.role, "session")


def principal_for_api_key(engine: Engine, key: str | None, organization_id: int | None = None) -> Principal | None:
    """API keys act as their user. A user in several organizations names one (X-Organization-Id); a
    key bound to an organization acts only there. The key's scopes are cut to what the user's role
    there allows, read fresh on every call (a member's key never reports usage)."""
    if not key:
        return None
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(ApiKey.id, ApiKey.user_id, ApiKey.organization_id, ApiKey.scopes, ApiKey.last_used_at, User.email)
            .join(User, User.id == ApiKey.user_id)
            .where(ApiKey.key_hash == hash_api_key(key), ApiKey.revoked_at.is_(None))
        ).first()
        if row is None:
            return None
        if row.organization_id is not None:
            if organization_id not in (None, row.organization_id):
                return None
            organization_id = row.organization_id
        member = _membership(conn, row.user_id, organization_id)
        if member is None:
            return None
    # "last used" to the minute: a write (and a disk flush) per request would cost more than the request
    # itself. A transaction of its own that only writes: on SQLite a read-then-write transaction cannot
    # take the write lock while another writer holds it ("database is locked"); a lone UPDATE waits.
    if row.last_used_at is None or as_utc(row.last_used_at) < _now() - timedelta(minutes=1):
        with writer(engine).begin() as conn:
            conn.execute(sa.update(ApiKey).where(ApiKey.id == row.id).values(last_used_at=_now()))
    scopes = scopes_of(row.scopes) & allowed_scopes(member.role)
    return Principal(row.user_id, row.email, member.organization_id, member.role, "api_key", scopes, row.id)


def session_token_from_cookie_header(header: str | None) -> str | None:
    if not header:
        return None
    try:
        jar = SimpleCookie(header)
    except CookieError:
        return None
    morsel = jar.get(SESSION_COOKIE)
    return morsel.value if morsel else None
