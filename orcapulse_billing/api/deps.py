"""Request plumbing: exact JSON decimals, who is calling, and role checks."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from decimal import Decimal
from functools import lru_cache
from typing import Annotated, Any

from fastapi import Depends, Request, Security
from fastapi.routing import APIRoute
from fastapi.security import APIKeyCookie, HTTPBearer

from ..accounts import USAGE_WRITE
from ..auth import SESSION_COOKIE, Principal, principal_for_api_key, principal_for_session
from ..config import get_settings
from ..db import get_engine
from ..models import Role
from ..ratelimit import RateLimiter
from ..trust import client_address
from .errors import ApiError, ErrorBody


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")  # Python's parser takes NaN and Infinity; JSON does not


class DecimalJSONRequest(Request):
    """Parses JSON numbers as Decimal, so no float ever carries a quantity or an amount."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                self._json = json.loads(body, parse_float=Decimal, parse_constant=_not_json)
            except (ValueError, UnicodeDecodeError):
                raise ApiError(400, "invalid_json", "the request body is not valid JSON") from None
        return self._json


class DecimalRoute(APIRoute):
    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def route_handler(request: Request):
            return await handler(DecimalJSONRequest(request.scope, request.receive))

        return route_handler


def client_ip(request: Request) -> str | None:
    """The client's address: X-Forwarded-For counts only from a peer in TRUSTED_PROXIES."""
    peer = request.client.host if request.client else None
    return client_address(peer, ", ".join(request.headers.getlist("x-forwarded-for")))


# Documentation of the two ways in (the check below reads the request itself).
API_KEY = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="An API key: `Authorization: Bearer opb_...`. A user in several organizations names one with "
    "`X-Organization-Id: <id>` (digits; the first membership when absent).",
)
SESSION = APIKeyCookie(
    name=SESSION_COOKIE,
    auto_error=False,
    scheme_name="Session",
    description="The sign-in cookie (POST /api/auth/login)",
)
ORGANIZATION_ID = re.compile(r"[1-9][0-9]{0,17}")


def current_principal(
    request: Request,
    _key: Annotated[Any, Security(API_KEY)] = None,
    _session: Annotated[Any, Security(SESSION)] = None,
) -> Principal:
    engine = get_engine()
    auth = request.headers.get("authorization")
    if auth:
        scheme, _, key = auth.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise ApiError(401, "unauthenticated", "use 'Authorization: Bearer <api key>'")
        org_header = request.headers.get("x-organization-id")
        if org_header is not None and not ORGANIZATION_ID.fullmatch(org_header):
            raise ApiError(400, "invalid_request", "X-Organization-Id must be an organization id")
        principal = principal_for_api_key(engine, key.strip(), int(org_header) if org_header else None)
    else:
        principal = principal_for_session(engine, request.cookies.get(SESSION_COOKIE))
    if principal is None:
        raise ApiError(401, "unauthenticated", "sign in, or send a valid API key")
    return principal


def owner_principal(principal: Principal = Depends(current_principal)) -> Principal:
    if not principal.is_owner:
        raise ApiError(403, "forbidden", "only owners of the organization can do this")
    return principal


# The documented 403 of every route that spends credits.
INSUFFICIENT_SCOPE = {
    403: {
        "model": ErrorBody,
        "description": f"insufficient_scope: spending needs an API key with the `{USAGE_WRITE}` scope (owners and "
        "admins create them: POST /api/keys); a session, a member's key or a key without the scope is refused",
    }
}


# The documented 402 of every route a hard-stopped spend budget can refuse.
BUDGET_EXCEEDED = {
    402: {
        "model": ErrorBody,
        "description": "budget_exceeded: it would take the month's spend past a spend budget with a hard stop "
        "(the organization's, this API key's or its user's); nothing was recorded",
    }
}


def usage_principal(
    request: Request,
    _key: Annotated[Any, Security(API_KEY, scopes=[USAGE_WRITE])] = None,
    _session: Annotated[Any, Security(SESSION)] = None,
) -> Principal:
    """Who may spend: an API key with the usage:write scope (never a session, never a member's key).
    A session is documented as a way in because it is one: it is answered 403, not 401."""
    principal = current_principal(request)
    if not principal.has_scope(USAGE_WRITE):
        if principal.via == "session":
            why = "a signed-in session cannot report usage"
        elif principal.role == Role.member.value:
            why = "this is a member's key, and members' keys are read only"
        else:
            why = "this API key does not have it"
        raise ApiError(
            403,
            "insufficient_scope",
            f"reporting usage needs an API key with the {USAGE_WRITE} scope ({why}); "
            "an owner or admin creates one with POST /api/keys",
        )
    return principal


@lru_cache(maxsize=4)
def limiter(name: str, limit: int, window_seconds: int) -> RateLimiter:
    return RateLimiter(limit, window_seconds, redis_url=get_settings().redis_url, name=name)


def rate_limit(name: str, key: str, *, limit: int, window_seconds: int = 60) -> None:
    if not limiter(name, limit, window_seconds).allow(key):
        raise ApiError(
            429,
            "rate_limited",
            "too many attempts; try again in a minute",
            headers={"Retry-After": str(window_seconds)},
        )
