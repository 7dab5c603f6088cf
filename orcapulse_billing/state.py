"""Shared Reflex state: who is signed in.

Identity comes only from the server-set HttpOnly session cookie, read from the websocket
handshake (`router.headers.cookie`) and resolved against the database on every call (live
updates: at most LIVE_RECHECK seconds old); never from rx.Cookie, local storage or the tab's client
token, which the browser writes. The user and role live in backend-only vars (leading underscore);
the public copies are for display only.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import TypeVar

import reflex as rx

from .auth import Principal, principal_for_session, session_token_from_cookie_header
from .db import get_engine
from .trust import client_address

T = TypeVar("T")


class SharedReads:
    """Reads that many tabs ask for at the same moment (a live update reaches all of them at once),
    made once per worker: the first caller's read, in a thread, is shared by the others even while
    it is still under way. A failed read is not kept. At most `max_entries` are kept, the oldest
    dropped first; with `max_age`, an entry older than that is read again."""

    def __init__(self, max_entries: int):
        self.max_entries = max_entries
        self._reads: OrderedDict[Hashable, tuple[float, asyncio.Future]] = OrderedDict()

    async def get(self, key: Hashable, read: Callable[..., T], *args, max_age: float | None = None) -> T:
        now = time.monotonic()
        hit = self._reads.get(key)
        if hit is None or (max_age is not None and now - hit[0] >= max_age):
            future = asyncio.ensure_future(asyncio.to_thread(read, *args))
            future.add_done_callback(lambda done: self._forget_failed(key, done))
            self._reads.pop(key, None)
            hit = self._reads[key] = (now, future)
            while len(self._reads) > self.max_entries:
                self._reads.popitem(last=False)
        return await asyncio.shield(hit[1])

    def _forget_failed(self, key: Hashable, done: asyncio.Future) -> None:
        if (done.cancelled() or done.exception()) and self._reads.get(key, (0, None))[1] is done:
            del self._reads[key]


# Live updates re-check the session at most this often, one check shared by the tabs of a session:
# a thousand tabs each re-reading it on the event loop made every update a thousand queries in a
# row. A revoked session or membership stops the updates within this time.
LIVE_RECHECK = 5.0
_session_checks = SharedReads(max_entries=10_000)


class SessionState(rx.State):
    _user_id: int | None = None
    _organization_id: int | None = None
    _role: str = ""
    email: str = ""
    role: str = ""

    def _current_principal(self) -> Principal | None:
        """Re-reads the session and membership from the database: privileged handlers call this
        again rather than trusting anything cached in the tab's state."""
        token = session_token_from_cookie_header(self.router.headers.cookie)
        return self._apply_principal(principal_for_session(get_engine(), token))

    async def _live_principal(self) -> Principal | None:
        """_current_principal for live updates: a check at most LIVE_RECHECK seconds old, made off
        the event loop."""
        token = session_token_from_cookie_header(self.router.headers.cookie)
        return self._apply_principal(
            await _session_checks.get(token, principal_for_session, get_engine(), token, max_age=LIVE_RECHECK)
        )

    def _apply_principal(self, principal: Principal | None) -> Principal | None:
        email, role = (principal.email, principal.role) if principal else ("", "")
        self._user_id = principal.user_id if principal else None
        self._organization_id = principal.organization_id if principal else None
        self._role = role
        if (self.email, self.role) != (email, role):  # an assignment is sent to the tab even when equal
            self.email, self.role = email, role
        return principal

    def _client_ip(self) -> str | None:
        """The browser's address, decided as for the REST routes (trust.client_address): the socket's
        peer (Reflex's own client_ip, with rxconfig's trusted_proxy_hops left at 0), or X-Forwarded-For
        when that peer is one of TRUSTED_PROXIES."""
        forwarded = self.router.headers.raw_headers.get("x-forwarded-for")
        return client_address(self.router.session.client_ip or None, forwarded)

    def _binding(self, principal: Principal | None) -> str:
        """Who this tab shows data for: the signed-in session and organization. Anything tied to a user
        (a live listener, the page's public vars) belongs to one binding and ends when it changes (a
        sign-out, another sign-in in the same tab, another organization)."""
        if principal is None:
            return ""
        token = session_token_from_cookie_header(self.router.headers.cookie) or ""
        return f"{principal.user_id}:{principal.organization_id}:{hashlib.sha256(token.encode()).hexdigest()[:16]}"

    @rx.var
    def is_owner(self) -> bool:
        return self.role == "owner"

    @rx.event
    def require_login(self):
        if self._current_principal() is None:
            return rx.redirect("/login")
