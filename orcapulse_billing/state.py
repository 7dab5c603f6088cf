"""Shared Reflex state: who is signed in.

Identity comes only from the server-set HttpOnly session cookie, read from the websocket
handshake (`router.headers.cookie`) and resolved against the database on every call; never from
rx.Cookie, local storage or the tab's client token, which the browser writes. The user and role
live in backend-only vars (leading underscore); the public copies are for display only.
"""

from __future__ import annotations

import reflex as rx

from .auth import Principal, principal_for_session, session_token_from_cookie_header
from .db import get_engine


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
        principal = principal_for_session(get_engine(), token)
        if principal is None:
            self._user_id, self._organization_id, self._role = None, None, ""
            self.email, self.role = "", ""
            return None
        self._user_id, self._organization_id, self._role = principal.user_id, principal.organization_id, principal.role
        self.email, self.role = principal.email, principal.role
        return principal

    @rx.var
    def is_owner(self) -> bool:
        return self.role == "owner"

    @rx.event
    def require_login(self):
        if self.current_principal() is None:
            return rx.redirect("/login")
