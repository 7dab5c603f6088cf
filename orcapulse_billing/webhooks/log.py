"""The delivery log: recent messages, newest first, and each one's attempts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..db import as_utc
from .common import ATTEMPTS, ENDPOINTS, MESSAGES


@dataclass(frozen=True)
class Delivery:
    id: int
    endpoint_id: int
    url: str
    event_type: str
    msg_id: str
    status: str
    attempts: int
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: datetime | None
    created_at: datetime
    finished_at: datetime | None


def list_deliveries(
    conn: Connection, organization_id: int, *, endpoint_id: int | None = None, limit: int = 50
) -> list[Delivery]:
    query = (
        sa.select(MESSAGES, ENDPOINTS.c.url)
        .join(ENDPOINTS, ENDPOINTS.c.id == MESSAGES.c.endpoint_id)
        .where(MESSAGES.c.organization_id == organization_id)
        .order_by(MESSAGES.c.id.desc())
        .limit(limit)
    )
    if endpoint_id is not None:
        query = query.where(MESSAGES.c.endpoint_id == endpoint_id)
    return [
        Delivery(
            id=r.id,
            endpoint_id=r.endpoint_id,
            url=r.url,
            event_type=r.event_type,
            msg_id=r.msg_id,
            status=r.status,
            attempts=r.attempts,
            last_status_code=r.last_status_code,
            last_error=r.last_error,
            next_attempt_at=as_utc(r.next_attempt_at) if r.status == "pending" else None,
            created_at=as_utc(r.created_at),
            finished_at=as_utc(r.finished_at) if r.finished_at else None,
        )
        for r in conn.execute(query)
    ]


def attempts_for(conn: Connection, message_ids: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
    """Each message's attempts, in order: number, response code (None: no answer), error, duration, time."""
    found: dict[int, list[dict[str, Any]]] = {}
    if not message_ids:
        return found
    for r in conn.execute(
        sa.select(ATTEMPTS)
        .where(ATTEMPTS.c.message_id.in_(list(message_ids)))
        .order_by(ATTEMPTS.c.message_id, ATTEMPTS.c.attempt)
    ):
        found.setdefault(r.message_id, []).append(
            {
                "attempt": r.attempt,
                "status_code": r.status_code,
                "error": r.error,
                "duration_ms": r.duration_ms,
                "attempted_at": as_utc(r.attempted_at),
            }
        )
    return found
