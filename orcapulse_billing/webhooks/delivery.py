"""Signing (Standard Webhooks) and delivery: due messages claimed per sender, one attempt each,
exponential backoff until the retry window ends, every attempt logged."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ..db import as_utc, writer
from ..models import utcnow
from .common import ATTEMPTS, ENDPOINTS, MESSAGES, WebhookError
from .urls import Resolver, system_resolver, validate_url

RETRY_BASE = timedelta(seconds=30)
RETRY_CAP = timedelta(hours=12)
RETRY_WINDOW = timedelta(days=3)
LEASE = timedelta(seconds=60)  # a claimed message is due again after this if its sender never reports
TIMEOUT_SECONDS = 10.0
BATCH = 50


# -- signing ----------------------------------------------------------------------------------------


def sign(secret: str, msg_id: str, timestamp: int, body: str) -> str:
    """`v1,<base64 signature>` as the `webhook-signature` header carries it."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{msg_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers_for(secret: str, msg_id: str, timestamp: int, body: str) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "user-agent": "OrcaPulse-Billing-Webhooks/1",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
    }


# -- delivery ---------------------------------------------------------------------------------------


def backoff(attempts: int) -> timedelta:
    """The wait after the `attempts`-th failed attempt: 30 s, 1 min, 2 min, ... at most 12 h."""
    wait: timedelta = RETRY_BASE * 2 ** max(0, min(attempts - 1, 20))
    return min(wait, RETRY_CAP)


@dataclass
class DeliveryRun:
    delivered: int = 0
    retrying: int = 0
    failed: int = 0


@dataclass(frozen=True)
class _Claim:
    id: int
    attempt: int
    msg_id: str
    payload: str
    created_at: datetime
    url: str
    secret: str
    enabled: bool


def _claim(engine: Engine, now: datetime, limit: int, organization_id: int | None) -> list[_Claim]:
    with writer(engine).begin() as conn:
        due = (
            sa.select(MESSAGES.c.id, MESSAGES.c.attempts)
            .where(MESSAGES.c.status == "pending", MESSAGES.c.next_attempt_at <= now)
            .order_by(MESSAGES.c.next_attempt_at, MESSAGES.c.id)
            .limit(limit)
        )
        if organization_id is not None:
            due = due.where(MESSAGES.c.organization_id == organization_id)
        if conn.dialect.name == "postgresql":
            due = due.with_for_update(skip_locked=True)
        claims = []
        for row in conn.execute(due).all():
            claimed = conn.execute(
                sa.update(MESSAGES)
                .where(MESSAGES.c.id == row.id, MESSAGES.c.status == "pending", MESSAGES.c.attempts == row.attempts)
                .values(attempts=row.attempts + 1, next_attempt_at=now + LEASE, last_attempt_at=now)
            ).rowcount
            if not claimed:
                continue
            found = conn.execute(
                sa.select(
                    MESSAGES.c.msg_id,
                    MESSAGES.c.payload,
                    MESSAGES.c.created_at,
                    ENDPOINTS.c.url,
                    ENDPOINTS.c.secret,
                    ENDPOINTS.c.enabled,
                    ENDPOINTS.c.deleted_at,
                )
                .join(ENDPOINTS, ENDPOINTS.c.id == MESSAGES.c.endpoint_id)
                .where(MESSAGES.c.id == row.id)
            ).one()
            claims.append(
                _Claim(
                    id=row.id,
                    attempt=row.attempts + 1,
                    msg_id=found.msg_id,
                    payload=found.payload,
                    created_at=as_utc(found.created_at),
                    url=found.url,
                    secret=found.secret,
                    enabled=bool(found.enabled) and found.deleted_at is None,
                )
            )
        return claims


def _record(
    engine: Engine, claim: _Claim, now: datetime, status_code: int | None, error: str | None, duration_ms: int
) -> str:
    ok = status_code is not None and 200 <= status_code < 300
    if ok:
        outcome, values = "delivered", {"status": "delivered", "finished_at": now}
    elif not claim.enabled:
        outcome, values = "failed", {"status": "cancelled", "finished_at": now}
    else:
        deadline = claim.created_at + RETRY_WINDOW
        if now >= deadline:
            outcome, values = "failed", {"status": "failed", "finished_at": now}
        else:
            outcome, values = "retrying", {"next_attempt_at": min(now + backoff(claim.attempt), deadline)}
    with writer(engine).begin() as conn:
        conn.execute(
            sa.insert(ATTEMPTS).values(
                message_id=claim.id,
                attempt=claim.attempt,
                status_code=status_code,
                error=error[:300] if error else None,
                duration_ms=duration_ms,
                attempted_at=now,
            )
        )
        conn.execute(
            sa.update(MESSAGES)
            .where(MESSAGES.c.id == claim.id, MESSAGES.c.status == "pending", MESSAGES.c.attempts == claim.attempt)
            .values(last_status_code=status_code, last_error=error[:300] if error else None, **values)
        )
    return outcome


def deliver_due(
    engine: Engine,
    *,
    production: bool | None = None,
    now: datetime | None = None,
    client: httpx.Client | None = None,
    resolve: Resolver = system_resolver,
    limit: int = BATCH,
    organization_id: int | None = None,
) -> DeliveryRun:
    """Sends up to `limit` messages due at `now` (default: the clock; only `organization_id`'s when
    given), one attempt each; safe to run from several processes at once (each message is claimed by
    one of them)."""
    if production is None:
        from ..config import get_settings

        production = get_settings().production
    now = now or utcnow()
    run = DeliveryRun()
    own_client = client is None
    http = client or httpx.Client(timeout=TIMEOUT_SECONDS, follow_redirects=False)
    try:
        for claim in _claim(engine, now, limit, organization_id):
            status_code: int | None = None
            error: str | None = None
            started = time.monotonic()
            if not claim.enabled:
                error = "endpoint removed"
            else:
                try:
                    validate_url(claim.url, production=production, resolve=resolve)
                    timestamp = int(time.time())  # when it is signed and sent, whatever `now` schedules
                    # streamed and never read: only the status counts, however large the answer
                    with http.stream(
                        "POST",
                        claim.url,
                        content=claim.payload.encode(),
                        headers=headers_for(claim.secret, claim.msg_id, timestamp, claim.payload),
                    ) as response:
                        status_code = response.status_code
                    if not 200 <= status_code < 300:
                        error = f"HTTP {status_code}"
                except WebhookError as exc:
                    error = exc.message
                except httpx.HTTPError as exc:
                    error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            outcome = _record(engine, claim, now, status_code, error, int((time.monotonic() - started) * 1000))
            setattr(run, outcome, getattr(run, outcome) + 1)
    finally:
        if own_client:
            http.close()
    return run
