"""What the webhook modules share: the event types, the refusal error, the tables, the clock."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from ..models import WebhookAttempt, WebhookEndpoint, WebhookMessage

EVENT_TYPES = (
    "credits.added",
    "credits.refunded",
    "balance.low",
    "balance.recovered",
    "auto_recharge.failed",
    "budget.threshold_reached",
)
TEST_EVENT = "webhook.test"  # what "send test event" sends (to that one endpoint, whatever it subscribes to)


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
