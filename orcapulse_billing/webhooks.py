"""Outbound webhooks: owners register endpoints; the organization's events reach them signed as the
Standard Webhooks specification says (https://www.standardwebhooks.com), so receivers verify them with
its libraries.

- **Outbox.** `emit(conn, ...)` writes one `webhook_message` per subscribed endpoint in the caller's
  transaction (the change it reports and its message commit or roll back together). Its `key` makes an
  event idempotent: the message id is derived from it, so emitting the same event twice writes it once.
- **Signing.** Each attempt sends the same body and the same `webhook-id` (receivers dedupe on it),
  a fresh `webhook-timestamp` (unix seconds: receivers refuse stale ones) and `webhook-signature:
  v1,<base64 HMAC-SHA256(secret, "{id}.{timestamp}.{body}")>`, the secret being the base64 after
  `whsec_`.
- **Delivery** (`deliver_due`, the lifespan loop every few seconds and `orcapulse-billing webhooks
  deliver`): a 2xx answer within the timeout delivers; anything else is retried with exponential
  backoff (`RETRY_BASE` doubling, at most `RETRY_CAP` apart) until `RETRY_WINDOW` (3 days) after the
  event, with one last attempt at the end of the window, then the message is failed. Every attempt is
  logged with its response code or error (`webhook_attempt`).
- **Several senders at once** (workers, the CLI): a sender claims due messages by moving their
  `next_attempt_at` a lease ahead and counting the attempt, in one write transaction (PostgreSQL:
  `FOR UPDATE SKIP LOCKED`, so concurrent senders take different rows; SQLite: `BEGIN IMMEDIATE`),
  and records the result only if the claim is still its own (same attempt count). A sender that dies
  mid-way leaves its messages due again when the lease ends: at least once, as the spec expects.
- **Where endpoints may point.** https only in production mode (config.Settings.production); never a
  private, link-local, unique-local, loopback or otherwise non-public address, checked for every
  address the host name resolves to, at registration and again before each attempt (so a name later
  pointed at an internal address is refused then). Outside production, http and loopback are allowed
  so a developer (and the tests) can receive on 127.0.0.1.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import socket
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from .db import as_utc, writer
from .ledger import PostedEntry, get_account
from .models import WebhookAttempt, WebhookEndpoint, WebhookMessage
from .money import fmt4

log = logging.getLogger(__name__)

EVENT_TYPES = (
    "credits.added",
    "credits.refunded",
    "balance.low",
    "balance.recovered",
    "auto_recharge.failed",
    "budget.threshold_reached",
)
TEST_EVENT = "webhook.test"  # what "send test event" sends (to that one endpoint, whatever it subscribes to)
RETRY_BASE = timedelta(seconds=30)
RETRY_CAP = timedelta(hours=12)
RETRY_WINDOW = timedelta(days=3)
LEASE = timedelta(seconds=60)  # a claimed message is due again after this if its sender never reports
TIMEOUT_SECONDS = 10.0
MAX_ENDPOINTS = 20  # per organization
BATCH = 50

Resolver = Callable[[str, int], Sequence[str]]


class WebhookError(ValueError):
    """Refused input: `code` for the API's error body, `message` for people."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def _table(model: Any) -> sa.Table:
    table = sa.inspect(model).local_table
    assert isinstance(table, sa.Table)
    return table


ENDPOINTS, MESSAGES, ATTEMPTS = _table(WebhookEndpoint), _table(WebhookMessage), _table(WebhookAttempt)


def _now() -> datetime:
    return datetime.now(UTC)


# -- where an endpoint may point ------------------------------------------------------------------


