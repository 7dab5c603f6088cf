"""Endpoints: register (the signing secret answered once), list, find, enable or disable, remove."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ..db import as_utc, writer
from ..models import utcnow
from .common import ENDPOINTS, EVENT_TYPES, MESSAGES, WebhookError
from .urls import Resolver, system_resolver, validate_url

MAX_ENDPOINTS = 20  # per organization


@dataclass(frozen=True)
class Endpoint:
    id: int
    organization_id: int
    url: str
    description: str
    event_types: tuple[str, ...]
    enabled: bool
    created_at: datetime
    secret_hint: str  # the secret's first characters and "..." (the whole secret is shown once, at creation)


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def _endpoint(row: Any) -> Endpoint:
    return Endpoint(
        id=row.id,
        organization_id=row.organization_id,
        url=row.url,
        description=row.description,
        event_types=tuple(row.event_types),
        enabled=bool(row.enabled),
        created_at=as_utc(row.created_at),
        secret_hint=row.secret[:10] + "...",
    )


def check_event_types(event_types: Sequence[str]) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(event_types))
    unknown = [t for t in chosen if t not in EVENT_TYPES]
    if unknown:
        raise WebhookError("invalid_request", f"unknown event types {unknown}; known: {', '.join(EVENT_TYPES)}")
    if not chosen:
        raise WebhookError("invalid_request", "choose at least one event type")
    return chosen


def add_endpoint(
    engine: Engine,
    organization_id: int,
    url: str,
    event_types: Sequence[str],
    *,
    production: bool,
    user_id: int | None = None,
    description: str = "",
    resolve: Resolver = system_resolver,
) -> tuple[Endpoint, str]:
    """Registers an endpoint; returns it and its signing secret (the only time the secret is shown)."""
    chosen = check_event_types(event_types)
    url = validate_url(url, production=production, resolve=resolve)
    if len(description) > 200:
        raise WebhookError("invalid_request", "the description is at most 200 characters")
    secret = new_secret()
    with writer(engine).begin() as conn:
        count = conn.execute(
            sa.select(sa.func.count())
            .select_from(ENDPOINTS)
            .where(ENDPOINTS.c.organization_id == organization_id, ENDPOINTS.c.deleted_at.is_(None))
        ).scalar_one()
        if count >= MAX_ENDPOINTS:
            raise WebhookError("too_many_endpoints", f"an organization has at most {MAX_ENDPOINTS} webhook endpoints")
        row = conn.execute(
            sa.insert(ENDPOINTS)
            .values(
                organization_id=organization_id,
                url=url,
                description=description.strip(),
                event_types=list(chosen),
                secret=secret,
                enabled=True,
                created_by_user_id=user_id,
                created_at=utcnow(),
            )
            .returning(*ENDPOINTS.c)
        ).one()
    return _endpoint(row), secret


def list_endpoints(conn: Connection, organization_id: int) -> list[Endpoint]:
    rows = conn.execute(
        sa.select(ENDPOINTS)
        .where(ENDPOINTS.c.organization_id == organization_id, ENDPOINTS.c.deleted_at.is_(None))
        .order_by(ENDPOINTS.c.id)
    ).all()
    return [_endpoint(r) for r in rows]


def _this(organization_id: int, endpoint_id: int) -> tuple[sa.ColumnElement[bool], ...]:
    """The endpoint, if the organization's and not removed."""
    return (
        ENDPOINTS.c.id == endpoint_id,
        ENDPOINTS.c.organization_id == organization_id,
        ENDPOINTS.c.deleted_at.is_(None),
    )


def get_endpoint(conn: Connection, organization_id: int, endpoint_id: int) -> Endpoint | None:
    row = conn.execute(sa.select(ENDPOINTS).where(*_this(organization_id, endpoint_id))).first()
    return _endpoint(row) if row else None


def remove_endpoint(conn: Connection, organization_id: int, endpoint_id: int) -> bool:
    """Removes the endpoint (False: no such endpoint in the organization); what it had not received
    yet is cancelled. Its delivery log stays."""
    removed = conn.execute(
        sa.update(ENDPOINTS).where(*_this(organization_id, endpoint_id)).values(deleted_at=utcnow(), enabled=False)
    ).rowcount
    if removed:
        _cancel_pending(conn, endpoint_id, "endpoint removed")
    return bool(removed)


def _cancel_pending(conn: Connection, endpoint_id: int, reason: str) -> None:
    """What the endpoint has not received yet is not sent (an attempt already under way finishes)."""
    conn.execute(
        sa.update(MESSAGES)
        .where(MESSAGES.c.endpoint_id == endpoint_id, MESSAGES.c.status == "pending")
        .values(status="cancelled", finished_at=utcnow(), last_error=reason)
    )


def set_endpoint_enabled(conn: Connection, organization_id: int, endpoint_id: int, enabled: bool) -> Endpoint | None:
    """Turns the endpoint on or off; returns it as it now is (None: no such endpoint in the
    organization). Off: what it has not received yet (queued, or waiting for a retry) is cancelled,
    as when it is removed, and no event is queued for it while it is off (outbox.emit). On again: it
    receives the events from then on, not the cancelled or missed ones (a receiver turned off for
    maintenance is not flooded with stale events; the delivery log shows what it missed). Setting the
    state it already has changes nothing."""
    changed = conn.execute(
        sa.update(ENDPOINTS)
        .where(*_this(organization_id, endpoint_id), ENDPOINTS.c.enabled.is_(not enabled))
        .values(enabled=enabled)
    ).rowcount
    if changed and not enabled:
        _cancel_pending(conn, endpoint_id, "endpoint disabled")
    return get_endpoint(conn, organization_id, endpoint_id)
