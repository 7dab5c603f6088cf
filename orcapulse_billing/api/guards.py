"""Refusals made before any route runs: cross-site writes with the session cookie, and bodies that
are too large. Both answer the one error shape and let nothing run.

- A state-changing call (POST, PUT, PATCH, DELETE under /api/) that carries the session cookie and
  no Authorization header must come from one of the app's origins (trust.py): its Origin, or its
  Referer's origin when a browser sent no Origin, else 403 `cross_origin`. SameSite=Lax alone lets a
  same-site page (another port, another subdomain) post with the cookie. API-key calls carry no
  ambient authority, and the providers' webhooks are signed: neither is asked.
- A body over MAX_BODY_BYTES (webhooks included) answers 413 `payload_too_large`: at once when
  Content-Length says so (the route never runs), else as soon as a chunked body goes over it while
  being read. (Starlette's RequestBodyLimitMiddleware, behind `FastAPI(max_body_size=...)`, lets a
  route that does not read its body run first, and answers in plain text.)
"""

from __future__ import annotations

from http.cookies import CookieError, SimpleCookie

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..auth import SESSION_COOKIE
from ..trust import is_allowed_origin, request_origin
from .errors import error_response

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
SIGNED_WEBHOOKS = frozenset({"/api/credits/webhook", "/api/credits/lemonsqueezy/webhook"})


def _has_session_cookie(headers: Headers) -> bool:
    cookie = SimpleCookie()
    for header in headers.getlist("cookie"):
        try:
            cookie.load(header)
        except CookieError:
            return True  # unreadable here, perhaps not to the route: ask for the origin anyway
    return SESSION_COOKIE in cookie


class CrossSiteGuard:
    def __init__(self, app: ASGIApp):
        self.app = app

    def _refused(self, scope: Scope) -> bool:
        path = scope["path"]
        if scope["method"] not in STATE_CHANGING or not path.startswith("/api/") or path in SIGNED_WEBHOOKS:
            return False
        headers = Headers(scope=scope)
        if "authorization" in headers or not _has_session_cookie(headers):
            return False
        host = headers.get("host")
        own = f"{scope.get('scheme', 'http')}://{host}" if host else None
        return not is_allowed_origin(request_origin(headers), own=own)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self._refused(scope):
            response = error_response(
                403,
                "cross_origin",
                "a signed-in browser may change things only from this app's own pages (Origin); "
                "other clients use an API key",
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class PayloadTooLarge(StarletteHTTPException):
    """Raised from `receive` when the body read so far is over the limit. An HTTPException, so FastAPI
    passes it on while reading a route's body (rather than calling it a malformed body) and errors.py
    answers it in the error shape; BodySizeLimit answers it when nothing else did."""

    def __init__(self, limit: int):
        super().__init__(413, f"the request body is larger than {limit} bytes")


class BodySizeLimit:
    """413 `payload_too_large` for a body over the limit: before the route runs when Content-Length
    says so, and as soon as a chunked (or understated) body has gone over it while being read."""

    def __init__(self, app: ASGIApp, max_body_bytes: int):
        self.app, self.max_body_bytes = app, max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        declared = Headers(scope=scope).get("content-length", "").strip()
        if declared.isdigit() and int(declared) > limit:
            await _too_large(limit)(scope, receive, send)
            return
        received, started = 0, False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLarge(limit)
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except PayloadTooLarge:
            if not started:
                await _too_large(limit)(scope, receive, send)


def _too_large(limit: int) -> Response:
    return error_response(413, "payload_too_large", f"the request body is larger than {limit} bytes")


def install(app: FastAPI, max_body_bytes: int) -> None:
    """After errors.install: the body limit runs first, then the origin check, then the routes."""
    app.add_middleware(CrossSiteGuard)
    app.add_middleware(BodySizeLimit, max_body_bytes=max_body_bytes)
