"""`/api/auth/*`: sign-in sets the session cookie (HttpOnly, SameSite=Lax) from the server; the
browser's own storage never carries identity."""

from __future__ import annotations

from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Form, Request, Response
from fastapi.responses import RedirectResponse
from pydantic import ValidationError

from ..auth import SESSION_COOKIE, AuthError, Principal, login, logout
from ..config import get_settings
from ..db import get_engine
from . import schemas as s
from .deps import DecimalRoute, client_ip, current_principal, rate_limit
from .errors import ApiError, responses

router = APIRouter(prefix="/api/auth", tags=["auth"], route_class=DecimalRoute)


def _me(p: Principal) -> s.Me:
    return s.Me(user_id=p.user_id, email=p.email, organization_id=p.organization_id, role=p.role)


@router.post(
    "/login", response_model=s.Me, responses=responses(400, 401, 429), summary="Sign in (sets the session cookie)"
)
def post_login(body: s.LoginRequest, request: Request, response: Response) -> s.Me:
    ip = client_ip(request) or "unknown"
    rate_limit("login-ip", ip, limit=100, window_seconds=60)
    rate_limit("login-email", body.email.strip().lower(), limit=10, window_seconds=60)
    settings = get_settings()
    try:
        token, principal, _ = login(
            get_engine(),
            body.email,
            body.password,
            ttl_hours=settings.session_ttl_hours,
            ip=ip,
            user_agent=request.headers.get("user-agent"),
        )
    except AuthError as exc:
        raise ApiError(401, "invalid_credentials", str(exc)) from None
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=settings.session_ttl_hours * 3600,
        httponly=True,
        samesite="lax",
        secure=settings.cookie_secure,
        path="/",
    )
    return _me(principal)


@router.post("/logout", status_code=204, responses=responses(400), summary="Sign out (revokes the session)")
def post_logout(request: Request) -> Response:
    logout(get_engine(), request.cookies.get(SESSION_COOKIE), ip=client_ip(request))
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax")
    return response


@router.get("/me", response_model=s.Me, responses=responses(400, 401), summary="Who is signed in")
def get_me(principal: Principal = Depends(current_principal)) -> s.Me:
    return _me(principal)


# -- HTML form sign-in for the Reflex /login page -----------------------------------------------
# A plain form POST lets the server set the HttpOnly cookie without any script handling the
# password; the answer is a redirect back to the page's own origin (never elsewhere).


def _page_origin(request: Request) -> str:
    origin = request.headers.get("origin") or ""
    parsed = urlsplit(origin)
    own_host = (request.headers.get("host") or "").rsplit(":", 1)[0]
    if parsed.scheme not in ("http", "https") or parsed.hostname != own_host:
        raise ApiError(403, "forbidden", "sign-in forms are only accepted from this site")
    return f"{parsed.scheme}://{parsed.netloc}"


@router.post("/login-form", include_in_schema=False)
def post_login_form(request: Request, email: str = Form(""), password: str = Form("")) -> RedirectResponse:
    origin = _page_origin(request)
    try:
        body = s.LoginRequest(email=email, password=password)
        response = Response()
        post_login(body, request, response)
    except (ApiError, ValidationError) as exc:
        code = exc.code if isinstance(exc, ApiError) else "invalid_request"
        return RedirectResponse(f"{origin}/login?error={code}", status_code=303)
    redirect = RedirectResponse(f"{origin}/billing", status_code=303)
    redirect.headers["set-cookie"] = response.headers["set-cookie"]
    return redirect


@router.post("/logout-form", include_in_schema=False)
def post_logout_form(request: Request) -> RedirectResponse:
    origin = _page_origin(request)
    logout(get_engine(), request.cookies.get(SESSION_COOKIE), ip=client_ip(request))
    redirect = RedirectResponse(f"{origin}/login", status_code=303)
    redirect.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax")
    return redirect
