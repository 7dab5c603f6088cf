"""Shared Reflex state: who is signed in.

Identity comes only from the server-set HttpOnly session cookie, read from the websocket
handshake (`router.headers.cookie`) and resolved against the database on every call (live
updates: at most LIVE_RECHECK seconds old); never from rx.Cookie, local storage or the tab's client
token, which the browser writes. The user and role live in backend-only vars (leading underscore);
the public copies are for display only.
"""

from __future__ import annotations

import asyncio
import time

import reflex as rx

from .auth import Principal, principal_for_session, session_token_from_cookie_header
from .db import get_engine


# A live update reaches every tab of an organization at once; each re-reading its session on the
# event loop made a thousand tabs a thousand queries in a row. Live updates use a check at most this
# old, shared by the tabs of one session, so a revoked session or membership stops them within it.
LIVE_RECHECK = 5.0
_live_checks: dict[str, tuple[float, asyncio.Future]] = {}


async def _checked_session(token: str | None) -> Principal | None:
    """One check per session per LIVE_RECHECK seconds, shared even while it is under way (the
    tabs all ask at the same moment)."""
    key, now = token or "", time.monotonic()
    hit = _live_checks.get(key)
    if hit is None or now - hit[0] >= LIVE_RECHECK:
        check = asyncio.ensure_future(asyncio.to_thread(principal_for_session, get_engine(), token))
        check.add_done_callback(lambda done: (done.cancelled() or done.exception()) and _live_checks.pop(key, None))
        if len(_live_checks) > 10_000:
            for stale in [k for k, (at, _) in _live_checks.items() if now - at >= LIVE_RECHECK]:
                del _live_checks[stale]
        hit = _live_checks[key] = (now, check)
    return await asyncio.shield(hit[1])


class SessionState(rx.State):
    _user_id: int | None = None
    _organization_id: int | None = None
    _role: str = ""
    email: str = ""
    role: str = ""

    def current_principal(self) -> Principal | None:
        """Re-reads the session and membership from the database: privileged handlers call this
        again rather than trusting anything cached in the tab's state."""
        token = session_token_from_cookie_header(self.router.headers.cookie)
        return self._apply_principal(principal_for_session(get_engine(), token))

    async def live_principal(self) -> Principal | None:
        """current_principal for live updates: a check at most LIVE_RECHECK seconds old, made off
        the event loop."""
        token = session_token_from_cookie_header(self.router.headers.cookie)
        return self._apply_principal(await _checked_session(token))

    def _apply_principal(self, principal: Principal | None) -> Principal | None:
        email, role = (principal.email, principal.role) if principal else ("", "")
        self._user_id = principal.user_id if principal else None
        self._organization_id = principal.organization_id if principal else None
        self._role = role
        if (self.email, self.role) != (email, role):  # an assignment is sent to the tab even when equal
            self.email, self.role = email, role
        return principal

    @rx.var
    def is_owner(self) -> bool:
        return self.role == "owner"

    @rx.event
    def require_login(self):
        if self.current_principal() is None:
            return rx.redirect("/login")