def system_resolver(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise WebhookError("invalid_url", f"the host {host!r} does not resolve ({exc})") from None
    return sorted({str(info[4][0]) for info in infos})


def _address_problem(address: str, production: bool) -> str | None:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return "a loopback address" if production else None
    if ip.is_private or ip.is_link_local or ip.is_multicast or ip.is_reserved or ip.is_unspecified:
        return "a private, link-local or reserved address"
    if not ip.is_global:  # 100.64.0.0/10 (carrier-grade NAT) and the like
        return "not a public address"
    return None


def validate_url(url: str, *, production: bool, resolve: Resolver = system_resolver) -> str:
    """The URL as it will be called, or WebhookError: https in production, http too otherwise; no user
    or password in it; every address the host resolves to public (loopback too outside production)."""
    url = url.strip()
    if not url or len(url) > 2000:
        raise WebhookError("invalid_url", "the URL must be 1 to 2000 characters")
    if any(ch.isspace() or ord(ch) < 32 for ch in url):
        raise WebhookError("invalid_url", "the URL may not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise WebhookError("invalid_url", f"not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme != "https" and not (scheme == "http" and not production):
        raise WebhookError("invalid_url", "the URL must be https" + ("" if production else " (or http)"))
    if parts.username is not None or parts.password is not None:
        raise WebhookError("invalid_url", "the URL may not contain a user name or password")
    host = parts.hostname
    if not host:
        raise WebhookError("invalid_url", "the URL has no host")
    if parts.fragment:
        raise WebhookError("invalid_url", "the URL may not have a #fragment")
    try:
        addresses: Sequence[str] = [str(ipaddress.ip_address(host))]
    except ValueError:
        if host.rstrip(".").lower() == "localhost" or host.rstrip(".").lower().endswith(".localhost"):
            addresses = ["127.0.0.1"]
        else:
            addresses = resolve(host, port or (443 if scheme == "https" else 80))
    if not addresses:
        raise WebhookError("invalid_url", f"the host {host!r} does not resolve")
    for address in addresses:
        problem = _address_problem(address, production)
        if problem:
            raise WebhookError("invalid_url", f"{host} resolves to {address}, {problem}; webhooks go to public hosts")
    return url


# -- endpoints --------------------------------------------------------------------------------------


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
                created_at=_now(),
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


def get_endpoint(conn: Connection, organization_id: int, endpoint_id: int) -> Endpoint | None:
    row = conn.execute(
        sa.select(ENDPOINTS).where(
            ENDPOINTS.c.id == endpoint_id,
            ENDPOINTS.c.organization_id == organization_id,
            ENDPOINTS.c.deleted_at.is_(None),
        )
    ).first()
    return _endpoint(row) if row else None


def remove_endpoint(conn: Connection, organization_id: int, endpoint_id: int) -> bool:
    """Removes the endpoint (False: no such endpoint in the organization); what it had not received
    yet is cancelled. Its delivery log stays."""
    removed = conn.execute(
        sa.update(ENDPOINTS)
        .where(
            ENDPOINTS.c.id == endpoint_id,
            ENDPOINTS.c.organization_id == organization_id,
            ENDPOINTS.c.deleted_at.is_(None),
        )
        .values(deleted_at=_now(), enabled=False)
    ).rowcount
    if removed:
        conn.execute(
            sa.update(MESSAGES)
            .where(MESSAGES.c.endpoint_id == endpoint_id, MESSAGES.c.status == "pending")
            .values(status="cancelled", finished_at=_now(), last_error="endpoint removed")
        )
    return bool(removed)


# -- the outbox ---------------------------------------------------------------------------------------


def message_id(organization_id: int, key: str) -> str:
    """The `webhook-id` of an event: derived from its key, so the same event is written once."""
    return "msg_" + hashlib.sha256(f"{organization_id}:{key}".encode()).hexdigest()[:32]


def _body(msg_id: str, event_type: str, data: Mapping[str, Any], at: datetime) -> str:
    # Standard Webhooks' recommended shape: type, timestamp, data
    return json.dumps(
        {"id": msg_id, "type": event_type, "timestamp": at.isoformat().replace("+00:00", "Z"), "data": dict(data)},
        separators=(",", ":"),
        sort_keys=False,
    )


def emit(
    conn: Connection,
    organization_id: int,
    event_type: str,
    data: Mapping[str, Any],
    *,
    key: str,
    endpoint_id: int | None = None,
) -> int:
    """Writes the event for each of the organization's enabled endpoints subscribed to it, in the
    caller's transaction (the outbox: it is sent after commit, by the delivery job). `key` names the
    event (the same key: the same message, written once). `data` must be JSON (money as decimal
    strings). Returns how many messages were written. The one helper every event goes through,
    `balance.recovered` and `budget.threshold_reached` included."""
    if event_type not in EVENT_TYPES and event_type != TEST_EVENT:
        raise ValueError(f"unknown webhook event type {event_type!r}")
    query = sa.select(ENDPOINTS.c.id, ENDPOINTS.c.event_types).where(
        ENDPOINTS.c.organization_id == organization_id,
        ENDPOINTS.c.enabled.is_(True),
        ENDPOINTS.c.deleted_at.is_(None),
    )
    if endpoint_id is not None:
        query = query.where(ENDPOINTS.c.id == endpoint_id)
    targets = [r.id for r in conn.execute(query) if endpoint_id is not None or event_type in (r.event_types or ())]
    if not targets:
        return 0
    at = _now()
    msg_id = message_id(organization_id, f"{event_type}:{key}")
    body = _body(msg_id, event_type, data, at)
    written = 0
    for target in targets:
        written += len(
            conn.execute(
                _insert_ignore(conn)
                .values(
                    endpoint_id=target,
                    organization_id=organization_id,
                    event_type=event_type,
                    msg_id=msg_id,
                    payload=body,
                    status="pending",
                    attempts=0,
                    next_attempt_at=at,
                    created_at=at,
                )
                .on_conflict_do_nothing(index_elements=["endpoint_id", "msg_id"])
                .returning(MESSAGES.c.id)
            ).all()
        )
    return written


def _insert_ignore(conn: Connection) -> Any:
    from .db import dialect_insert

    return dialect_insert(conn, MESSAGES)


def emit_now(engine: Engine, organization_id: int, event_type: str, data: Mapping[str, Any], *, key: str) -> int:
    """`emit` in a transaction of its own, for events decided after the change committed (balance.low
    is decided by a ledger listener); the key keeps it once."""
    with writer(engine).begin() as conn:
        return emit(conn, organization_id, event_type, data, key=key)


def on_postings(engine: Engine, entries: Sequence[PostedEntry], threshold: int) -> None:
    """Ledger listener: `balance.low` for each entry that crossed below `threshold` (units), the same
    crossing the low-balance email is sent for (notifications.Notifier.on_postings): once per crossing,
    keyed by the entry (heard twice, written once). Decided after the posting's commit, so it is
    written in a transaction of its own."""
    for entry in entries:
        if entry.balance_before_units >= threshold > entry.balance_after_units:
            with writer(engine).begin() as conn:
                organization_id = get_account(conn, account_id=entry.account_id).organization_id
                emit(
                    conn,
                    organization_id,
                    "balance.low",
                    {
                        "organization_id": organization_id,
                        "balance": fmt4(entry.balance_after_units),
                        "threshold": fmt4(threshold),
                        "ledger_entry_id": entry.id,
                    },
                    key=f"{entry.account_id}:{entry.id}",
                )


def send_test_event(engine: Engine, organization_id: int, endpoint_id: int, user_email: str | None = None) -> str:
    """Queues a `webhook.test` message to one endpoint and returns its webhook-id."""
    key = uuid.uuid4().hex
    with writer(engine).begin() as conn:
        if get_endpoint(conn, organization_id, endpoint_id) is None:
            raise WebhookError("not_found", "no such webhook endpoint in this organization")
        emit(
            conn,
            organization_id,
            TEST_EVENT,
            {
                "organization_id": organization_id,
                "message": "A test event from OrcaPulse Billing",
                "sent_by": user_email,
            },
            key=key,
            endpoint_id=endpoint_id,
        )
    return message_id(organization_id, f"{TEST_EVENT}:{key}")


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
        from .config import get_settings

        production = get_settings().production
    now = now or _now()
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


# -- the delivery log -------------------------------------------------------------------------------


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
