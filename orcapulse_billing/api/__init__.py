"""HTTP routes mounted on the Reflex backend (rx.App(api_transformer=create_api_app())).

FastAPI for validation and the OpenAPI document (/api/openapi.json). Every refusal is
{"error": {"code", "message"}}; the routes call the same services as the pages and the CLI.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from ..config import get_settings
from ..db import get_engine
from ..heap import freeze_startup_heap
from . import (
    auth_routes,
    auto_recharge,
    budgets,
    credits,
    errors,
    grants,
    guards,
    holds,
    keys,
    notifications,
    openapi,
    payments,
    provider_webhooks,
    receipts,
    schemas,
    usage_batch,
    webhooks,
)


def create_api_app() -> FastAPI:
    """A new app each call: Reflex adds its middleware to the one it mounts, so tests that serve the
    API on their own take their own instance."""
    app = FastAPI(
        title="OrcaPulse Billing API",
        version="1.0.0",
        description="Prepaid credits: balance, history, usage metering and purchases. Money is a decimal string "
        '(4 places in answers). Every refusal is a 4xx with {"error": {"code", "message"}} and writes '
        "nothing; a method a path does not list gets 405 with `Allow`.",
        openapi_url="/api/openapi.json",
        docs_url="/api/docs",
        redoc_url=None,
        lifespan=_lifespan,
    )
    errors.install(app)
    guards.install(app, get_settings().max_body_bytes)
    app.include_router(auth_routes.router)
    app.include_router(credits.router)
    app.include_router(usage_batch.router)
    app.include_router(holds.router)
    app.include_router(grants.router)
    app.include_router(payments.router)
    app.include_router(auto_recharge.router)
    app.include_router(provider_webhooks.router)
    app.include_router(keys.router)
    app.include_router(receipts.router)
    app.include_router(notifications.router)
    app.include_router(webhooks.router)
    app.include_router(budgets.router)
    app.add_api_route("/api/health", health, methods=["GET"], include_in_schema=False)
    openapi.install(app, (*provider_webhooks.WEBHOOK_EVENTS, schemas.BatchUsageEvent))
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Served on its own (uvicorn --factory, the bench): the worker's start-up heap out of the garbage
    collector's way (heap.py). Mounted in Reflex this does not run: orcapulse_billing.py registers it."""
    freeze_startup_heap()
    yield


def health() -> JSONResponse:
    try:
        with get_engine().connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.SQLAlchemyError:
        return JSONResponse({"status": "error", "database": "unreachable"}, status_code=503)
    return JSONResponse({"status": "ok", "database": "ok"})
