"""One error shape for every refusal: {"error": {"code": "...", "message": "..."}}."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Mount
from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger("orcapulse_billing.api")

_STATUS_CODES = {
    202: "payment_pending",
    400: "invalid_request",
    401: "unauthenticated",
    402: "insufficient_credits",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


# Validation errors raised with one of these types (PydanticCustomError) answer with it as the code.
DOMAIN_CODES = {"invalid_amount"}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        self.status, self.code, self.message, self.headers = status, code, message, headers
        super().__init__(message)


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


def error_response(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def describe(errors) -> str:
    parts = []
    for err in errors[:3]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path"))
        parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
    return "; ".join(parts) or "invalid request"


METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT", "QUERY")


class MethodNotAllowed:
    """A path the API serves, called with a method none of its routes declare: 405 with `Allow` and
    the JSON error body (OPTIONS: 204 with `Allow`). Without this, Starlette answers 405 without the
    error shape, and inside Reflex (which mounts its own app under the API's routes) the request
    falls through to Reflex's 404."""

    def __init__(self, app: ASGIApp, api: FastAPI):
        self.app, self.api = app, api

    def _matches(self, scope: Scope, method: str) -> Match:
        probe = {**scope, "method": method}
        best = Match.NONE
        for route in self.api.router.routes:
            if isinstance(route, Mount):  # Reflex's app, mounted at "": not one of ours
                continue
            match, _ = route.matches(probe)
            if match == Match.FULL:
                return match
            if match == Match.PARTIAL:
                best = match
        return best

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._matches(scope, scope["method"]) != Match.PARTIAL:
            await self.app(scope, receive, send)
            return
        allow = ", ".join(m for m in METHODS if self._matches(scope, m) == Match.FULL)
        if scope["method"] == "OPTIONS":
            response: Response = Response(status_code=204, headers={"Allow": allow})
        else:
            response = error_response(
                405,
                "method_not_allowed",
                f"{scope['method']} is not supported here; use {allow}",
                headers={"Allow": allow},
            )
        await response(scope, receive, send)


def install(app: FastAPI) -> None:
    app.add_middleware(MethodNotAllowed, api=app)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        code = next((e["type"] for e in errors if e.get("type") in DOMAIN_CODES), "invalid_request")
        return error_response(400, code, describe(errors))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        code = _STATUS_CODES.get(exc.status_code, "error")
        return error_response(exc.status_code, code, str(exc.detail), dict(exc.headers or {}) or None)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "something went wrong on our side; nothing was charged twice")


def responses(*statuses: int) -> dict:
    """OpenAPI entries for the error statuses an endpoint can answer."""
    return {s: {"model": ErrorBody, "description": _STATUS_CODES.get(s, "error")} for s in statuses}
