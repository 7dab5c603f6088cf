"""HTTP routes mounted on the Reflex backend (rx.App(api_transformer=...)).

Starlette (Reflex's own dependency). The routes call the same service layer as the pages.
"""

from __future__ import annotations

import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ..db import get_engine


async def health(request: Request) -> JSONResponse:
    try:
        with get_engine().connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.SQLAlchemyError:
        return JSONResponse({"status": "error", "database": "unreachable"}, status_code=503)
    return JSONResponse({"status": "ok", "database": "ok"})


api_app = Starlette(routes=[Route("/api/health", health, methods=["GET"])])
