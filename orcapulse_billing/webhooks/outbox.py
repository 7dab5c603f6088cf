"""The outbox: events written in the caller's transaction, one message per subscribed endpoint,
keyed so the same event is written once; the balance crossings' listener and the test event."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ..db import writer
from ..models import utcnow
from ..money import fmt4
from .common import ENDPOINTS, EVENT_TYPES, MESSAGES, TEST_EVENT, WebhookError
from .endpoints import get_endpoint

if TYPE_CHECKING:
    from ..low_balance import Crossing


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
    at = utcnow()
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
    from ..db import dialect_insert

    return dialect_insert(conn, MESSAGES)


def emit_now(engine: Engine, organization_id: int, event_type: str, data: Mapping[str, Any], *, key: str) -> int:
    """`emit` in a transaction of its own, for events decided after the change committed (balance.low
    is decided by a ledger listener); the key keeps it once."""
    with writer(engine).begin() as conn:
        return emit(conn, organization_id, event_type, data, key=key)


def on_crossings(engine: Engine, crossed: Sequence[Crossing]) -> None:
    """`balance.low` for each entry that crossed below its organization's threshold, `balance.recovered`
    for each that crossed back to or above it (low_balance.crossings: the same crossings the emails are
    sent for, computed once per commit by services.low_balance_listener): once per crossing, keyed by the
    entry (heard twice, written once). Decided after the posting's commit, so each is written in a
    transaction of its own."""
    for crossing in crossed:
        entry = crossing.entry
        with writer(engine).begin() as conn:
            emit(
                conn,
                crossing.organization_id,
                "balance.low" if crossing.direction == "low" else "balance.recovered",
                {
                    "organization_id": crossing.organization_id,
                    "balance": fmt4(entry.balance_after_units),
                    "threshold": fmt4(crossing.threshold),
                    "ledger_entry_id": entry.id,
                },
                key=f"{entry.account_id}:{entry.id}",
            )


def send_test_event(engine: Engine, organization_id: int, endpoint_id: int, user_email: str | None = None) -> str:
    """Queues a `webhook.test` message to one endpoint and returns its webhook-id."""
    key = uuid.uuid4().hex
    with writer(engine).begin() as conn:
        endpoint = get_endpoint(conn, organization_id, endpoint_id)
        if endpoint is None:
            raise WebhookError("not_found", "no such webhook endpoint in this organization")
        if not endpoint.enabled:  # it would not be sent: say so rather than queue nothing
            raise WebhookError("endpoint_disabled", "this endpoint is disabled: enable it to send it a test event")
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
