"""Retention: messages that are done (delivered, failed or cancelled) are deleted with their attempts
once they finished WEBHOOK_RETENTION_DAYS ago (30 by default), so the outbox and the delivery log do
not grow forever. Pending messages are never deleted: their retry window (3 days) ends them first.
A message's key keeps it once only while it is kept; every event is written once, in the transaction
of its change or by a listener or the notice sweep within the hour, long before it could be pruned."""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ..db import writer
from ..models import utcnow
from .common import ATTEMPTS, MESSAGES

PRUNE_BATCH = 1000  # messages per transaction: short transactions, however much is due


def prune_finished(engine: Engine, older_than: timedelta, *, now: datetime | None = None) -> int:
    """Deletes the messages that finished more than `older_than` ago, with their attempts; how many."""
    cutoff = (now or utcnow()) - older_than
    pruned = 0
    while True:
        with writer(engine).begin() as conn:
            ids = list(
                conn.execute(
                    sa.select(MESSAGES.c.id)
                    .where(MESSAGES.c.status != "pending", MESSAGES.c.finished_at < cutoff)
                    .order_by(MESSAGES.c.id)
                    .limit(PRUNE_BATCH)
                ).scalars()
            )
            if not ids:
                return pruned
            conn.execute(sa.delete(ATTEMPTS).where(ATTEMPTS.c.message_id.in_(ids)))
            conn.execute(sa.delete(MESSAGES).where(MESSAGES.c.id.in_(ids)))
        pruned += len(ids)
